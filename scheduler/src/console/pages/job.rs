//! `GET /console/jobs/{id}`: one job the caller may see (another user's is
//! as missing as a job that does not exist): its status, predict URL with a
//! curl line, client ids with their forms (the owner's only), instances,
//! cost, the timeline and (training) progress figures, the result download
//! and the Complete button.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped};

use super::super::form::Signed;
use super::super::layout;
use super::super::Console;
use super::failed;
use super::jobs::{model_name, status_cell};
use crate::api::convert;
use crate::charts;
use crate::control::{InstanceView, JobView};
use crate::records::EventRecord;
use crate::state::JobKind;

pub(in crate::console) async fn page(
    State(console): State<Arc<Console>>,
    Signed(session): Signed,
    Path(id): Path<String>,
) -> Response {
    let control = &console.control;
    let found = control
        .find_visible_job(&session.user, &id)
        .and_then(|job| {
            let events = control.events_of(&job)?;
            Ok((control.job_view(job)?, events))
        });
    let (view, events) = match found {
        Ok(found) => found,
        Err(e) => return failed(e),
    };
    let job = &view.job;
    let owner = job.owner == session.user.0;
    let body = html! {
        section #job data-job-id=(job.id) data-status=(layout::job_status(job.state)) {
            p #status { (status_cell(job.state)) }
            @if !job.reason.is_empty() { pre #reason { (job.reason) } }
            @if !job.description.is_empty() { p #description { (job.description) } }
            (facts(&view))
            @if job.kind == JobKind::Inference { (predict(&view)) }
            @if job.kind == JobKind::Inference && owner { (super::actions::clients_section(&view, &session)) }
            (instances(&view.instances))
            (figures(&view, &events))
            @if owner { (buttons(&view)) }
        }
    };
    layout::page(model_name(job), Some(&session), body).into_response()
}

fn facts(view: &JobView) -> Markup {
    let job = &view.job;
    html! {
        dl #facts {
            dt { "Job" } dd { (job.id) }
            dt { "Owner" } dd #owner { (job.owner) }
            dt { "Kind" } dd { (layout::kind(job.kind)) }
            dt { "Standby machine" } dd { (layout::machine(&job.standby)) }
            @if let Some(cooling) = &job.cooling {
                dt { "Cooling machine" } dd { (layout::machine(cooling)) " for " (job.cool_down_period_s) " s idle" }
            }
            dt { "Cost so far" } dd #cost { (layout::usd(view.cost.total_usd)) }
            dt { "Always on" } dd #always-on {
                (layout::usd(view.cost.always_on_usd)) " (the same span with its machine running throughout)"
            }
            dt { "Created" } dd { (layout::when(job.created_ms)) }
            dt { "Updated" } dd { (layout::when(job.updated_ms)) }
        }
    }
}

fn predict(view: &JobView) -> Markup {
    html! {
        section #predict {
            h2 { "Predict" }
            p { code #predict-url { (view.predict_address) } }
            p { "With curl:" }
            pre { code #curl { (crate::control::curl_line(&view.predict_address)) } }
        }
    }
}

fn instances(instances: &[InstanceView]) -> Markup {
    html! {
        h2 { "Instances" }
        table #instances {
            thead { tr {
                th { "Instance" } th { "Role" } th { "Machine" } th { "Status" } th { "Agent" }
                th { "Workers" } th { "GPU memory" } th { "Cost" } th { "Replaced by / why" }
            } }
            tbody { @for i in instances { (instance(i)) } }
        }
    }
}

fn instance(view: &InstanceView) -> Markup {
    let i = &view.record;
    let load = view.heard.as_ref().map(|h| &h.load);
    html! {
        tr data-instance-id=(i.id) {
            td { (i.id) }
            td .role { (layout::role(i.role)) }
            td .machine { (layout::machine(&i.machine_id)) }
            td .status { (layout::instance_state(i.state)) }
            td .agent { (i.agent_address) @if !i.host.is_empty() { " on " (i.host) } }
            td .workers { @if let Some(l) = load { (l.workers_alive) " / " (l.workers) } }
            td .gpu-memory { @if let Some(l) = load { @for g in &l.gpus {
                (g.name) ": " (g.memory_used_bytes >> 20) " / " (g.memory_total_bytes >> 20) " MiB" br;
            } } }
            td .cost { @if let Some(c) = &view.cost { (layout::usd(c.cost_usd)) " at " (layout::usd(c.price_per_hour)) "/h" } }
            td .replaced {
                @if let Some(by) = &i.replaced_by { "by " (by) " " }
                @if let Some(of) = &i.replaces { "replaces " (of) " " }
                (i.reason)
            }
        }
    }
}

/// Where the server-drawn charts go (`figure#timeline`, `figure#progress`):
/// meanwhile, the events they are drawn from.
/// The timeline (and, for training, the progress) drawn by [`charts`], the
/// renderers `aibro timeline --svg` uses; the events as a table beneath.
fn figures(view: &JobView, events: &[EventRecord]) -> Markup {
    let job = &view.job;
    let timeline = convert::timeline(&job.id, events);
    let now = prost_types::Timestamp::from(std::time::SystemTime::now());
    // The renderers escape every text they draw.
    let gantt = PreEscaped(charts::timeline_svg(&convert::job(view), &timeline, now));
    html! {
        figure #timeline {
            figcaption { "Timeline" }
            (gantt)
            details {
                summary { "Events" }
                table .events {
                    thead { tr { th { "#" } th { "At" } th { "Status" } th { "Instance" } th { "Phase" } th { "Message" } } }
                    tbody { @for e in events {
                        tr data-seq=(e.seq) {
                            td { (e.seq) } td { (layout::when(e.at_ms)) } td { (status_cell(e.job)) }
                            td { (e.instance_id) } td { (e.phase) } td { (e.message) }
                        }
                    } }
                }
            }
        }
        @if job.kind == JobKind::Training {
            figure #progress {
                figcaption { "Progress" }
                (PreEscaped(charts::progress_svg(&timeline.events)))
            }
        }
    }
}

fn buttons(view: &JobView) -> Markup {
    let job = &view.job;
    html! {
        p #actions {
            @if job.kind == JobKind::Training && !job.result_digest.is_empty() {
                a #download .button href={ "/console/jobs/" (job.id) "/result" } download { "Download results" }
            }
            @if job.kind == JobKind::Inference && !job.state.is_ended() {
                a #complete .button href={ "/console/jobs/" (job.id) "/complete" } { "Complete…" }
            }
        }
    }
}

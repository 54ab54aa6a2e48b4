//! `GET /console`: the jobs the caller may see (the admin: every job), a
//! page at a time like ListJobs, filtered by `status` and `kind` (query
//! fields, so it works without JavaScript); `live.js` keeps it live.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use super::super::form::{self, Signed};
use super::super::layout;
use super::super::Console;
use super::failed;
use crate::api::http::HttpError;
use crate::control::JobView;
use crate::records::JobRecord;
use crate::state::{JobKind, JobState, JobStatus, JobSubstatus};

/// Jobs on one page.
pub(in crate::console) const PAGE_SIZE: u32 = 50;

const STATUSES: [JobState; 5] = [
    JobState::QUEUED,
    JobState::new(JobStatus::Deployed, JobSubstatus::DeployedModel),
    JobState::new(JobStatus::Training, JobSubstatus::Training),
    JobState::new(JobStatus::Canceled, JobSubstatus::Canceled),
    JobState::new(JobStatus::Completed, JobSubstatus::Completed),
];
const KINDS: [JobKind; 2] = [JobKind::Inference, JobKind::Training];

/// What the query asks for: a status and a kind ("" for any), and where the page starts.
struct Filter {
    status: String,
    kind: String,
    page: String,
}

impl Filter {
    fn of(query: Option<&str>) -> Result<Filter, HttpError> {
        let fields = form::fields(query.unwrap_or("").as_bytes());
        let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
        let filter = Filter {
            status: field("status"),
            kind: field("kind"),
            page: field("page"),
        };
        let known_status = STATUSES
            .iter()
            .any(|s| layout::job_status(*s) == filter.status);
        let known_kind = KINDS.iter().any(|k| layout::kind(*k) == filter.kind);
        if (filter.status.is_empty() || known_status) && (filter.kind.is_empty() || known_kind) {
            return Ok(filter);
        }
        Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "filter by status (QUEUING, DEPLOYED, TRAINING, CANCELED, COMPLETED) and kind \
             (INFERENCE, TRAINING)",
        ))
    }

    fn keeps(&self, job: &JobRecord) -> bool {
        (self.status.is_empty() || layout::job_status(job.state) == self.status)
            && (self.kind.is_empty() || layout::kind(job.kind) == self.kind)
    }

    /// The query of the page after `token`, with the same filters.
    fn next(&self, token: &str) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("status", &self.status)
            .append_pair("kind", &self.kind)
            .append_pair("page", token)
            .finish()
    }
}

pub(in crate::console) async fn page(
    State(console): State<Arc<Console>>,
    Signed(session): Signed,
    RawQuery(query): RawQuery,
) -> Response {
    let filter = match Filter::of(query.as_deref()) {
        Ok(filter) => filter,
        Err(refused) => return refused.into_response(),
    };
    let control = &console.control;
    let listed =
        control.list_visible_jobs(&session.user, PAGE_SIZE, &filter.page, |j| filter.keeps(j));
    let (jobs, next) = match listed {
        Ok(listed) => listed,
        Err(e) => return failed(e),
    };
    let mut views = Vec::with_capacity(jobs.len());
    for job in jobs {
        match control.job_view(job) {
            Ok(view) => views.push(view),
            Err(e) => return failed(e),
        }
    }
    let body = html! {
        (filters(&filter))
        (table(&views, &filter, next.is_empty()))
        @if !next.is_empty() {
            a #next-page href={ "/console?" (filter.next(&next)) } { "Next page" }
        }
    };
    layout::page("Jobs", Some(&session), body).into_response()
}

fn filters(filter: &Filter) -> Markup {
    html! {
        form #filters method="get" action="/console" {
            label { "Status " select name="status" {
                option value="" { "any" }
                @for s in STATUSES {
                    @let name = layout::job_status(s);
                    option value=(name) selected[name == filter.status] { (name) }
                }
            } }
            label { " Kind " select name="kind" {
                option value="" { "any" }
                @for k in KINDS {
                    @let name = layout::kind(k);
                    option value=(name) selected[name == filter.kind] { (name) }
                }
            } }
            button type="submit" { "Filter" }
        }
    }
}

fn table(views: &[JobView], filter: &Filter, last_page: bool) -> Markup {
    html! {
        table #jobs data-last-page=(last_page) data-status=(filter.status) data-kind=(filter.kind) {
            thead { tr {
                th { "Model" } th { "Kind" } th { "Status" } th { "Machines" }
                th { "Instances" } th { "Cost so far" } th { "Created" } th { "Updated" }
            } }
            tbody {
                @for view in views { (row(view)) }
            }
        }
        @if views.is_empty() { p #no-jobs { "No jobs yet." } }
    }
}

fn row(view: &JobView) -> Markup {
    let job = &view.job;
    html! {
        tr data-job-id=(job.id) {
            td .model { a .job-link href={ "/console/jobs/" (job.id) } { (model_name(job)) } }
            td .kind { (layout::kind(job.kind)) }
            td .status { (status_cell(job.state)) }
            td .machines {
                (layout::machine(&job.standby))
                @if let Some(cooling) = &job.cooling { br; "cooling: " (layout::machine(cooling)) }
            }
            td .instances { (view.instances.len()) }
            td .cost { (layout::usd(view.cost.total_usd)) }
            td .created { (layout::when(job.created_ms)) }
            td .updated { (layout::when(job.updated_ms)) }
        }
    }
}

/// The model name, or the job id for jobs without one.
pub(in crate::console) fn model_name(job: &JobRecord) -> &str {
    if job.model_name.is_empty() {
        &job.id
    } else {
        &job.model_name
    }
}

/// The status, colour-coded by its class, and the substatus.
pub(in crate::console) fn status_cell(state: JobState) -> Markup {
    let status = layout::job_status(state);
    html! {
        span class={ "status status-" (status) } { (status) }
        " / "
        span .substatus { (state.substatus.name()) }
    }
}

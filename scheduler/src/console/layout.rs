//! The frame of every page (head, navigation, sign-out), the console's static
//! files, and how values are shown: status names as the proto spells them
//! (without their prefix), times in UTC, money in USD.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::session::Session;
use crate::api::convert;
use crate::api::http::HttpError;
use crate::state::{InstanceState, JobKind, JobState, Role};

const CSS: &str = include_str!("static/console.css");
const LIVE_JS: &str = include_str!("static/live.js");

/// A whole page: `title`, the navigation for `session` (none: signed out), `body`.
pub(super) fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · AIbro Console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/live.js" defer {}
            }
            body {
                header {
                    nav {
                        a href="/console" { "Jobs" }
                        a href="/console/marketplace" { "Marketplace" }
                    }
                    @if let Some(session) = session {
                        form #signout method="post" action="/console/signout" {
                            span #user { (session.user.0) }
                            input type="hidden" name="csrf" value=(session.csrf);
                            button #signout-submit type="submit" { "Sign out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The hidden CSRF input of a state-changing form.
pub(super) fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// `GET /console/static/{file}`: the stylesheet and the live-update script.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "console.css" => ("text/css; charset=utf-8", CSS),
        "live.js" => ("text/javascript; charset=utf-8", LIVE_JS),
        _ => {
            return HttpError::new(StatusCode::NOT_FOUND, "unknown_path", "no such file")
                .into_response()
        }
    };
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// `DEPLOYED` for a deployed job: its status as the proto names it.
pub(super) fn job_status(state: JobState) -> &'static str {
    strip(
        convert::job_status(state.status).as_str_name(),
        "JOB_STATUS_",
    )
}

pub(super) fn kind(kind: JobKind) -> &'static str {
    strip(
        aibro_proto::v1::JobKind::from(kind).as_str_name(),
        "JOB_KIND_",
    )
}

/// `EXECUTING` or `CLOSED / TERMINATED`: an instance's status and substatus.
pub(super) fn instance_state(state: InstanceState) -> String {
    let status = strip(
        convert::instance_status(state.status).as_str_name(),
        "INSTANCE_STATUS_",
    );
    let sub = strip(
        convert::instance_substatus(state.substatus).as_str_name(),
        "INSTANCE_SUBSTATUS_",
    );
    match sub {
        "NONE" => status.to_string(),
        sub => format!("{status} / {sub}"),
    }
}

pub(super) fn role(role: Role) -> &'static str {
    strip(convert::role(role).as_str_name(), "INSTANCE_ROLE_")
}

fn strip(name: &'static str, prefix: &str) -> &'static str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// A moment as RFC 3339 UTC, or "—" for none.
pub(super) fn when(ms: u64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
    match at.ok().filter(|_| ms > 0).map(|t| t.format(&Rfc3339)) {
        Some(Ok(text)) => text,
        _ => "—".into(),
    }
}

pub(super) fn usd(amount: f64) -> String {
    format!("${amount:.4}")
}

/// `g4dn.xlarge (spot)`: a machine id with its market, or "—" for none.
pub(super) fn machine(id: &str) -> String {
    if id.is_empty() {
        return "—".into();
    }
    match crate::catalog::split_id(id).1 {
        crate::catalog::Market::Spot => format!("{id} (spot)"),
        crate::catalog::Market::OnDemand => format!("{id} (on-demand)"),
    }
}

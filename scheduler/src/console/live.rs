//! `GET /console/events`: server-sent events for the jobs page. One
//! subscription per open console to the hub WatchJob streams come from
//! ([`Control::watch_all_jobs`](crate::control::Control::watch_all_jobs)),
//! filtered to the jobs the user may see: event `job` with the changed
//! job's row as JSON; `reload` when the console fell behind. The stream ends
//! with its session. At most [`MAX_STREAMS`] are open at once (then 503).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::form::Signed;
use super::layout;
use super::pages::jobs::model_name;
use super::Console;
use crate::api::http::HttpError;
use crate::control::may_see;
use crate::records::JobRecord;

/// Live streams open at once, every session's together.
pub(super) const MAX_STREAMS: usize = 1024;

pub(super) async fn events(
    State(console): State<Arc<Console>>,
    Signed(session): Signed,
) -> Response {
    let Ok(permit) = console.streams.clone().try_acquire_owned() else {
        return HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("{MAX_STREAMS} live consoles are open; the page works without live updates"),
        )
        .into_response();
    };
    let changes = BroadcastStream::new(console.control.watch_all_jobs());
    let (user, rows) = (session.user.clone(), console.clone());
    let stream = changes
        .take_while(move |_| {
            let _held = &permit;
            let live = console.sessions.is_live(&session.id);
            async move { live }
        })
        .filter_map(move |change| {
            let event = match change {
                Ok(job) => may_see(&user, &job)
                    .then(|| Event::default().event("job").data(&*rows.last_row.of(&job))),
                Err(BroadcastStreamRecvError::Lagged(_)) => {
                    Some(Event::default().event("reload").data("behind"))
                }
            };
            async move { event.map(Ok::<Event, Infallible>) }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The last changed job's row, made once for all the consoles that show it
/// (they all receive the same `Arc`).
#[derive(Default)]
pub(super) struct LastRow(Mutex<Option<(Arc<JobRecord>, Arc<str>)>>);

impl LastRow {
    fn of(&self, job: &Arc<JobRecord>) -> Arc<str> {
        let mut last = self.0.lock().expect("last row lock");
        match &*last {
            Some((made_for, row)) if Arc::ptr_eq(made_for, job) => row.clone(),
            _ => {
                let row: Arc<str> = row_json(job).into();
                *last = Some((job.clone(), row.clone()));
                row
            }
        }
    }
}

/// What a row of the jobs page shows of `job`, as JSON.
fn row_json(job: &JobRecord) -> String {
    serde_json::json!({
        "id": job.id,
        "model_name": model_name(job),
        "kind": layout::kind(job.kind),
        "status": layout::job_status(job.state),
        "substatus": job.state.substatus.name(),
        "created": layout::when(job.created_ms),
        "updated": layout::when(job.updated_ms),
    })
    .to_string()
}

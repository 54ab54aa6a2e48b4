//! `GET /console/events`: server-sent events for the jobs page. One
//! subscription per open console to the hub WatchJob streams come from
//! ([`Control::watch_all_jobs`](crate::control::Control::watch_all_jobs)),
//! filtered to the jobs the user may see: event `job` with the changed
//! job's row as JSON; `reload` when the console fell behind. The stream ends
//! with its session.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::form::Signed;
use super::layout;
use super::pages::jobs::model_name;
use super::Console;
use crate::control::may_see;
use crate::records::JobRecord;

pub(super) async fn events(
    State(console): State<Arc<Console>>,
    Signed(session): Signed,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = BroadcastStream::new(console.control.watch_all_jobs());
    let user = session.user.clone();
    let stream = changes
        .take_while(move |_| {
            let live = console.sessions.is_live(&session.id);
            async move { live }
        })
        .filter_map(move |change| {
            let event = match change {
                Ok(job) => may_see(&user, &job).then(|| row_event(&job)),
                Err(BroadcastStreamRecvError::Lagged(_)) => {
                    Some(Event::default().event("reload").data("behind"))
                }
            };
            async move { event.map(Ok) }
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Event `job`: what a row of the jobs page shows of `job`.
fn row_event(job: &JobRecord) -> Event {
    let row = serde_json::json!({
        "id": job.id,
        "model_name": model_name(job),
        "kind": layout::kind(job.kind),
        "status": layout::job_status(job.state),
        "substatus": job.state.substatus.name(),
        "created": layout::when(job.created_ms),
        "updated": layout::when(job.updated_ms),
    });
    Event::default().event("job").data(row.to_string())
}

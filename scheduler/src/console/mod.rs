//! The AIbro Console: web pages for jobs, instances, cost and the
//! marketplace, served under `/console` on the scheduler's listener through
//! the same tower stack as the HTTP front door. An adapter: every read and
//! action is a control-plane call (the ones the gRPC services make). Pages
//! are [`maud`] templates (escaped by default) and work without JavaScript;
//! `static/live.js` only makes the jobs page live ([`live`], SSE).
//!
//! Sign-in ([`pages::signin`]) trades an access token for a server-side
//! [`session`] (cookie `aibro_session`: HttpOnly, SameSite=Strict,
//! Path=/console, Secure over TLS); every POST but sign-in carries the
//! session's CSRF token (hidden input `csrf`); sign-ins are [`throttle`]d per
//! client IP. Every response carries the [`headers`] (CSP without inline
//! script, no framing, no referrer, nosniff).
//!
//! DOM contract (for browser tests):
//! - sign-in: `form#signin` with `input[name=token]`, `button#signin-submit`;
//!   errors in `#error[data-code]`; sign-out: `form#signout` `button#signout-submit`.
//! - jobs (`/console`): `table#jobs[data-last-page][data-status][data-kind]`,
//!   one `tr[data-job-id]` per job with cells `.model` (link `a.job-link`),
//!   `.kind`, `.status` (`span.status-<STATUS>` then `.substatus`),
//!   `.machines`, `.instances`, `.cost`, `.created`, `.updated`; filters
//!   `form#filters` (`select[name=status]`, `select[name=kind]`); paging
//!   `a#next-page`; `live.js` sets `data-live="on"` on the table once listening.
//! - job (`/console/jobs/{id}`): `#job[data-job-id][data-status]`,
//!   `#status`, `#predict-url`, `#curl`, `ul#client-ids li[data-client-id]`,
//!   `form#add-client input[name=client_id]`, `form.remove-client`,
//!   `form#make-public`, `table#instances tr[data-instance-id]`, `#cost`,
//!   `figure#timeline`, `figure#progress` (training), `a#download`
//!   (training results), `a#complete` to the confirmation page, whose
//!   `form#confirm-complete` has `button#complete`.
//! - marketplace (`/console/marketplace`): `table#machines tr[data-machine]`.

mod form;
mod headers;
mod layout;
mod live;
mod pages;
mod session;
mod throttle;

use std::sync::Arc;

use axum::response::Redirect;
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::control::Control;
use session::Sessions;
use throttle::Throttle;

/// What every console handler shares.
pub(crate) struct Console {
    control: Control,
    sessions: Sessions,
    throttle: Throttle,
    /// Places for open live streams ([`live::MAX_STREAMS`]).
    streams: Arc<Semaphore>,
    /// The row of the last changed job, shared by the live streams.
    last_row: live::LastRow,
    /// The listener is TLS: cookies are `Secure`.
    secure: bool,
}

/// The console's routes (and `/` redirecting to it), with its headers.
pub fn router(control: &Control, secure: bool) -> axum::Router {
    let console = Arc::new(Console {
        control: control.clone(),
        sessions: Sessions::default(),
        throttle: Throttle::default(),
        streams: Arc::new(Semaphore::new(live::MAX_STREAMS)),
        last_row: live::LastRow::default(),
        secure,
    });
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(pages::jobs::page))
        .route(
            "/console/signin",
            get(pages::signin::page).post(pages::signin::sign_in),
        )
        .route("/console/signout", post(pages::signin::sign_out))
        .route("/console/jobs/{id}", get(pages::job::page))
        .route("/console/jobs/{id}/clients", post(pages::actions::clients))
        .route(
            "/console/jobs/{id}/complete",
            get(pages::actions::confirm_complete).post(pages::actions::complete),
        )
        .route("/console/jobs/{id}/result", get(pages::actions::result))
        .route("/console/marketplace", get(pages::marketplace::page))
        .route("/console/events", get(live::events))
        .route("/console/static/{file}", get(layout::asset))
        .with_state(console)
        .layer(axum::middleware::map_response(headers::secure))
}

//! What the owner does on a job page, each a control-plane call: client ids
//! (add, remove, make public: UpdateClients), Complete (a confirmation page,
//! then the POST) and the training result's download (DownloadResult's
//! bytes). Every POST carries the session's CSRF token.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use tokio_util::io::ReaderStream;

use super::super::form::{Posted, Signed};
use super::super::layout::{self, csrf};
use super::super::session::Session;
use super::super::Console;
use super::jobs::model_name;
use super::{failed, required};
use crate::api::http::HttpError;
use crate::control::JobView;
use crate::error::Error;

fn job_path(id: &str) -> String {
    format!("/console/jobs/{id}")
}

/// The client ids with their forms (on the job page).
pub(super) fn clients_section(view: &JobView, session: &Session) -> Markup {
    let job = &view.job;
    let action = format!("{}/clients", job_path(&job.id));
    html! {
        section #clients {
            h2 { "Client ids" }
            @if job.client_ids.is_empty() { p #public { "Public: anyone may predict." } }
            ul #client-ids { @for c in &job.client_ids {
                li data-client-id=(c) {
                    code { (c) }
                    form .remove-client method="post" action=(action) {
                        (csrf(session))
                        input type="hidden" name="remove" value=(c);
                        button type="submit" { "Remove" }
                    }
                }
            } }
            @if !job.state.is_ended() {
                form #add-client method="post" action=(action) {
                    (csrf(session))
                    input type="text" name="client_id" required placeholder="client id";
                    button #add-client-submit type="submit" { "Add" }
                }
                @if !job.client_ids.is_empty() {
                    form #make-public method="post" action=(action) {
                        (csrf(session))
                        input type="hidden" name="public" value="true";
                        button #make-public-submit type="submit" { "Make public" }
                    }
                }
            }
        }
    }
}

/// `POST /console/jobs/{id}/clients`: `client_id` adds one, `remove` removes
/// one, `public=true` clears the list.
pub(in crate::console) async fn clients(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let fields = &posted.fields;
    let (add, remove, public) = if fields.get("public").is_some_and(|v| v == "true") {
        (vec![], vec![], true)
    } else if fields.contains_key("remove") {
        match required(fields, "remove") {
            Ok(c) => (vec![], vec![c.to_string()], false),
            Err(refused) => return refused.into_response(),
        }
    } else {
        match required(fields, "client_id") {
            Ok(c) => (vec![c.to_string()], vec![], false),
            Err(refused) => return refused.into_response(),
        }
    };
    let user = &posted.session.user;
    let updated = console
        .control
        .update_clients(user, &id, "", add, remove, public)
        .await;
    match updated {
        Ok(job) => Redirect::to(&job_path(&job.id)).into_response(),
        Err(e) => failed(e),
    }
}

/// `GET /console/jobs/{id}/complete`: asks before completing (works without JS).
pub(in crate::console) async fn confirm_complete(
    State(console): State<Arc<Console>>,
    Signed(session): Signed,
    Path(id): Path<String>,
) -> Response {
    let job = match console.control.find_job(&session.user, &id, "") {
        Ok(job) => job,
        Err(e) => return failed(e),
    };
    let body = html! {
        p { "Complete " strong { (model_name(&job)) } "? It stops serving at once and every instance is terminated." }
        form #confirm-complete method="post" action={ (job_path(&job.id)) "/complete" } {
            (csrf(&session))
            button #complete type="submit" { "Complete" }
            " "
            a #cancel href=(job_path(&job.id)) { "Cancel" }
        }
    };
    layout::page("Complete the job?", Some(&session), body).into_response()
}

/// `POST /console/jobs/{id}/complete`: Complete, then back to the job.
pub(in crate::console) async fn complete(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    match console
        .control
        .complete(&posted.session.user, &id, "")
        .await
    {
        Ok(job) => Redirect::to(&job_path(&job.id)).into_response(),
        Err(e) => failed(e),
    }
}

/// `GET /console/jobs/{id}/result`: the training job's outputs, streamed.
pub(in crate::console) async fn result(
    State(console): State<Arc<Console>>,
    Signed(session): Signed,
    Path(id): Path<String>,
) -> Response {
    let path = match console.control.result_path(&session.user, &id) {
        Ok(path) => path,
        Err(e) => return failed(e),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) => {
            let e = Error::Internal(format!("cannot open the result: {e}"));
            return HttpError::from(e).into_response();
        }
    };
    let name = format!(
        "attachment; filename=\"{}-result.tar.gz\"",
        id.replace('"', "")
    );
    (
        [
            (CONTENT_TYPE, "application/gzip".to_string()),
            (CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(ReaderStream::new(file)),
    )
        .into_response()
}

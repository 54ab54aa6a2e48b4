//! Signing in with an access token (throttled per client IP), and out.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{RETRY_AFTER, SET_COOKIE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::super::form::{self, Posted, SIGN_IN};
use super::super::layout;
use super::super::session::{cleared_cookie, cookie};
use super::super::Console;
use crate::api::http::HttpError;

/// `GET /console/signin`.
pub(in crate::console) async fn page() -> Markup {
    form_page(None)
}

fn form_page(error: Option<&str>) -> Markup {
    layout::page(
        "Sign in",
        None,
        html! {
            @if let Some(error) = error {
                p #error .error data-code="unauthenticated" { (error) }
            }
            form #signin method="post" action=(SIGN_IN) {
                label for="token" { "Access token" }
                input #token type="password" name="token" autocomplete="off" required;
                button #signin-submit type="submit" { "Sign in" }
            }
            p { "The admin creates tokens with " code { "aibro token create --user USER" } "." }
        },
    )
}

/// `POST /console/signin`: a session cookie for a valid token.
pub(in crate::console) async fn sign_in(
    State(console): State<Arc<Console>>,
    request: Request<Body>,
) -> Response {
    if let Err(refused) = form::same_origin(request.headers(), request.uri()) {
        return refused.into_response();
    }
    if let Err(wait_s) = console
        .throttle
        .attempt(form::client_ip(request.extensions()))
    {
        let message = format!("too many sign-in attempts; retry in {wait_s} s");
        let mut response =
            HttpError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).into_response();
        response.headers_mut().insert(RETRY_AFTER, wait_s.into());
        return response;
    }
    let fields = match form::form_fields(request.into_body()).await {
        Ok(fields) => fields,
        Err(refused) => return refused.into_response(),
    };
    let token = fields.get("token").map_or("", |t| t.trim());
    match console.control.auth().user_of(token) {
        Ok(user) => {
            let session = console.sessions.start(user);
            let set = cookie(&session.id, console.secure);
            ([(SET_COOKIE, set)], Redirect::to("/console")).into_response()
        }
        Err(e) => (StatusCode::UNAUTHORIZED, form_page(Some(&e.to_string()))).into_response(),
    }
}

/// `POST /console/signout`: ends the session.
pub(in crate::console) async fn sign_out(
    State(console): State<Arc<Console>>,
    posted: Posted,
) -> Response {
    console.sessions.end(&posted.session.id);
    let cleared = cleared_cookie(console.secure);
    ([(SET_COOKIE, cleared)], Redirect::to(SIGN_IN)).into_response()
}

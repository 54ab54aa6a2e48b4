//! One file per page: [`signin`], [`jobs`], [`job`] (with its
//! [`actions`]: client ids, complete, the result download) and
//! [`marketplace`].

pub(super) mod actions;
pub(super) mod job;
pub(super) mod jobs;
pub(super) mod marketplace;
pub(super) mod signin;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::http::HttpError;
use crate::error::Error;

/// A control-plane error as the HTTP front door answers it (JSON).
pub(super) fn failed(e: Error) -> Response {
    HttpError::from(e).into_response()
}

/// A field a form must carry.
pub(super) fn required<'a>(
    fields: &'a super::form::Fields,
    name: &'static str,
) -> Result<&'a str, HttpError> {
    match fields.get(name).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("the form needs a `{name}`"),
        )),
    }
}

//! Per-call deadlines: the call's own timeout header bounded by
//! `--request-timeout-s` ([`crate::api::deadline`]), left in the request's
//! extensions for the handlers, and enforced until the response's head:
//! gRPC DEADLINE_EXCEEDED, HTTP 504 JSON. A malformed timeout header is
//! refused (INVALID_ARGUMENT, 400).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::{timeout_at, Instant};
use tower::{service_fn, ServiceExt};

use super::HttpService;
use crate::api::deadline::{self, BadTimeout, Deadline};
use crate::api::http::{is_grpc, HttpError};

/// tonic's server also ends a gRPC call at its `grpc-timeout`, answering
/// CANCELLED; ours ends this much earlier, so that clients read
/// DEADLINE_EXCEEDED.
const BEFORE_TONIC: Duration = Duration::from_millis(1);

pub(super) fn bounded(inner: impl HttpService, max: Duration) -> impl HttpService {
    service_fn(move |mut request: Request<Body>| {
        let inner = inner.clone();
        async move {
            let start = Instant::now();
            let grpc = is_grpc(&request);
            let timeout = match deadline::requested(request.headers(), grpc, max) {
                Ok(timeout) => timeout,
                Err(bad) => return Ok(refused(grpc, bad)),
            };
            request.extensions_mut().insert(Deadline(start + timeout));
            // Handlers that time their own steps end on the same instant, and
            // are polled first: their answer wins.
            let ends = if grpc {
                start + timeout.saturating_sub(BEFORE_TONIC)
            } else {
                start + timeout
            };
            match timeout_at(ends, inner.oneshot(request)).await {
                Ok(response) => response,
                Err(_) if grpc => Ok(tonic::Status::deadline_exceeded(
                    "the call did not answer within its deadline (grpc-timeout, at most the \
                     scheduler's --request-timeout-s)",
                )
                .into_http()),
                Err(_) => Ok(HttpError::deadline_exceeded().into_response()),
            }
        }
    })
}

fn refused(grpc: bool, bad: BadTimeout) -> Response {
    if grpc {
        tonic::Status::invalid_argument(bad.to_string()).into_http()
    } else {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "bad_request_timeout",
            bad.to_string(),
        )
        .into_response()
    }
}

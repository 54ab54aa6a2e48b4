//! HTTP errors: JSON `{"error": "...", "code": "..."}` with the matching
//! status. [`status_of`] is the one table from the control plane's errors
//! (through their gRPC code, as gRPC Predict reports them) to HTTP.

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

use crate::error::Error;

/// Seconds a client waits before retrying a model that cannot serve yet.
const RETRY_AFTER_S: &str = "1";

#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    /// A short snake_case name clients can match on.
    code: &'static str,
    message: String,
}

impl HttpError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn deadline_exceeded() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            "the model did not answer within the request's deadline (header Request-Timeout, \
             at most the scheduler's --request-timeout-s)",
        )
    }
}

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        // The whole message: unlike gRPC's header, a JSON body has room for
        // a long traceback.
        let message = e.to_string();
        let (status, code) = status_of(Status::from(e).code());
        HttpError::new(status, code, message)
    }
}

impl From<Status> for HttpError {
    fn from(s: Status) -> Self {
        let (status, code) = status_of(s.code());
        HttpError::new(status, code, s.message())
    }
}

/// The one mapping from a Predict error's gRPC code to HTTP.
fn status_of(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_input"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "client_not_allowed"),
        Code::NotFound => (StatusCode::NOT_FOUND, "model_not_found"),
        Code::ResourceExhausted => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        // No instance can take the request yet (or the agent's is not ready).
        Code::Unavailable | Code::FailedPrecondition => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        Code::DeadlineExceeded | Code::Cancelled => {
            (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded")
        }
        // The agent's code for an exception raised by the user's run().
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "run_raised"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code }).to_string();
        let mut response = (
            self.status,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        response
    }
}

/// Any method but POST on the predict URL (axum adds `Allow`).
pub(crate) async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "predict with POST",
    )
}

/// A path no route serves. The path is not echoed: it may hold a client id.
pub(crate) async fn unknown_path() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "unknown_path",
        "no such path; predict at POST /v1/{owner}/{client_id}/{model_name}/predict, or with \
         the Open Inference Protocol at POST /v2/models/{owner}~{model_name}/infer",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_errors_map_to_their_http_status() {
        let cases = [
            (
                Error::PermissionDenied("no".into()),
                403,
                "client_not_allowed",
            ),
            (Error::NotFound("no".into()), 404, "model_not_found"),
            (Error::Unavailable("later".into()), 503, "unavailable"),
            (
                Error::Agent(Status::unknown("Traceback")),
                500,
                "run_raised",
            ),
            (
                Error::Agent(Status::invalid_argument("bad")),
                400,
                "invalid_input",
            ),
        ];
        for (error, status, code) in cases {
            let e = HttpError::from(error);
            assert_eq!((e.status.as_u16(), e.code), (status, code), "{}", e.message);
        }
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let r = HttpError::from(Error::Unavailable("later".into())).into_response();
        assert_eq!(r.headers()[RETRY_AFTER], RETRY_AFTER_S);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }
}

//! `POST /v1/{owner}/{client_id}/{model_name}/predict`: unpacks the HTTP
//! request and calls [`Control::predict`], the call gRPC Predict makes,
//! within the request's deadline (`Request-Timeout: <seconds>`, at most
//! `--request-timeout-s`; the stack reads it, see [`crate::api::deadline`]).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::time::{timeout_at, Instant};

use super::errors::HttpError;
use crate::api::deadline::Deadline;
use crate::control::Control;

/// What a request without a content type is taken for.
const JSON: &str = "application/json";

pub(crate) struct PredictApi {
    pub control: Control,
    pub max_payload_bytes: usize,
}

pub(crate) async fn predict(
    State(api): State<std::sync::Arc<PredictApi>>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let Path((owner, client_id, model_name)) =
        path.map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    let content_type = content_type(&headers)?;
    let payload = read_body_by(deadline, body, api.max_payload_bytes).await?;
    // The stack ends the call at its deadline (504); only the body's read
    // is timed here, to tell a short body apart.
    let routed = api
        .control
        .predict(&owner, &client_id, &model_name, payload, content_type)
        .await?;
    let content_type = HeaderValue::from_str(&routed.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok(([(CONTENT_TYPE, content_type)], routed.output).into_response())
}

/// The request's content type, JSON when it names none.
fn content_type(headers: &HeaderMap) -> Result<String, HttpError> {
    match headers.get(CONTENT_TYPE) {
        None => Ok(JSON.to_string()),
        Some(v) => v.to_str().map(str::to_string).map_err(|_| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "bad_content_type",
                "the Content-Type header is not text",
            )
        }),
    }
}

/// The whole body, at most `limit` bytes; one that stops short of its
/// Content-Length ends at the deadline.
pub(crate) async fn read_body_by(
    deadline: Instant,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, HttpError> {
    timeout_at(deadline, read_body(body, limit))
        .await
        .map_err(|_| incomplete_body("it did not arrive within the request's deadline"))?
}

async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, HttpError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(Vec::from(collected.to_bytes())),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the payload is larger than {limit} bytes (scheduler flag --max-payload-bytes)"
            ),
        )),
        Err(e) => Err(incomplete_body(&e.to_string())),
    }
}

fn incomplete_body(why: &str) -> HttpError {
    HttpError::new(
        StatusCode::BAD_REQUEST,
        "incomplete_body",
        format!("cannot read the whole request body: {why}"),
    )
}

//! Request ids and spans: every call gets an `x-request-id` (the client's,
//! when it sent a sane one; else a fresh UUIDv7), echoed in the response, and
//! a span carrying it with the method and path (a predict URL's client id
//! redacted) or the gRPC service and method. One INFO line per answer.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response};
use tower::ServiceBuilder;
use tower_http::propagate_header::PropagateHeaderLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

use super::HttpService;
use crate::api::http::{is_grpc, redacted};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A client's id longer than this is replaced: it goes into every log line.
const MAX_ID_BYTES: usize = 128;

pub(super) fn traced(inner: impl HttpService) -> impl HttpService {
    ServiceBuilder::new()
        .map_response(|response: Response<_>| response.map(Body::new))
        .map_request(with_request_id)
        .layer(PropagateHeaderLayer::new(X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(span)
                .on_request(())
                .on_response(access_line)
                .on_eos(())
                // The access line shows the status; no second line for a 5xx.
                .on_failure(()),
        )
        .service(inner)
}

/// Keeps the client's request id when it is short, visible ASCII; else makes one.
fn with_request_id(mut request: Request<Body>) -> Request<Body> {
    let sane = request.headers().get(&X_REQUEST_ID).is_some_and(|id| {
        let id = id.as_bytes();
        !id.is_empty() && id.len() <= MAX_ID_BYTES && id.iter().all(u8::is_ascii_graphic)
    });
    if !sane {
        let id = uuid::Uuid::now_v7();
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer))
            .expect("a UUID is a header value");
        request.headers_mut().insert(X_REQUEST_ID, id);
    }
    request
}

fn span(request: &Request<Body>) -> Span {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    let path = redacted(request.uri().path());
    if is_grpc(request) {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((&path, ""));
        tracing::info_span!("grpc", request_id = id, service, method)
    } else {
        tracing::info_span!(
            "http",
            request_id = id,
            method = %request.method(),
            path = %path,
            version = ?request.version(),
        )
    }
}

/// The access line: the HTTP status, gRPC's when the call ended at once
/// (trailers-only, as errors do), and the time to the response's head.
fn access_line<B>(response: &Response<B>, latency: Duration, _: &Span) {
    let status = response.status().as_u16();
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    match response.headers().get("grpc-status") {
        Some(code) => {
            let grpc_status = String::from_utf8_lossy(code.as_bytes());
            tracing::info!(status, %grpc_status, latency_us, "answered");
        }
        None => tracing::info!(status, latency_us, "answered"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_after(given: Option<&str>) -> String {
        let mut request = Request::new(Body::empty());
        if let Some(id) = given {
            request
                .headers_mut()
                .insert(X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
        }
        let request = with_request_id(request);
        request.headers()[X_REQUEST_ID]
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_sane_client_id_is_kept_else_one_is_made() {
        assert_eq!(id_after(Some("abc-123")), "abc-123");
        for replaced in [None, Some(""), Some("a b"), Some(&"x".repeat(200) as &str)] {
            let id = id_after(replaced);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{replaced:?} -> {id}");
        }
    }
}

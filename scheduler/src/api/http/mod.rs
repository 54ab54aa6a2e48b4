//! The HTTP side of the scheduler's listen address: the original AIbro
//! predict URL, an adapter over the control plane's Predict ([`predict`]),
//! and the admin's `/metrics` ([`metrics`]), with errors as JSON
//! ([`errors`]), and paths as logs may show them
//! ([`redacted`]: never the client id). [`one_port`] puts gRPC and HTTP on
//! one server.

pub(super) mod errors;
mod metrics;
pub(super) mod predict;

pub(crate) use metrics::operator_router;

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, Version};
use axum::routing::post;
use tonic::service::Routes;
use tower::ServiceExt;

pub(crate) use errors::HttpError;

use super::HttpService;
use crate::config::Config;
use crate::control::Control;

pub(crate) const PREDICT_PATH: &str = "/v1/{owner}/{client_id}/{model_name}/predict";

/// The HTTP routes, `more` (the Open Inference Protocol's) among them.
pub(crate) fn router(control: &Control, config: &Config, more: axum::Router) -> axum::Router {
    let api = Arc::new(predict::PredictApi {
        control: control.clone(),
        max_payload_bytes: config.max_payload_bytes,
    });
    axum::Router::new()
        .route(
            PREDICT_PATH,
            post(predict::predict).fallback(errors::method_not_allowed),
        )
        .route(metrics::METRICS_PATH, metrics::admin_route(control))
        .fallback(errors::unknown_path)
        .with_state(api)
        .merge(more)
}

/// The path as logs may show it: a predict URL's client id is a credential.
pub(crate) fn redacted(path: &str) -> Cow<'_, str> {
    if !path.starts_with("/v1/") {
        return Cow::Borrowed(path);
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 3 {
        parts[3] = "***";
    }
    Cow::Owned(parts.join("/"))
}

/// gRPC (HTTP/2 with `content-type: application/grpc…`) goes to `grpc`,
/// every other request to `http`.
pub(crate) fn one_port(grpc: Routes, http: axum::Router) -> impl HttpService {
    let grpc = grpc.prepare().into_axum_router();
    tower::service_fn(move |request: Request<Body>| {
        let (grpc, http) = (grpc.clone(), http.clone());
        async move {
            if is_grpc(&request) {
                grpc.oneshot(request).await
            } else {
                http.oneshot(request).await
            }
        }
    })
}

pub(crate) fn is_grpc<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_2
        && request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_never_show_the_client_id() {
        assert_eq!(
            redacted("/v1/alice/s3cret/echo/predict"),
            "/v1/alice/***/echo/predict"
        );
        assert_eq!(redacted("/v1/alice/s3cret"), "/v1/alice/***");
        assert_eq!(redacted("/v1/alice"), "/v1/alice");
        assert_eq!(redacted("/health"), "/health");
    }

    #[test]
    fn grpc_is_told_apart_by_version_and_content_type() {
        let grpc = Request::builder()
            .version(Version::HTTP_2)
            .header(CONTENT_TYPE, "application/grpc+proto")
            .body(Body::empty())
            .unwrap();
        assert!(is_grpc(&grpc));
        let json = Request::builder()
            .version(Version::HTTP_2)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::empty())
            .unwrap();
        assert!(!is_grpc(&json));
        let http1 = Request::builder()
            .header(CONTENT_TYPE, "application/grpc")
            .body(Body::empty())
            .unwrap();
        assert!(!is_grpc(&http1));
    }
}

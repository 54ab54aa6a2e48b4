//! The HTTP side of the scheduler's listen address: the original AIbro
//! predict URL, an adapter over the control plane's Predict ([`predict`]),
//! and the admin's `/metrics` ([`metrics`]), with errors as JSON
//! ([`errors`]), CORS when configured, and an access log that never shows
//! the client id. [`one_port`] puts gRPC and HTTP on one server.

pub(super) mod errors;
mod metrics;
pub(super) mod predict;

pub(crate) use metrics::operator_router;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, Method, Request, Version};
use axum::routing::post;
use tonic::service::Routes;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::config::Config;
use crate::control::Control;

pub(crate) const PREDICT_PATH: &str = "/v1/{owner}/{client_id}/{model_name}/predict";

/// The HTTP routes, `more` (the Open Inference Protocol's) among them, each
/// call bounded by `--request-timeout-s`.
pub(crate) fn router(
    control: &Control,
    config: &Config,
    more: axum::Router,
) -> anyhow::Result<axum::Router> {
    let api = Arc::new(predict::PredictApi {
        control: control.clone(),
        max_payload_bytes: config.max_payload_bytes,
        max_deadline: Duration::from_secs(config.request_timeout_s.max(1)),
    });
    let router = axum::Router::new()
        .route(
            PREDICT_PATH,
            post(predict::predict).fallback(errors::method_not_allowed),
        )
        .route(metrics::METRICS_PATH, metrics::admin_route(control))
        .fallback(errors::unknown_path)
        .with_state(api)
        .merge(more);
    let router = match cors(&config.http_cors_origins)? {
        Some(cors) => router.layer(cors),
        None => router,
    };
    Ok(router.layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request<Body>| {
                tracing::info_span!(
                    "http",
                    method = %request.method(),
                    path = %redacted(request.uri().path()),
                    version = ?request.version(),
                )
            })
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
    ))
}

/// CORS for browser pages from `origins` (`*`: any); none without origins.
fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("bad --http-cors-origin: {e}"))?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST])
            .allow_headers([
                CONTENT_TYPE,
                HeaderName::from_static(predict::REQUEST_TIMEOUT),
            ]),
    ))
}

/// The path as logs may show it: a predict URL's client id is a credential.
fn redacted(path: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.get(1) == Some(&"v1") && parts.len() > 3 {
        parts[3] = "***";
    }
    parts.join("/")
}

/// gRPC (HTTP/2 with `content-type: application/grpc…`) goes to `grpc`,
/// each call bounded by `grpc_deadline` (clients may ask for less with
/// `grpc-timeout`); every other request to `http`.
pub(crate) fn one_port(grpc: Routes, http: axum::Router, grpc_deadline: Duration) -> Routes {
    let grpc = grpc.prepare().into_axum_router();
    let dispatch = tower::service_fn(move |request: Request<Body>| {
        let (grpc, http) = (grpc.clone(), http.clone());
        async move {
            if !is_grpc(&request) {
                return http.oneshot(request).await;
            }
            match tokio::time::timeout(grpc_deadline, grpc.oneshot(request)).await {
                Ok(response) => response,
                // As tonic's own server timeout answers.
                Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
            }
        }
    });
    Routes::from(axum::Router::new().fallback_service(dispatch))
}

fn is_grpc(request: &Request<Body>) -> bool {
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

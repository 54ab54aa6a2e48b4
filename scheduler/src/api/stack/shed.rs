//! Load shedding: at most `--max-concurrent-requests` calls run at once; one
//! more is refused at once (HTTP 503 `overloaded` with `Retry-After`, gRPC
//! UNAVAILABLE), never queued. A call holds its place until its response's
//! head is out, so an open stream (WatchJob, a download) stops counting once
//! it answers. The agents' gateway is never shed: a burst of predictions must
//! not make agents miss their heartbeats and be taken for lost.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{service_fn, ServiceBuilder, ServiceExt};

use super::{is_gateway, HttpService};
use crate::api::http::{is_grpc, HttpError};

const OVERLOADED: &str = "the scheduler is at its limit of concurrent requests \
     (--max-concurrent-requests); retry shortly";

pub(super) fn shedding(inner: impl HttpService, limit: Arc<Semaphore>) -> impl HttpService {
    let limited = ServiceBuilder::new()
        .load_shed()
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(limit))
        .service(inner.clone());
    service_fn(move |request: Request<Body>| {
        let (inner, limited) = (inner.clone(), limited.clone());
        async move {
            if is_gateway(&request) {
                return inner.oneshot(request).await;
            }
            let grpc = is_grpc(&request);
            // `inner` never fails: the only error is the shed's.
            Ok(limited
                .oneshot(request)
                .await
                .unwrap_or_else(|_overloaded| overloaded(grpc)))
        }
    })
}

fn overloaded(grpc: bool) -> Response<Body> {
    if grpc {
        tonic::Status::unavailable(OVERLOADED).into_http()
    } else {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", OVERLOADED).into_response()
    }
}

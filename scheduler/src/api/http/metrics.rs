//! `GET /metrics`: the scheduler's Prometheus metrics. On the listen address
//! only for the admin (`Authorization: Bearer <admin token>`), since model
//! names are other users' data; [`operator_router`] serves them without a
//! token on `--metrics-listen`, an address meant for the operator's network.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::errors::HttpError;
use crate::api::Authenticated;
use crate::control::Control;
use crate::metrics;

pub(crate) const METRICS_PATH: &str = "/metrics";

/// The metrics route of the listen address, for the admin only.
pub(crate) fn admin_route<S: Clone + Send + Sync + 'static>(
    control: &Control,
) -> axum::routing::MethodRouter<S> {
    get(as_admin)
        .fallback(scrape_with_get)
        .with_state(control.clone())
}

/// `--metrics-listen`: `GET /metrics` without a token, and nothing else.
pub(crate) fn operator_router(control: &Control) -> axum::Router {
    axum::Router::new()
        .route(METRICS_PATH, get(open).fallback(scrape_with_get))
        .fallback(only_metrics)
        .with_state(control.clone())
}

async fn as_admin(
    State(control): State<Control>,
    extensions: Extensions,
) -> Result<Response, HttpError> {
    let user = Authenticated::user(&extensions)?;
    if !user.is_admin() {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "not_admin",
            "only the admin may read /metrics (model names are other users' data); \
             operators scrape the --metrics-listen address",
        ));
    }
    scrape(control).await
}

async fn open(State(control): State<Control>) -> Result<Response, HttpError> {
    scrape(control).await
}

/// Every metric in the text format; counting the store's records may take a
/// moment, so off the async threads.
async fn scrape(control: Control) -> Result<Response, HttpError> {
    let text = tokio::task::spawn_blocking(move || control.metrics().scrape())
        .await
        .map_err(|e| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("scrape failed: {e}"),
            )
        })?
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::NOT_FOUND,
                "metrics_off",
                "metrics are off (scheduler flag --metrics off)",
            )
        })?;
    Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

async fn scrape_with_get() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "scrape /metrics with GET",
    )
}

async fn only_metrics() -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "unknown_path",
        "this address serves only GET /metrics",
    )
}

//! CORS for browser pages calling the HTTP routes (`--http-cors-origin`,
//! repeatable; `*` for any origin; none by default): the methods and request
//! headers the AIbro URL and the Open Inference Protocol take, and the
//! response headers a page may read.

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::deadline::REQUEST_TIMEOUT;
use super::oip::{rest::HEADER_LENGTH, CLIENT_ID_HEADER};
use super::stack::trace::X_REQUEST_ID;

/// The layer for `origins`; none without origins.
pub(crate) fn layer(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
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
    let named = |name: &'static str| HeaderName::from_static(name);
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                CONTENT_TYPE,
                AUTHORIZATION,
                named(REQUEST_TIMEOUT),
                named(CLIENT_ID_HEADER),
                named(HEADER_LENGTH),
                X_REQUEST_ID,
            ])
            .expose_headers([X_REQUEST_ID, named(HEADER_LENGTH), RETRY_AFTER]),
    ))
}

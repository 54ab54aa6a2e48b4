//! Authentication, once per call: a request with an `authorization` header
//! gets its caller (the user, or why the token is refused) in its
//! extensions, where [`crate::api::caller`] reads it. A request without one
//! passes as it is (Predict needs no token); so do the agents' gateway calls,
//! which carry agent credentials the gateway checks itself.

use axum::body::Body;
use axum::http::header::AUTHORIZATION;
use axum::http::Request;
use tower::ServiceBuilder;

use super::{is_gateway, HttpService};
use crate::api::Authenticated;
use crate::auth::Auth;

pub(super) fn authenticating(inner: impl HttpService, auth: &Auth) -> impl HttpService {
    // The stack is cloned per connection and per call: one shared Auth.
    let auth = std::sync::Arc::new(auth.clone());
    ServiceBuilder::new()
        .map_request(move |mut request: Request<Body>| {
            if request.headers().contains_key(AUTHORIZATION) && !is_gateway(&request) {
                let caller = Authenticated::of(&auth, request.headers());
                request.extensions_mut().insert(caller);
            }
            request
        })
        .service(inner)
}

//! One tower stack around the scheduler's port, for gRPC and HTTP alike (not
//! one per protocol). A request meets, outermost first: its request id and
//! span with an INFO access line ([`trace`]), load shedding past
//! `--max-concurrent-requests` ([`shed`]), its bearer token authenticated once
//! ([`authn`]), and its deadline ([`timeout`]). [`Stack`] selects the layers,
//! so that `aibro-bench stack` can time what they cost.

mod authn;
mod shed;
mod timeout;
pub(crate) mod trace;

use std::sync::Arc;
use std::time::Duration;

use axum::http::Request;
use tower::layer::layer_fn;
use tower::ServiceBuilder;

pub use super::HttpService;
use crate::auth::Auth;

/// The agents' gateway (register, reports, heartbeats): never shed, and it
/// authenticates its callers' own credentials.
const GATEWAY: &str = "/aibro.v1.AgentGateway/";

fn is_gateway<B>(request: &Request<B>) -> bool {
    request.uri().path().starts_with(GATEWAY)
}

/// The layers, each but the deadline optional.
#[derive(Clone)]
pub struct Stack {
    /// Request ids (`x-request-id`, made when absent, echoed) and a span
    /// with an INFO access line per call.
    pub trace: bool,
    /// At most this many calls at once (the agents' gateway aside); past it a
    /// call is refused at once: HTTP 503 `overloaded` or gRPC UNAVAILABLE.
    pub max_concurrent: Option<usize>,
    /// Authenticates a bearer token once, for the handlers (`api::caller`).
    pub auth: Option<Auth>,
    /// The longest a call may run; clients may ask for less.
    pub max_deadline: Duration,
}

impl Stack {
    /// `inner` wrapped in the stack's layers.
    pub fn around(self, inner: impl HttpService) -> impl HttpService {
        let Stack {
            trace,
            max_concurrent,
            auth,
            max_deadline,
        } = self;
        let shedding = max_concurrent.map(|n| {
            let limit = Arc::new(tokio::sync::Semaphore::new(n));
            layer_fn(move |s| shed::shedding(s, limit.clone()))
        });
        let authenticating = auth.map(|auth| layer_fn(move |s| authn::authenticating(s, &auth)));
        ServiceBuilder::new()
            .option_layer(trace.then_some(layer_fn(trace::traced)))
            .option_layer(shedding)
            .option_layer(authenticating)
            .layer(layer_fn(move |s| timeout::bounded(s, max_deadline)))
            .service(inner)
    }
}

//! A stand-in for EC2's instance metadata service (IMDSv2) on 127.0.0.1, for
//! agents started with `--imds-endpoint`: session tokens (a GET without the
//! token is refused, 401, as IMDSv2 does), the instance's id and address, and
//! the spot notices a test sets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use tokio::sync::oneshot;

const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";

/// Serves until dropped.
pub struct ImdsStandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Dropped with the stand-in: the server shuts down.
    _stop: oneshot::Sender<()>,
}

struct Shared {
    instance_id: String,
    /// The one session token given out.
    token: String,
    notices: Mutex<Notices>,
    /// GETs answered with a valid token.
    requests: AtomicU64,
}

#[derive(Default)]
struct Notices {
    instance_action: Option<(String, SystemTime)>,
    rebalance: Option<SystemTime>,
}

impl ImdsStandIn {
    /// Serves the metadata of `instance_id` on 127.0.0.1 port 0.
    pub async fn start(instance_id: &str) -> ImdsStandIn {
        Self::serve(instance_id)
    }

    /// As `start`, from synchronous code that runs on a Tokio runtime.
    pub fn serve(instance_id: &str) -> ImdsStandIn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .expect("bind the IMDS stand-in");
        let addr = listener.local_addr().expect("the stand-in's address");
        let shared = Arc::new(Shared {
            instance_id: instance_id.to_string(),
            token: format!("token-of-{instance_id}"),
            notices: Mutex::default(),
            requests: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/latest/api/token", put(token))
            .fallback(metadata)
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        ImdsStandIn {
            shared,
            addr,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT`, for `--imds-endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// EC2 will `action` (terminate, stop, hibernate) the machine `at`.
    pub fn set_instance_action(&self, action: &str, at: SystemTime) {
        self.notices().instance_action = Some((action.to_string(), at));
    }

    /// EC2 recommends moving off the machine (noticed `at`).
    pub fn set_rebalance(&self, at: SystemTime) {
        self.notices().rebalance = Some(at);
    }

    /// No notice any more.
    pub fn clear(&self) {
        *self.notices() = Notices::default();
    }

    /// GETs served (with a valid token).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    fn notices(&self) -> std::sync::MutexGuard<'_, Notices> {
        self.shared.notices.lock().expect("notices")
    }
}

/// PUT /latest/api/token: the session token, when a TTL is asked for.
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !headers.contains_key(TOKEN_TTL_HEADER) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    shared.token.clone().into_response()
}

/// Every GET: 401 without the token, else the metadata or 404.
async fn metadata(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let token = headers.get(TOKEN_HEADER).map(|t| t.as_bytes());
    if token != Some(shared.token.as_bytes()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    match shared.answer(uri.path()) {
        Some(body) => body.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Shared {
    fn answer(&self, path: &str) -> Option<String> {
        let notices = self.notices.lock().expect("notices");
        match path {
            "/latest/meta-data/instance-id" => Some(self.instance_id.clone()),
            "/latest/meta-data/local-ipv4" => Some("127.0.0.1".into()),
            INSTANCE_ACTION => notices.instance_action.as_ref().map(|(action, at)| {
                serde_json::json!({"action": action, "time": rfc3339(*at)}).to_string()
            }),
            REBALANCE => notices
                .rebalance
                .map(|at| serde_json::json!({"noticeTime": rfc3339(at)}).to_string()),
            _ => None,
        }
    }
}

/// `at` as EC2 writes it: RFC 3339, UTC, whole seconds.
fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at)
        .replace_nanosecond(0)
        .expect("0 ns is valid");
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("a time after 0000 formats")
}

//! EC2's instance metadata service (IMDSv2), watched for spot notices: the
//! machine's interruption (`spot/instance-action`) and rebalance
//! recommendations, each reported once per instance the agent runs as, through
//! the report queue. Only with `--imds-endpoint`; every call has a timeout, and
//! failures are logged sparingly while polling goes on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aibro_proto::v1::SpotNotice;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::link::identity::Identity;
use crate::link::reporter::ReportQueue;

const TOKEN_PATH: &str = "/latest/api/token";
const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Six hours, the longest IMDS allows.
const TOKEN_TTL_S: &str = "21600";
/// IMDS answers in milliseconds; a call that takes longer has failed.
const TIMEOUT: Duration = Duration::from_secs(1);
/// While IMDS keeps failing, a warning at most this often (debug otherwise).
const WARN_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ImdsError {
    #[error("{path}: {source}")]
    Request {
        path: &'static str,
        #[source]
        source: hyper::http::Error,
    },
    #[error("{path}: {source}")]
    Http {
        path: &'static str,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{path}: reading the answer: {source}")]
    Body {
        path: &'static str,
        #[source]
        source: hyper::Error,
    },
    #[error("{path}: no answer within {after:?}")]
    Timeout { path: &'static str, after: Duration },
    #[error("{path}: HTTP {status}")]
    Status {
        path: &'static str,
        status: StatusCode,
    },
    #[error("{path}: unexpected answer: {source}")]
    Json {
        path: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: `{time}` is not an RFC 3339 time: {source}")]
    Time {
        path: &'static str,
        time: String,
        #[source]
        source: time::error::Parse,
    },
}

/// What EC2 does to an interrupted spot machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    Terminate,
    Stop,
    Hibernate,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Terminate => "terminate",
            Action::Stop => "stop",
            Action::Hibernate => "hibernate",
        }
    }
}

/// A spot notice, as IMDS holds it; equal notices are the same notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Notice {
    /// The machine is reclaimed with `action` at `at_ms` (ms since the epoch).
    Interruption { action: Action, at_ms: u64 },
    /// An interruption is likely soon (recommended at `noticed_ms`).
    Rebalance { noticed_ms: u64 },
}

impl From<Notice> for SpotNotice {
    fn from(notice: Notice) -> SpotNotice {
        match notice {
            Notice::Interruption { action, at_ms } => SpotNotice {
                action: action.name().into(),
                at_ms,
            },
            Notice::Rebalance { .. } => SpotNotice {
                action: "rebalance".into(),
                at_ms: 0,
            },
        }
    }
}

#[derive(Deserialize)]
struct InstanceAction {
    action: Action,
    time: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RebalanceRecommendation {
    notice_time: String,
}

/// The body of `spot/instance-action`.
fn instance_action(body: &[u8]) -> Result<Notice, ImdsError> {
    let answer: InstanceAction = json(INSTANCE_ACTION, body)?;
    Ok(Notice::Interruption {
        action: answer.action,
        at_ms: epoch_ms(INSTANCE_ACTION, &answer.time)?,
    })
}

/// The body of `events/recommendations/rebalance`.
fn rebalance(body: &[u8]) -> Result<Notice, ImdsError> {
    let answer: RebalanceRecommendation = json(REBALANCE, body)?;
    Ok(Notice::Rebalance {
        noticed_ms: epoch_ms(REBALANCE, &answer.notice_time)?,
    })
}

fn json<T: serde::de::DeserializeOwned>(path: &'static str, body: &[u8]) -> Result<T, ImdsError> {
    serde_json::from_slice(body).map_err(|source| ImdsError::Json { path, source })
}

/// An RFC 3339 time in ms since the Unix epoch (0 before it).
fn epoch_ms(path: &'static str, time: &str) -> Result<u64, ImdsError> {
    let parsed = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .map_err(|source| ImdsError::Time {
            path,
            time: time.into(),
            source,
        })?;
    Ok(u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// An IMDSv2 client: a session token (PUT), sent with every GET.
pub(crate) struct Imds {
    http: Client<HttpConnector, Empty<Bytes>>,
    endpoint: String,
    timeout: Duration,
    /// Fetched again when IMDS refuses it (401: it expired).
    token: Option<Bytes>,
}

impl Imds {
    /// A client of the metadata service at `endpoint` (`http://host[:port]`).
    pub(crate) fn new(endpoint: &str) -> Imds {
        Imds {
            http: Client::builder(TokioExecutor::new()).build_http(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            timeout: TIMEOUT,
            token: None,
        }
    }

    /// The notices IMDS holds now: an interruption first, then a rebalance
    /// recommendation.
    pub(crate) async fn notices(&mut self) -> Result<Vec<Notice>, ImdsError> {
        let mut notices = Vec::new();
        if let Some(body) = self.get(INSTANCE_ACTION).await? {
            notices.push(instance_action(&body)?);
        }
        if let Some(body) = self.get(REBALANCE).await? {
            notices.push(rebalance(&body)?);
        }
        Ok(notices)
    }

    /// The body at `path`, or None where there is none (404). A refused
    /// token is fetched again, once.
    async fn get(&mut self, path: &'static str) -> Result<Option<Bytes>, ImdsError> {
        let mut answer = self.get_with_token(path).await?;
        if answer.0 == StatusCode::UNAUTHORIZED {
            self.token = None;
            answer = self.get_with_token(path).await?;
        }
        match answer {
            (StatusCode::OK, body) => Ok(Some(body)),
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (status, _) => Err(ImdsError::Status { path, status }),
        }
    }

    async fn get_with_token(
        &mut self,
        path: &'static str,
    ) -> Result<(StatusCode, Bytes), ImdsError> {
        let token = self.token().await?;
        let request = Request::get(format!("{}{path}", self.endpoint))
            .header(TOKEN_HEADER, token.as_ref())
            .body(Empty::new())
            .map_err(|source| ImdsError::Request { path, source })?;
        self.call(path, request).await
    }

    /// The session token, fetched when there is none.
    async fn token(&mut self) -> Result<Bytes, ImdsError> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let path = TOKEN_PATH;
        let request = Request::put(format!("{}{path}", self.endpoint))
            .header(TOKEN_TTL_HEADER, TOKEN_TTL_S)
            .body(Empty::new())
            .map_err(|source| ImdsError::Request { path, source })?;
        match self.call(path, request).await? {
            (StatusCode::OK, token) => Ok(self.token.insert(token).clone()),
            (status, _) => Err(ImdsError::Status { path, status }),
        }
    }

    /// Sends `request` and reads the whole answer, within the timeout.
    async fn call(
        &self,
        path: &'static str,
        request: Request<Empty<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ImdsError> {
        let exchange = async {
            let response = (self.http.request(request).await)
                .map_err(|source| ImdsError::Http { path, source })?;
            let status = response.status();
            let body = (response.into_body().collect().await)
                .map_err(|source| ImdsError::Body { path, source })?;
            Ok((status, body.to_bytes()))
        };
        let after = self.timeout;
        tokio::time::timeout(after, exchange)
            .await
            .map_err(|_| ImdsError::Timeout { path, after })?
    }
}

/// Queues each distinct notice once per instance the agent runs as (a pool
/// agent's instance changes); an idle pool agent's are only logged.
struct Reporting {
    identity: Arc<Identity>,
    queue: ReportQueue,
    /// (instance, notice) pairs handled; an idle agent's instance is empty.
    seen: HashSet<(String, Notice)>,
}

impl Reporting {
    fn heard(&mut self, notice: Notice) {
        let instance_id = self.identity.instance();
        if !self.seen.insert((instance_id.clone(), notice)) {
            return;
        }
        if instance_id.is_empty() {
            tracing::warn!(
                ?notice,
                "spot notice from EC2, but no instance runs here to report it for"
            );
            return;
        }
        tracing::warn!(%instance_id, ?notice, "spot notice from EC2; reporting it");
        self.queue.of(&instance_id).spot_notice(notice.into());
    }
}

/// Failed polls, warned about at most once per [`WARN_EVERY`] (so an
/// endpoint that is down, or flaps, does not flood the log).
#[derive(Default)]
struct Failures {
    /// Failed polls since IMDS last answered.
    count: u64,
    last_warned: Option<Instant>,
    /// A warning was given since IMDS last answered.
    warned: bool,
}

impl Failures {
    /// Counts a failure at `now`; whether to warn about it.
    fn failed(&mut self, now: Instant) -> bool {
        self.count += 1;
        let warn = self
            .last_warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if warn {
            self.last_warned = Some(now);
            self.warned = true;
        }
        warn
    }

    /// IMDS answered: the polls that had failed, when they were warned about.
    fn answered(&mut self) -> Option<u64> {
        let failed = std::mem::take(&mut self.count);
        std::mem::take(&mut self.warned).then_some(failed)
    }
}

/// Polls IMDS every `poll` and reports what it says.
pub(crate) struct Watcher {
    imds: Imds,
    poll: Duration,
    reporting: Reporting,
    failures: Failures,
}

impl Watcher {
    pub(crate) fn new(
        endpoint: &str,
        poll: Duration,
        identity: Arc<Identity>,
        queue: ReportQueue,
    ) -> Watcher {
        Watcher {
            imds: Imds::new(endpoint),
            poll,
            reporting: Reporting {
                identity,
                queue,
                seen: HashSet::new(),
            },
            failures: Failures::default(),
        }
    }

    /// Polls until cancelled.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(endpoint = %self.imds.endpoint, poll = ?self.poll,
            "watching EC2's instance metadata service for spot notices");
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.poll_once(&mut tick) => {}
            }
        }
    }

    async fn poll_once(&mut self, tick: &mut Interval) {
        tick.tick().await;
        match self.imds.notices().await {
            Ok(notices) => {
                if let Some(failed) = self.failures.answered() {
                    tracing::info!(
                        failed_polls = failed,
                        "the instance metadata service answers again"
                    );
                }
                notices.into_iter().for_each(|n| self.reporting.heard(n));
            }
            Err(e) if self.failures.failed(Instant::now()) => {
                tracing::warn!(
                    failed_polls = self.failures.count,
                    "the instance metadata service failed: {e}; polling on"
                );
            }
            Err(e) => tracing::debug!("the instance metadata service failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use aibro_proto::v1::report_request::Body;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Method, Response};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::link::reporter::Queued;

    /// 2026-12-02T08:22:00Z and 08:20:00Z.
    const AT: u64 = 1_796_199_720_000;
    const NOTICED: u64 = 1_796_199_600_000;
    const TERMINATE: Notice = Notice::Interruption {
        action: Action::Terminate,
        at_ms: AT,
    };
    const REBALANCE_SOON: Notice = Notice::Rebalance {
        noticed_ms: NOTICED,
    };

    #[test]
    fn parses_instance_actions() {
        let body = br#"{"action": "terminate", "time": "2026-12-02T08:22:00Z"}"#;
        assert_eq!(instance_action(body).unwrap(), TERMINATE);
        let body = br#"{"action": "hibernate", "time": "2026-12-02T09:22:00.25+01:00"}"#;
        let hibernate = Notice::Interruption {
            action: Action::Hibernate,
            at_ms: AT + 250,
        };
        assert_eq!(instance_action(body).unwrap(), hibernate);
        for (body, why) in [
            (
                r#"{"action": "reboot", "time": "2026-12-02T08:22:00Z"}"#,
                "action",
            ),
            (r#"{"action": "stop"}"#, "time"),
            ("<html>", "JSON"),
        ] {
            let e = instance_action(body.as_bytes()).unwrap_err();
            assert!(matches!(e, ImdsError::Json { .. }), "{why}: {e}");
        }
        let e = instance_action(br#"{"action": "stop", "time": "soon"}"#).unwrap_err();
        assert!(matches!(e, ImdsError::Time { .. }), "{e}");
    }

    #[test]
    fn parses_rebalance_recommendations() {
        let body = br#"{"noticeTime": "2026-12-02T08:20:00Z"}"#;
        assert_eq!(rebalance(body).unwrap(), REBALANCE_SOON);
        assert!(rebalance(br#"{"noticeTime": "08:20"}"#).is_err());
    }

    #[test]
    fn notices_become_the_reports_the_scheduler_reads() {
        let n = SpotNotice::from(TERMINATE);
        assert_eq!((n.action.as_str(), n.at_ms), ("terminate", AT));
        let n = SpotNotice::from(REBALANCE_SOON);
        assert_eq!((n.action.as_str(), n.at_ms), ("rebalance", 0));
    }

    fn reporting(identity: &Arc<Identity>) -> (Reporting, mpsc::UnboundedReceiver<Queued>) {
        let (queue, rx) = ReportQueue::channel();
        let reporting = Reporting {
            identity: identity.clone(),
            queue,
            seen: HashSet::new(),
        };
        (reporting, rx)
    }

    /// The spot notices queued so far, with their instance.
    fn queued(rx: &mut mpsc::UnboundedReceiver<Queued>) -> Vec<(String, String, u64)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|q| match q.body {
                Body::SpotNotice(n) => (q.instance_id.to_string(), n.action, n.at_ms),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn each_distinct_notice_is_reported_once_per_instance() {
        let identity = Arc::new(Identity::new("a".into(), "m".into(), String::new()));
        let (mut reporting, mut rx) = reporting(&identity);
        // An idle pool agent runs no instance: nothing to report.
        reporting.heard(TERMINATE);
        assert_eq!(queued(&mut rx), []);

        identity.assign("inst-1".into()).unwrap();
        for _ in 0..3 {
            reporting.heard(REBALANCE_SOON);
        }
        let inst1 = |action: &str, at_ms| ("inst-1".to_string(), action.to_string(), at_ms);
        assert_eq!(queued(&mut rx), [inst1("rebalance", 0)]);
        // An interruption after a rebalance recommendation is news.
        reporting.heard(TERMINATE);
        reporting.heard(TERMINATE);
        reporting.heard(REBALANCE_SOON);
        assert_eq!(queued(&mut rx), [inst1("terminate", AT)]);
        // So is a changed one.
        let later = Notice::Interruption {
            action: Action::Terminate,
            at_ms: AT + 60_000,
        };
        reporting.heard(later);
        assert_eq!(queued(&mut rx), [inst1("terminate", AT + 60_000)]);

        // Assigned another instance on the same machine: it hears it too.
        identity.assign("inst-2".into()).unwrap();
        reporting.heard(later);
        reporting.heard(later);
        let inst2 = ("inst-2".to_string(), "terminate".to_string(), AT + 60_000);
        assert_eq!(queued(&mut rx), [inst2]);
    }

    #[test]
    fn failures_are_warned_about_sparingly() {
        let mut failures = Failures::default();
        let t0 = Instant::now();
        assert!(failures.failed(t0), "the first one");
        assert!(!failures.failed(t0 + Duration::from_secs(5)));
        assert!(failures.failed(t0 + WARN_EVERY));
        assert_eq!(failures.answered(), Some(3));
        assert_eq!(failures.answered(), None);
        // Flapping: failures between answers warn no more often.
        assert!(!failures.failed(t0 + WARN_EVERY + Duration::from_secs(5)));
        assert_eq!(failures.answered(), None, "no warning, no recovery news");
        assert!(failures.failed(t0 + WARN_EVERY * 2));
    }

    /// A metadata service on 127.0.0.1: session tokens `t1`, `t2`, … of which
    /// only the latest is taken, and the answers set by path (404 otherwise).
    #[derive(Default)]
    struct Fake {
        /// The latest token's number.
        token: AtomicU32,
        puts: AtomicU32,
        answers: Mutex<HashMap<&'static str, &'static str>>,
    }

    impl Fake {
        async fn serve(self: &Arc<Fake>) -> String {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let fake = self.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let fake = fake.clone();
                    let service = hyper::service::service_fn(move |request| {
                        std::future::ready(Ok::<_, Infallible>(fake.answer(&request)))
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::spawn(connection);
                }
            });
            url
        }

        fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
            let reply = |status: u16, body: String| {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                response
            };
            let path = request.uri().path();
            if request.method() == Method::PUT && path == TOKEN_PATH {
                if !request.headers().contains_key(TOKEN_TTL_HEADER) {
                    return reply(400, String::new());
                }
                self.puts.fetch_add(1, Ordering::SeqCst);
                let n = self.token.fetch_add(1, Ordering::SeqCst) + 1;
                return reply(200, format!("t{n}"));
            }
            let valid = format!("t{}", self.token.load(Ordering::SeqCst));
            if request
                .headers()
                .get(TOKEN_HEADER)
                .is_none_or(|t| t != valid.as_str())
            {
                return reply(401, String::new());
            }
            match self.answers.lock().unwrap().get(path) {
                Some(body) => reply(200, body.to_string()),
                None => reply(404, String::new()),
            }
        }

        /// The token given out last expires.
        fn expire(&self) {
            self.token.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn speaks_imdsv2_and_fetches_an_expired_token_again() {
        let fake = Arc::new(Fake::default());
        let mut imds = Imds::new(&fake.serve().await);
        assert_eq!(imds.notices().await.unwrap(), []);
        fake.answers.lock().unwrap().extend([
            (
                INSTANCE_ACTION,
                r#"{"action": "terminate", "time": "2026-12-02T08:22:00Z"}"#,
            ),
            (REBALANCE, r#"{"noticeTime": "2026-12-02T08:20:00Z"}"#),
        ]);
        assert_eq!(imds.notices().await.unwrap(), [TERMINATE, REBALANCE_SOON]);
        assert_eq!(
            fake.puts.load(Ordering::SeqCst),
            1,
            "one token for all calls"
        );
        fake.expire();
        assert_eq!(imds.notices().await.unwrap(), [TERMINATE, REBALANCE_SOON]);
        assert_eq!(fake.puts.load(Ordering::SeqCst), 2, "fetched again once");
    }

    #[tokio::test]
    async fn an_endpoint_that_does_not_answer_fails_within_the_timeout() {
        // Connections are accepted (by the kernel) and never answered.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut imds = Imds::new(&format!("http://{}/", listener.local_addr().unwrap()));
        imds.timeout = Duration::from_millis(100);
        let e = imds.notices().await.unwrap_err();
        assert!(
            matches!(
                e,
                ImdsError::Timeout {
                    path: TOKEN_PATH,
                    ..
                }
            ),
            "{e}"
        );
        drop(listener);
        let e = imds.notices().await.unwrap_err();
        assert!(matches!(e, ImdsError::Http { .. }), "refused: {e}");
    }
}

//! The agent's connection to the scheduler (`AgentGateway`): Register with backoff,
//! a heartbeat loop, and phase and training progress reports (one queue, so they
//! keep their order) re-sent until acknowledged. Any failure makes
//! the agent register again before sending more. When the scheduler has been
//! unreachable for longer than the orphan timeout the reporter gives up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aibro_proto::v1::agent_gateway_client::AgentGatewayClient;
use aibro_proto::v1::{
    report_request, Hardware, Heartbeat, PhaseReport, Progress, RegisterRequest, ReportRequest,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// A report the scheduler keeps refusing is dropped after this many tries.
const MAX_REPORT_TRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReporterError {
    #[error("invalid --scheduler URL `{url}`: {source}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the join token is not valid in gRPC metadata")]
    Token,
    #[error("the scheduler has been unreachable for {0:?}; exiting (orphaned agent)")]
    Orphaned(Duration),
}

/// Adds `authorization: Bearer <join token>` to every call.
#[derive(Clone)]
pub(crate) struct Auth(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub(crate) type Gateway = AgentGatewayClient<InterceptedService<Channel, Auth>>;

/// A lazily connecting client of the scheduler's AgentGateway.
pub(crate) fn gateway(url: &str, join_token: &str) -> Result<Gateway, ReporterError> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|source| ReporterError::Url {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let auth = if join_token.is_empty() {
        None
    } else {
        Some(
            format!("Bearer {join_token}")
                .parse()
                .map_err(|_| ReporterError::Token)?,
        )
    };
    Ok(AgentGatewayClient::with_interceptor(channel, Auth(auth))
        .max_decoding_message_size(64 << 20))
}

/// Live numbers sent with each heartbeat.
pub(crate) trait Metrics: Send + Sync + 'static {
    fn in_flight(&self) -> u32;
    fn workers_alive(&self) -> u32;
}

/// One queued report: a phase report or a training progress report.
pub(crate) type Queued = report_request::Body;

/// Queues phase and progress reports for the reporter loop, which sends them in
/// the order they were queued.
#[derive(Clone)]
pub(crate) struct Reports(mpsc::UnboundedSender<Queued>);

impl Reports {
    pub(crate) fn channel() -> (Reports, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reports(tx), rx)
    }

    pub(crate) fn send(&self, report: PhaseReport) {
        tracing::info!(job_id = %report.job_id, phase = ?report.phase(), "{}", report.message);
        let _ = self.0.send(report_request::Body::Phase(report));
    }

    pub(crate) fn progress(&self, progress: Progress) {
        tracing::debug!(job_id = %progress.job_id, seq = progress.seq, epoch = progress.epoch,
            stream = %progress.stream, "{}", progress.log_line);
        let _ = self.0.send(report_request::Body::Progress(progress));
    }
}

/// The job a queued report is about (for logs).
fn job_of(body: &Queued) -> &str {
    match body {
        report_request::Body::Phase(p) => &p.job_id,
        report_request::Body::Progress(p) => &p.job_id,
        report_request::Body::Heartbeat(_) => "",
    }
}

pub(crate) struct Reporter {
    pub gateway: Gateway,
    pub instance_id: String,
    pub address: String,
    pub hardware: Hardware,
    pub orphan_timeout: Duration,
    pub metrics: Arc<dyn Metrics>,
}

enum Outcome {
    Cancelled,
    Reregister,
}

impl Reporter {
    /// Runs until cancelled (Ok) or orphaned (Err).
    pub(crate) async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Queued>,
        cancel: CancellationToken,
    ) -> Result<(), ReporterError> {
        let mut pending: VecDeque<(Queued, u32)> = VecDeque::new();
        let mut last_ok = Instant::now();
        loop {
            let Some(interval) = self.register(&cancel, &mut last_ok).await? else {
                return Ok(());
            };
            match self
                .session(interval, &mut reports, &mut pending, &cancel, &mut last_ok)
                .await?
            {
                Outcome::Cancelled => return Ok(()),
                Outcome::Reregister => {}
            }
            // Do not hammer a scheduler that accepts Register but fails the rest.
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    /// Registers, retrying with backoff. None when cancelled.
    async fn register(
        &mut self,
        cancel: &CancellationToken,
        last_ok: &mut Instant,
    ) -> Result<Option<Duration>, ReporterError> {
        let mut backoff = BACKOFF_START;
        loop {
            let req = RegisterRequest {
                instance_id: self.instance_id.clone(),
                address: self.address.clone(),
                hardware: Some(self.hardware.clone()),
            };
            let res = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                r = self.gateway.register(req) => r,
            };
            match res {
                Ok(resp) => {
                    *last_ok = Instant::now();
                    let ms = resp.into_inner().heartbeat_interval_ms.max(50);
                    tracing::info!(instance_id = %self.instance_id, address = %self.address, "registered with the scheduler");
                    return Ok(Some(Duration::from_millis(ms.into())));
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), "register failed: {}", status.message());
                    self.check_orphan(*last_ok)?;
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    fn check_orphan(&self, last_ok: Instant) -> Result<(), ReporterError> {
        let gone = last_ok.elapsed();
        if gone > self.orphan_timeout {
            Err(ReporterError::Orphaned(gone))
        } else {
            Ok(())
        }
    }

    /// Heartbeats and reports until a call fails (re-register) or cancellation.
    async fn session(
        &mut self,
        interval: Duration,
        reports: &mut mpsc::UnboundedReceiver<Queued>,
        pending: &mut VecDeque<(Queued, u32)>,
        cancel: &CancellationToken,
        last_ok: &mut Instant,
    ) -> Result<Outcome, ReporterError> {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Everything queued so far goes out first, in order.
            while let Ok(r) = reports.try_recv() {
                pending.push_back((r, 0));
            }
            while let Some((report, tries)) = pending.front_mut() {
                let req = ReportRequest {
                    instance_id: self.instance_id.clone(),
                    body: Some(report.clone()),
                };
                let res = tokio::select! {
                    _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                    r = self.gateway.report(req) => r,
                };
                match res {
                    Ok(_) => {
                        *last_ok = Instant::now();
                        pending.pop_front();
                    }
                    Err(status) => {
                        *tries += 1;
                        let retry = matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::Cancelled
                                | tonic::Code::Internal
                                | tonic::Code::ResourceExhausted
                        ) || (*tries < MAX_REPORT_TRIES
                            && matches!(
                                status.code(),
                                // Aborted: the job moved on (e.g. a re-sent
                                // report the scheduler already applied).
                                tonic::Code::NotFound
                                    | tonic::Code::Unauthenticated
                                    | tonic::Code::Aborted
                            ));
                        if !retry {
                            tracing::error!(code = ?status.code(), job_id = %job_of(report),
                                "the scheduler refused a report; dropping it: {}", status.message());
                            pending.pop_front();
                            continue;
                        }
                        return self.failed("report", status, *last_ok);
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                r = reports.recv() => {
                    if let Some(r) = r { pending.push_back((r, 0)) }
                }
                _ = tick.tick() => {
                    let gpus = tokio::task::spawn_blocking(crate::hardware::gpus)
                        .await
                        .unwrap_or_default();
                    let req = ReportRequest {
                        instance_id: self.instance_id.clone(),
                        body: Some(report_request::Body::Heartbeat(Heartbeat {
                            in_flight: self.metrics.in_flight(),
                            workers_alive: self.metrics.workers_alive(),
                            gpus,
                        })),
                    };
                    let res = tokio::select! {
                        _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                        r = self.gateway.report(req) => r,
                    };
                    match res {
                        Ok(_) => *last_ok = Instant::now(),
                        Err(status) => return self.failed("heartbeat", status, *last_ok),
                    }
                }
            }
        }
    }

    fn failed(
        &self,
        what: &str,
        status: tonic::Status,
        last_ok: Instant,
    ) -> Result<Outcome, ReporterError> {
        tracing::warn!(code = ?status.code(), "{what} failed: {}; registering again", status.message());
        self.check_orphan(last_ok)?;
        Ok(Outcome::Reregister)
    }
}

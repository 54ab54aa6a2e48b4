//! The agent's connection to the scheduler (`AgentGateway`): Register with backoff,
//! a heartbeat loop, and phase, training progress and spot notice reports (one
//! queue, so they keep their order) re-sent until acknowledged. Any failure makes
//! the agent register again before sending more; so does an Assign, at once, under
//! the new instance (or as an idle pool agent). When the scheduler has been
//! unreachable for longer than the orphan timeout the reporter gives up.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use aibro_proto::v1::{
    report_request, AgentPhase, Hardware, Heartbeat, PhaseReport, Progress, RegisterRequest,
    RegisterResponse, ReportRequest, SpotNotice,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::link::credential::Credential;
use crate::link::gateway::Gateway;
use crate::link::identity::Identity;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// A report the scheduler keeps refusing is dropped after this many tries.
const MAX_REPORT_TRIES: u32 = 5;

/// Why the reporter gave up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReporterError {
    #[error("the scheduler has been unreachable for {0:?}; exiting (orphaned agent)")]
    Orphaned(Duration),
}

/// Live numbers sent with each heartbeat.
pub(crate) trait Metrics: Send + Sync + 'static {
    /// Requests being served or waiting for a worker.
    fn in_flight(&self) -> u32;
    /// Workers serving, or ready to.
    fn workers_alive(&self) -> u32;
    /// Requests waiting for a free worker.
    fn queued(&self) -> u32;
    /// Workers the loaded job should have; 0 when none is loaded.
    fn workers(&self) -> u32;
}

/// One queued report (phase or training progress) and the instance it was
/// produced for.
#[derive(Debug)]
pub(crate) struct Queued {
    pub instance_id: Arc<str>,
    pub body: report_request::Body,
}

/// The sending side of the report queue. Reports go out through [`Reports`]
/// bound to the instance whose work they describe.
#[derive(Clone)]
pub(crate) struct ReportQueue(mpsc::UnboundedSender<Queued>);

impl ReportQueue {
    pub(crate) fn channel() -> (ReportQueue, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ReportQueue(tx), rx)
    }

    /// Reports about work this agent does as `instance_id`.
    pub(crate) fn of(&self, instance_id: &str) -> Reports {
        Reports {
            tx: self.0.clone(),
            instance_id: instance_id.into(),
        }
    }
}

/// Queues phase and progress reports of one instance for the reporter loop, which
/// sends them in the order they were queued.
#[derive(Clone)]
pub(crate) struct Reports {
    tx: mpsc::UnboundedSender<Queued>,
    instance_id: Arc<str>,
}

impl Reports {
    pub(crate) fn send(&self, report: PhaseReport) {
        tracing::info!(job_id = %report.job_id, phase = ?report.phase(), "{}", report.message);
        self.queue(report_request::Body::Phase(report));
    }

    /// A phase report with only a message.
    pub(crate) fn phase(&self, job_id: &str, phase: AgentPhase, message: &str) {
        self.send(PhaseReport {
            job_id: job_id.to_string(),
            phase: phase.into(),
            message: message.to_string(),
            ..PhaseReport::default()
        });
    }

    pub(crate) fn progress(&self, progress: Progress) {
        tracing::debug!(job_id = %progress.job_id, seq = progress.seq, epoch = progress.epoch,
            stream = %progress.stream, "{}", progress.log_line);
        self.queue(report_request::Body::Progress(progress));
    }

    /// What the cloud said of the machine this instance runs on.
    pub(crate) fn spot_notice(&self, notice: SpotNotice) {
        self.queue(report_request::Body::SpotNotice(notice));
    }

    fn queue(&self, body: report_request::Body) {
        let _ = self.tx.send(Queued {
            instance_id: self.instance_id.clone(),
            body,
        });
    }
}

/// The job a queued report is about (for logs).
fn job_of(body: &report_request::Body) -> &str {
    match body {
        report_request::Body::Phase(p) => &p.job_id,
        report_request::Body::Progress(p) => &p.job_id,
        report_request::Body::Heartbeat(_) | report_request::Body::SpotNotice(_) => "",
    }
}

pub(crate) struct Reporter {
    pub gateway: Gateway,
    /// The credential the gateway sends; Register may issue it.
    pub credential: Arc<Credential>,
    /// The agent id and the instance it runs as now.
    pub identity: Arc<Identity>,
    pub address: String,
    /// What Register reports (its GPUs: only this agent's).
    pub hardware: Hardware,
    /// This agent's GPUs: heartbeats report the memory in use of these.
    pub gpus: Vec<u32>,
    pub orphan_timeout: Duration,
    /// The sandbox user code runs in here, as Register reports it.
    pub sandbox: crate::sandbox::Level,
    pub metrics: Arc<dyn Metrics>,
}

enum Outcome {
    Cancelled,
    /// A call failed: register again after a pause.
    Reregister,
    /// Assigned another instance (or back to the idle pool): register again now.
    Assigned,
}

impl Reporter {
    /// Runs until cancelled (Ok) or orphaned (Err).
    pub(crate) async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Queued>,
        cancel: CancellationToken,
    ) -> Result<(), ReporterError> {
        let mut instance = self.identity.subscribe();
        let mut pending: VecDeque<(Queued, u32)> = VecDeque::new();
        let mut last_ok = Instant::now();
        loop {
            let Some((interval, registered_as)) =
                self.register(&mut instance, &cancel, &mut last_ok).await?
            else {
                return Ok(());
            };
            let session = Session {
                interval,
                registered_as,
                instance: &mut instance,
                reports: &mut reports,
                pending: &mut pending,
                last_ok: &mut last_ok,
            };
            match self.session(session, &cancel).await? {
                Outcome::Cancelled => return Ok(()),
                Outcome::Assigned => continue,
                Outcome::Reregister => {}
            }
            // Do not hammer a scheduler that accepts Register but fails the rest.
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    /// Registers as the current instance (an idle pool agent: as none), retrying
    /// with backoff. Returns the heartbeat interval and the instance registered as;
    /// None when cancelled.
    async fn register(
        &mut self,
        instance: &mut watch::Receiver<String>,
        cancel: &CancellationToken,
        last_ok: &mut Instant,
    ) -> Result<Option<(Duration, String)>, ReporterError> {
        let mut backoff = BACKOFF_START;
        loop {
            // Marked seen: a later Assign shows up as a change in the session.
            let instance_id = instance.borrow_and_update().clone();
            let req = RegisterRequest {
                instance_id: instance_id.clone(),
                address: self.address.clone(),
                hardware: Some(self.hardware.clone()),
                agent_id: self.identity.agent_id.clone(),
                machine_id: self.identity.machine_id.clone(),
                sandbox: self.sandbox.name().into(),
            };
            let res = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                r = self.gateway.register(req) => r,
            };
            match res {
                Ok(resp) => {
                    *last_ok = Instant::now();
                    let interval = self.registered(resp.into_inner(), &instance_id);
                    return Ok(Some((interval, instance_id)));
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), "register failed: {}", status.message());
                    // The scheduler no longer runs that instance (closed while
                    // this agent was away) or no longer gives it this agent: a
                    // pool agent goes back to idle. (NOT_FOUND is not that: a
                    // launch assigns the agent just before it records the instance.)
                    let gone = matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
                    );
                    if gone
                        && !instance_id.is_empty()
                        && self.identity.assign(String::new()).is_ok()
                    {
                        tracing::info!(%instance_id, "the instance is gone; back to the idle pool");
                        *last_ok = Instant::now();
                        continue;
                    }
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

    /// Logs the registration, keeps a credential the scheduler issued, and
    /// returns the heartbeat interval.
    fn registered(&self, resp: RegisterResponse, instance_id: &str) -> Duration {
        if !resp.credential.is_empty() {
            match self.credential.adopt(resp.credential) {
                Ok(()) => {
                    tracing::info!("got this agent's credential; the join token is no longer used")
                }
                Err(e) => tracing::error!("{e}; joining again after a restart"),
            }
        }
        if instance_id.is_empty() {
            tracing::info!(agent_id = %self.identity.agent_id, machine_id = %self.identity.machine_id,
                address = %self.address, "joined the scheduler's pool; idle until assigned");
        } else {
            tracing::info!(%instance_id, address = %self.address, "registered with the scheduler");
        }
        Duration::from_millis(resp.heartbeat_interval_ms.max(50).into())
    }

    fn check_orphan(&self, last_ok: Instant) -> Result<(), ReporterError> {
        let gone = last_ok.elapsed();
        if gone > self.orphan_timeout {
            Err(ReporterError::Orphaned(gone))
        } else {
            Ok(())
        }
    }

    /// Heartbeats and reports until a call fails (re-register), the agent is
    /// assigned another instance, or cancellation.
    async fn session(
        &mut self,
        mut s: Session<'_>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, ReporterError> {
        let mut tick = tokio::time::interval(s.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if s.instance.has_changed().unwrap_or(false) {
                return Ok(Outcome::Assigned);
            }
            // Everything queued so far goes out first, in order.
            while let Ok(r) = s.reports.try_recv() {
                s.pending.push_back((r, 0));
            }
            if let ControlFlow::Break(end) = self.send_pending(&mut s, cancel).await? {
                return Ok(end);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(Outcome::Cancelled),
                _ = s.instance.changed() => return Ok(Outcome::Assigned),
                r = s.reports.recv() => {
                    if let Some(r) = r { s.pending.push_back((r, 0)) }
                }
                _ = tick.tick() => {
                    if let ControlFlow::Break(end) = self.send_heartbeat(&mut s, cancel).await? {
                        return Ok(end);
                    }
                }
            }
        }
    }

    /// Sends the pending reports in order; breaks when the session ends.
    async fn send_pending(
        &mut self,
        s: &mut Session<'_>,
        cancel: &CancellationToken,
    ) -> Result<ControlFlow<Outcome>, ReporterError> {
        while let Some((report, tries)) = s.pending.front_mut() {
            // A report goes out only under the instance it was produced for,
            // and only while the agent still runs as that instance. Those of an
            // earlier instance are dropped rather than sent under the new id:
            // the scheduler stops an instance's job before it reassigns the
            // agent, and may meanwhile run that instance on another agent, so
            // they would describe a job that instance no longer has here.
            let stale = {
                let current = s.instance.borrow();
                current.is_empty() || *report.instance_id != *current
            };
            if stale {
                tracing::info!(job_id = %job_of(&report.body), instance_id = %report.instance_id,
                    "dropping a report of an instance this agent no longer runs as");
                s.pending.pop_front();
                continue;
            }
            if *report.instance_id != s.registered_as {
                return Ok(ControlFlow::Break(Outcome::Assigned));
            }
            let req = ReportRequest {
                instance_id: s.registered_as.clone(),
                agent_id: self.identity.agent_id.clone(),
                body: Some(report.body.clone()),
            };
            let res = tokio::select! {
                _ = cancel.cancelled() => return Ok(ControlFlow::Break(Outcome::Cancelled)),
                r = self.gateway.report(req) => r,
            };
            match res {
                Ok(_) => {
                    *s.last_ok = Instant::now();
                    s.pending.pop_front();
                }
                Err(status) => {
                    *tries += 1;
                    if !worth_resending(status.code(), *tries) {
                        tracing::error!(code = ?status.code(), job_id = %job_of(&report.body),
                            "the scheduler refused a report; dropping it: {}", status.message());
                        s.pending.pop_front();
                        continue;
                    }
                    return self
                        .failed("report", status, *s.last_ok)
                        .map(ControlFlow::Break);
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Sends one heartbeat; breaks when the session ends.
    async fn send_heartbeat(
        &mut self,
        s: &mut Session<'_>,
        cancel: &CancellationToken,
    ) -> Result<ControlFlow<Outcome>, ReporterError> {
        let req = ReportRequest {
            instance_id: s.registered_as.clone(),
            agent_id: self.identity.agent_id.clone(),
            body: Some(report_request::Body::Heartbeat(self.heartbeat().await)),
        };
        let res = tokio::select! {
            _ = cancel.cancelled() => return Ok(ControlFlow::Break(Outcome::Cancelled)),
            r = self.gateway.report(req) => r,
        };
        match res {
            Ok(_) => {
                *s.last_ok = Instant::now();
                Ok(ControlFlow::Continue(()))
            }
            Err(status) => self
                .failed("heartbeat", status, *s.last_ok)
                .map(ControlFlow::Break),
        }
    }

    /// The live numbers, and the memory in use of this agent's GPUs.
    async fn heartbeat(&self) -> Heartbeat {
        let gpus = tokio::task::spawn_blocking(crate::hardware::gpus)
            .await
            .unwrap_or_default();
        Heartbeat {
            in_flight: self.metrics.in_flight(),
            workers_alive: self.metrics.workers_alive(),
            gpus: crate::hardware::only(gpus, &self.gpus),
            queued: self.metrics.queued(),
            workers: self.metrics.workers(),
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

/// Whether a report the scheduler failed with `code` on try `tries` is sent
/// again (after registering again) rather than dropped.
fn worth_resending(code: tonic::Code, tries: u32) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Internal
            | tonic::Code::ResourceExhausted
    ) || (tries < MAX_REPORT_TRIES
        && matches!(
            code,
            // Aborted: the job moved on (e.g. a re-sent
            // report the scheduler already applied).
            tonic::Code::NotFound | tonic::Code::Unauthenticated | tonic::Code::Aborted
        ))
}

/// The state one registered session works with.
struct Session<'a> {
    interval: Duration,
    /// The instance registered as; empty for an idle pool agent.
    registered_as: String,
    instance: &'a mut watch::Receiver<String>,
    reports: &'a mut mpsc::UnboundedReceiver<Queued>,
    pending: &'a mut VecDeque<(Queued, u32)>,
    last_ok: &'a mut Instant,
}

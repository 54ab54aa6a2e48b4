//! Proto types at the edge. Outgoing: views and records → `aibro.v1`
//! messages. Incoming: requests and agent reports → the control plane's
//! types (`From`, or `TryFrom` where a value is required and an
//! unspecified or unknown one is an invalid argument).

use aibro_proto::v1 as pb;
use prost_types::Timestamp;

use crate::control::{
    AgentLoad, AgentReport, DeploySpec, FitSpec, InstanceView, JobView, MachineOffer,
    ReportedPhase, SpotNotice, TrainingUpdate, UpdateKind,
};
use crate::error::Error;
use crate::records::{BatchSettings, EventRecord, GpuRecord, HardwareRecord, ProgressRecord};
use crate::state::{InstanceStatus, InstanceSubstatus, JobKind, JobStatus, JobSubstatus, Role};

pub fn timestamp(ms: u64) -> Option<Timestamp> {
    (ms > 0).then(|| Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

pub fn job_status(s: JobStatus) -> pb::JobStatus {
    match s {
        JobStatus::Queuing => pb::JobStatus::Queuing,
        JobStatus::Deployed => pb::JobStatus::Deployed,
        JobStatus::Training => pb::JobStatus::Training,
        JobStatus::Canceled => pb::JobStatus::Canceled,
        JobStatus::Completed => pb::JobStatus::Completed,
    }
}

pub fn job_substatus(s: JobSubstatus) -> pb::JobSubstatus {
    use pb::JobSubstatus as P;
    match s {
        JobSubstatus::RequestingServer => P::RequestingServer,
        JobSubstatus::ConnectingServer => P::ConnectingServer,
        JobSubstatus::GearingUpEnv => P::GearingUpEnv,
        JobSubstatus::DeployingModel => P::DeployingModel,
        JobSubstatus::SendingModelAndData => P::SendingModelAndData,
        JobSubstatus::DeployedModel => P::DeployedModel,
        JobSubstatus::Training => P::Training,
        JobSubstatus::Returning => P::Returning,
        JobSubstatus::Canceled => P::Canceled,
        JobSubstatus::Completed => P::Completed,
    }
}

pub fn instance_status(s: InstanceStatus) -> pb::InstanceStatus {
    match s {
        InstanceStatus::Launching => pb::InstanceStatus::Launching,
        InstanceStatus::Executing => pb::InstanceStatus::Executing,
        InstanceStatus::Cooling => pb::InstanceStatus::Cooling,
        InstanceStatus::Closing => pb::InstanceStatus::Closing,
        InstanceStatus::Closed => pb::InstanceStatus::Closed,
    }
}

pub fn instance_substatus(s: InstanceSubstatus) -> pb::InstanceSubstatus {
    use pb::InstanceSubstatus as P;
    match s {
        InstanceSubstatus::None => P::None,
        InstanceSubstatus::Cooling => P::Cooling,
        InstanceSubstatus::Stopping => P::Stopping,
        InstanceSubstatus::Terminating => P::Terminating,
        InstanceSubstatus::Stopped => P::Stopped,
        InstanceSubstatus::Terminated => P::Terminated,
    }
}

pub fn role(r: Role) -> pb::InstanceRole {
    match r {
        Role::Standby => pb::InstanceRole::Standby,
        Role::Cooling => pb::InstanceRole::Cooling,
        Role::Trainer => pb::InstanceRole::Trainer,
    }
}

fn hardware(h: &HardwareRecord) -> pb::Hardware {
    pb::Hardware {
        cpus: h.cpus,
        memory_bytes: h.memory_bytes,
        hostname: h.hostname.clone(),
        gpus: h.gpus.iter().map(gpu).collect(),
    }
}

fn gpu(g: &GpuRecord) -> pb::Gpu {
    pb::Gpu {
        index: g.index,
        name: g.name.clone(),
        memory_total_bytes: g.memory_total_bytes,
        memory_used_bytes: g.memory_used_bytes,
    }
}

/// An instance as users see it.
pub fn instance(view: &InstanceView) -> pb::Instance {
    let i = &view.record;
    let cost = view.cost.as_ref();
    let load = view.heard.as_ref().map(|h| &h.load);
    pb::Instance {
        in_flight: load.map_or(0, |l| l.in_flight),
        workers_alive: load.map_or(0, |l| l.workers_alive),
        queued: load.map_or(0, |l| l.queued),
        workers: load.map_or(0, |l| l.workers),
        gpus: load
            .map(|l| l.gpus.iter().map(gpu).collect())
            .unwrap_or_default(),
        last_heartbeat_at: view.heard.as_ref().and_then(|h| timestamp(h.at_ms)),
        replaces: i.replaces.clone().unwrap_or_default(),
        reason: i.reason.clone(),
        host: i.host.clone(),
        price_per_hour: cost.map_or(0.0, |c| c.price_per_hour),
        running_ms: cost.map_or(0, |c| c.running_ms),
        cost_usd: cost.map_or(0.0, |c| c.cost_usd),
        instance_id: i.id.clone(),
        job_id: i.job_id.clone(),
        role: role(i.role) as i32,
        machine_id: i.machine_id.clone(),
        status: instance_status(i.state.status) as i32,
        substatus: instance_substatus(i.state.substatus) as i32,
        agent_address: i.agent_address.clone(),
        hardware: i.hardware.as_ref().map(hardware),
        sandbox: i.sandbox.clone(),
        created_at: timestamp(i.created_ms),
        updated_at: timestamp(i.updated_ms),
    }
}

/// A job as users see it.
pub fn job(view: &JobView) -> pb::Job {
    let j = &view.job;
    pb::Job {
        result_digest: j.result_digest.clone(),
        result_size: j.result_size,
        args: j.args.clone().into_iter().collect(),
        cost_usd: view.cost.total_usd,
        always_on_cost_usd: view.cost.always_on_usd,
        job_id: j.id.clone(),
        owner: j.owner.clone(),
        kind: pb::JobKind::from(j.kind) as i32,
        model_name: j.model_name.clone(),
        status: job_status(j.state.status) as i32,
        substatus: job_substatus(j.state.substatus) as i32,
        reason: j.reason.clone(),
        standby_machine: j.standby.clone(),
        cooling_machine: j.cooling.clone().unwrap_or_default(),
        machine_ids: j.machine_ids.clone(),
        artifact_digest: j.artifact_digest.clone(),
        cool_down_period_s: j.cool_down_period_s,
        wait_request_s: j.wait_request_s,
        client_ids: j.client_ids.clone(),
        description: j.description.clone(),
        created_at: timestamp(j.created_ms),
        updated_at: timestamp(j.updated_ms),
        instances: view.instances.iter().map(instance).collect(),
        predict_address: view.predict_address.clone(),
        batching: (j.kind == JobKind::Inference).then(|| (&j.batching).into()),
        isolate_network: j.isolate_network,
        dryrun: j.dryrun,
    }
}

impl From<&BatchSettings> for pb::Batching {
    fn from(b: &BatchSettings) -> pb::Batching {
        pb::Batching {
            max_batch_size: b.max_batch_size,
            max_wait_ms: Some(b.max_wait_ms),
        }
    }
}

impl From<JobKind> for pb::JobKind {
    fn from(k: JobKind) -> pb::JobKind {
        match k {
            JobKind::Inference => pb::JobKind::Inference,
            JobKind::Training => pb::JobKind::Training,
        }
    }
}

/// A machine type on offer, with its live capacity.
pub fn machine(offer: &MachineOffer) -> pb::Machine {
    let t = &offer.kind;
    pb::Machine {
        machine_id: t.name.clone(),
        gpu_type: t.gpu_type.clone(),
        gpu_count: t.gpu_count,
        vcpus: t.vcpus,
        memory_gib: t.memory_gib,
        spot_price_per_hour: t.spot_price,
        on_demand_price_per_hour: t.on_demand_price,
        capacity: offer.capacity,
        available: offer.available,
        spot_availability: offer.spot_availability,
        provider: t.provider.clone(),
    }
}

pub fn event(job_id: &str, e: &EventRecord) -> pb::JobEvent {
    let progress = e.progress.clone().unwrap_or_default();
    pb::JobEvent {
        epoch: progress.epoch,
        total_epochs: progress.total_epochs,
        metrics: progress.metrics.into_iter().collect(),
        job_id: job_id.to_string(),
        seq: e.seq,
        at: timestamp(e.at_ms),
        status: job_status(e.job.status) as i32,
        substatus: job_substatus(e.job.substatus) as i32,
        instance_id: e.instance_id.clone(),
        instance_status: e
            .instance
            .map(|s| instance_status(s.status) as i32)
            .unwrap_or(0),
        instance_substatus: e
            .instance
            .map(|s| instance_substatus(s.substatus) as i32)
            .unwrap_or(0),
        phase: e.phase.clone(),
        message: e.message.clone(),
        last: e.last,
    }
}

/// Phases of the timeline: one per job substatus, from the event that entered
/// it to the one that left it.
pub fn timeline(job_id: &str, events: &[EventRecord]) -> pb::Timeline {
    let mut phases: Vec<pb::Phase> = Vec::new();
    let mut open: Option<(JobSubstatus, u64)> = None;
    let close = |phases: &mut Vec<pb::Phase>, sub: JobSubstatus, start: u64, end: Option<u64>| {
        phases.push(pb::Phase {
            name: sub.name().to_string(),
            started_at: timestamp(start),
            ended_at: end.and_then(timestamp),
            duration_ms: end.map(|e| e.saturating_sub(start)).unwrap_or(0),
            instance_id: String::new(),
        });
    };
    for e in events {
        match open {
            Some((sub, _)) if sub == e.job.substatus => {}
            Some((sub, start)) => {
                close(&mut phases, sub, start, Some(e.at_ms));
                open = Some((e.job.substatus, e.at_ms));
            }
            None => open = Some((e.job.substatus, e.at_ms)),
        }
    }
    if let Some((sub, start)) = open {
        let ended = matches!(sub, JobSubstatus::Canceled | JobSubstatus::Completed);
        close(&mut phases, sub, start, ended.then_some(start));
    }
    pb::Timeline {
        job_id: job_id.to_string(),
        phases,
        events: events.iter().map(|e| event(job_id, e)).collect(),
    }
}

impl From<pb::Gpu> for GpuRecord {
    fn from(g: pb::Gpu) -> GpuRecord {
        GpuRecord {
            index: g.index,
            name: g.name,
            memory_total_bytes: g.memory_total_bytes,
            memory_used_bytes: g.memory_used_bytes,
        }
    }
}

impl From<pb::Hardware> for HardwareRecord {
    fn from(h: pb::Hardware) -> HardwareRecord {
        HardwareRecord {
            cpus: h.cpus,
            memory_bytes: h.memory_bytes,
            hostname: h.hostname,
            gpus: h.gpus.into_iter().map(GpuRecord::from).collect(),
        }
    }
}

impl From<pb::Heartbeat> for AgentLoad {
    fn from(h: pb::Heartbeat) -> AgentLoad {
        AgentLoad {
            in_flight: h.in_flight,
            queued: h.queued,
            workers_alive: h.workers_alive,
            workers: h.workers,
            gpus: h.gpus.into_iter().map(GpuRecord::from).collect(),
        }
    }
}

/// The phase is required: unspecified or unknown phases are refused.
impl TryFrom<pb::PhaseReport> for AgentReport {
    type Error = Error;

    fn try_from(r: pb::PhaseReport) -> Result<AgentReport, Error> {
        let phase = match pb::AgentPhase::try_from(r.phase) {
            Ok(pb::AgentPhase::GearingUpEnv) => ReportedPhase::GearingUpEnv,
            Ok(pb::AgentPhase::ModelLoading) => ReportedPhase::ModelLoading {
                env_cached: r.env_cached,
            },
            Ok(pb::AgentPhase::Serving) => ReportedPhase::Serving,
            Ok(pb::AgentPhase::Training) => ReportedPhase::Training,
            Ok(pb::AgentPhase::Returning) => ReportedPhase::Returning,
            Ok(pb::AgentPhase::Returned) => ReportedPhase::Returned {
                digest: r.result_digest,
                size: r.result_size,
            },
            Ok(pb::AgentPhase::Failed) => ReportedPhase::Failed {
                reason: if r.traceback.is_empty() {
                    r.message.clone()
                } else {
                    r.traceback
                },
            },
            Ok(pb::AgentPhase::Unspecified) => {
                return Err(Error::InvalidArgument("phase is unspecified".into()))
            }
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "phase {} is not an AgentPhase",
                    r.phase
                )))
            }
        };
        Ok(AgentReport {
            job_id: r.job_id,
            phase,
            message: r.message,
        })
    }
}

impl TryFrom<pb::SpotNotice> for SpotNotice {
    type Error = String;

    fn try_from(n: pb::SpotNotice) -> Result<Self, String> {
        match n.action.as_str() {
            "terminate" | "stop" | "hibernate" => Ok(SpotNotice::Interruption { at_ms: n.at_ms }),
            "rebalance" => Ok(SpotNotice::Rebalance),
            other => Err(format!(
                "spot_notice.action `{other}`: expected terminate, stop, hibernate or rebalance"
            )),
        }
    }
}

impl From<pb::Progress> for TrainingUpdate {
    fn from(p: pb::Progress) -> TrainingUpdate {
        let kind = if p.log_line.is_empty() {
            UpdateKind::Progress(ProgressRecord {
                epoch: p.epoch,
                total_epochs: p.total_epochs,
                metrics: p.metrics.into_iter().collect(),
            })
        } else {
            UpdateKind::LogLine(p.log_line)
        };
        TrainingUpdate {
            job_id: p.job_id,
            seq: p.seq,
            kind,
        }
    }
}

impl From<pb::DeployRequest> for DeploySpec {
    fn from(r: pb::DeployRequest) -> DeploySpec {
        let machines = r.machine_config.unwrap_or_default();
        let batching = r.batching.unwrap_or_default();
        DeploySpec {
            model_name: r.model_name,
            standby: machines.standby,
            cooling: machines.cooling,
            artifact_digest: r.artifact_digest,
            dryrun: r.dryrun,
            isolate_network: r.isolate_network,
            cool_down_period_s: r.cool_down_period_s,
            client_ids: r.client_ids,
            description: r.description,
            wait_request_s: r.wait_request_s,
            max_batch_size: batching.max_batch_size,
            max_batch_wait_ms: batching.max_wait_ms,
        }
    }
}

impl From<pb::FitRequest> for FitSpec {
    fn from(r: pb::FitRequest) -> FitSpec {
        FitSpec {
            artifact_digest: r.artifact_digest,
            machine_ids: r.machine_ids,
            cool_down_period_s: r.cool_down_period_s,
            wait_request_s: r.wait_request_s,
            description: r.description,
            args: r.args.into_iter().collect(),
            isolate_network: r.isolate_network,
        }
    }
}

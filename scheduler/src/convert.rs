//! Proto types at the edge: domain and stored records → `aibro.v1` messages.

use aibro_proto::v1 as pb;
use prost_types::Timestamp;

use crate::control::Seen;
use crate::ledger::{InstanceCost, JobCost};
use crate::state::{InstanceStatus, InstanceSubstatus, JobKind, JobStatus, JobSubstatus, Role};
use crate::store::{EventRecord, HardwareRecord, InstanceRecord, JobRecord};

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

pub fn kind(k: JobKind) -> pb::JobKind {
    match k {
        JobKind::Inference => pb::JobKind::Inference,
        JobKind::Training => pb::JobKind::Training,
    }
}

pub fn hardware_from_pb(h: pb::Hardware) -> HardwareRecord {
    HardwareRecord {
        cpus: h.cpus,
        memory_bytes: h.memory_bytes,
        hostname: h.hostname,
        gpus: h
            .gpus
            .into_iter()
            .map(|g| crate::store::GpuRecord {
                index: g.index,
                name: g.name,
                memory_total_bytes: g.memory_total_bytes,
                memory_used_bytes: g.memory_used_bytes,
            })
            .collect(),
    }
}

fn hardware(h: &HardwareRecord) -> pb::Hardware {
    pb::Hardware {
        cpus: h.cpus,
        memory_bytes: h.memory_bytes,
        hostname: h.hostname.clone(),
        gpus: h
            .gpus
            .iter()
            .map(|g| pb::Gpu {
                index: g.index,
                name: g.name.clone(),
                memory_total_bytes: g.memory_total_bytes,
                memory_used_bytes: g.memory_used_bytes,
            })
            .collect(),
    }
}

/// `seen`: what its agent last reported, for a live instance.
pub fn instance(
    i: &InstanceRecord,
    cost: Option<&InstanceCost>,
    seen: Option<Seen>,
) -> pb::Instance {
    let seen = seen.filter(|_| !i.state.is_closed());
    let load = seen.as_ref().map(|s| &s.load);
    pb::Instance {
        in_flight: load.map_or(0, |l| l.in_flight),
        workers_alive: load.map_or(0, |l| l.workers_alive),
        queued: load.map_or(0, |l| l.queued),
        workers: load.map_or(0, |l| l.workers),
        gpus: load.map(|l| l.gpus.clone()).unwrap_or_default(),
        last_heartbeat_at: seen.as_ref().and_then(|s| timestamp(s.at_ms)),
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
        created_at: timestamp(i.created_ms),
        updated_at: timestamp(i.updated_ms),
    }
}

/// `public_url` is the scheduler's address users send predictions to.
/// `seen(id)`: what an instance's agent last reported.
pub fn job(
    j: &JobRecord,
    instances: &[InstanceRecord],
    cost: &JobCost,
    seen: impl Fn(&str) -> Option<Seen>,
    public_url: &str,
) -> pb::Job {
    pb::Job {
        result_digest: j.result_digest.clone(),
        result_size: j.result_size,
        args: j.args.clone().into_iter().collect(),
        cost_usd: cost.total_usd,
        always_on_cost_usd: cost.always_on_usd,
        job_id: j.id.clone(),
        owner: j.owner.clone(),
        kind: kind(j.kind) as i32,
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
        instances: instances
            .iter()
            .map(|i| {
                let cost = cost.instances.iter().find(|c| c.instance_id == i.id);
                instance(i, cost, seen(&i.id))
            })
            .collect(),
        predict_address: predict_address(j, public_url),
        batching: (j.kind == JobKind::Inference).then(|| batching(j)),
    }
}

pub fn batching(j: &JobRecord) -> pb::Batching {
    pb::Batching {
        max_batch_size: j.batching.max_batch_size,
        max_wait_ms: Some(j.batching.max_wait_ms),
    }
}

/// The REST-style address of the original AIbro, on the scheduler's endpoint.
pub fn predict_address(j: &JobRecord, public_url: &str) -> String {
    if j.kind != JobKind::Inference {
        return String::new();
    }
    let client = j.client_ids.first().map(String::as_str).unwrap_or("public");
    format!(
        "{public_url}/v1/{}/{client}/{}/predict",
        j.owner, j.model_name
    )
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

/// "GEARING_UP_ENV" for `JOB_SUBSTATUS_GEARING_UP_ENV`.
pub fn substatus_name(s: JobSubstatus) -> &'static str {
    let name = job_substatus(s).as_str_name();
    name.strip_prefix("JOB_SUBSTATUS_").unwrap_or(name)
}

/// Phases of the timeline: one per job substatus, from the event that entered
/// it to the one that left it.
pub fn timeline(job_id: &str, events: &[EventRecord]) -> pb::Timeline {
    let mut phases: Vec<pb::Phase> = Vec::new();
    let mut open: Option<(JobSubstatus, u64)> = None;
    let close = |phases: &mut Vec<pb::Phase>, sub: JobSubstatus, start: u64, end: Option<u64>| {
        phases.push(pb::Phase {
            name: substatus_name(sub).to_string(),
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

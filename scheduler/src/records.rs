//! What is stored in sled: versioned records, separate from proto types.
//! Encoded as JSON so a data dir can be read with any tool.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{InstanceState, JobKind, JobState, Role};

pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub v: u32,
    pub id: String,
    pub owner: String,
    pub kind: JobKind,
    pub model_name: String,
    pub state: JobState,
    /// Why the job was canceled; may hold a Python traceback.
    pub reason: String,
    pub standby: String,
    pub cooling: Option<String>,
    pub machine_ids: Vec<String>,
    pub artifact_digest: String,
    pub cool_down_period_s: u32,
    pub wait_request_s: u32,
    /// Empty means public.
    pub client_ids: Vec<String>,
    pub description: String,
    pub args: BTreeMap<String, String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Instance ids, in launch order.
    pub instances: Vec<String>,
    /// Sequence number of the last timeline event.
    pub last_seq: u64,
    /// Training: the last progress report applied (agents may re-send).
    #[serde(default)]
    pub progress_seq: u64,
    /// Training: the uploaded outputs, once returned.
    #[serde(default)]
    pub result_digest: String,
    #[serde(default)]
    pub result_size: u64,
    /// Instances this job handed to a later job (warm reuse), with what they
    /// ran for this one.
    #[serde(default)]
    pub handed_over: Vec<HandedOver>,
    /// Inference: dynamic batching, with the defaults applied. Jobs deployed
    /// before batching existed keep serving as they did: off.
    #[serde(default = "BatchSettings::off")]
    pub batching: BatchSettings,
    /// User code gets no outbound network.
    #[serde(default)]
    pub isolate_network: bool,
    /// A dry run: one instance runs the repo once on its sample input, then
    /// the job completes (it never serves, and holds no model name).
    #[serde(default)]
    pub dryrun: bool,
}

/// Dynamic batching of a deployment's predictions (see `Batching` in common.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSettings {
    pub max_batch_size: u32,
    pub max_wait_ms: u32,
}

impl BatchSettings {
    pub fn off() -> BatchSettings {
        BatchSettings {
            max_batch_size: 1,
            max_wait_ms: 0,
        }
    }
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_batch_size: 16,
            max_wait_ms: 2,
        }
    }
}

impl JobRecord {
    /// A new job, QUEUING / REQUESTING_SERVER, with nothing else set yet.
    pub fn queued(
        id: String,
        owner: &str,
        kind: JobKind,
        artifact_digest: String,
        now_ms: u64,
    ) -> Self {
        JobRecord {
            v: RECORD_VERSION,
            id,
            owner: owner.to_string(),
            kind,
            model_name: String::new(),
            state: JobState::QUEUED,
            reason: String::new(),
            standby: String::new(),
            cooling: None,
            machine_ids: vec![],
            artifact_digest,
            cool_down_period_s: 0,
            wait_request_s: 0,
            client_ids: vec![],
            description: String::new(),
            args: BTreeMap::new(),
            created_ms: now_ms,
            updated_ms: now_ms,
            instances: vec![],
            last_seq: 0,
            progress_seq: 0,
            result_digest: String::new(),
            result_size: 0,
            handed_over: vec![],
            batching: BatchSettings::default(),
            isolate_network: false,
            dryrun: false,
        }
    }
}

impl InstanceRecord {
    /// A new instance, LAUNCHING, that has not met its agent yet.
    pub fn launching(id: &str, job_id: &str, role: Role, machine_id: &str, now_ms: u64) -> Self {
        InstanceRecord {
            v: RECORD_VERSION,
            id: id.to_string(),
            job_id: job_id.to_string(),
            role,
            machine_id: machine_id.to_string(),
            state: InstanceState::LAUNCHING,
            agent_address: String::new(),
            hardware: None,
            ready: false,
            running_ms: 0,
            running_since_ms: None,
            created_ms: now_ms,
            updated_ms: 0,
            replaces: None,
            replaced_by: None,
            reason: String::new(),
            host: String::new(),
            sandbox: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandedOver {
    pub instance_id: String,
    pub machine_id: String,
    pub to_job: String,
    pub running_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuRecord {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HardwareRecord {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<GpuRecord>,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub v: u32,
    pub id: String,
    pub job_id: String,
    pub role: Role,
    pub machine_id: String,
    pub state: InstanceState,
    /// host:port of the agent's gRPC service, once it registered.
    pub agent_address: String,
    pub hardware: Option<HardwareRecord>,
    /// Its agent serves, but the instance waits in LAUNCHING for its job to
    /// be DEPLOYED (a cooling instance ready before the standby).
    #[serde(default)]
    pub ready: bool,
    /// Milliseconds it held a machine in earlier runs (closed intervals).
    #[serde(default)]
    pub running_ms: u64,
    /// Since when it holds a machine now (not CLOSED).
    #[serde(default)]
    pub running_since_ms: Option<u64>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// The instance of the same role this one replaces (it closes once this
    /// one serves).
    #[serde(default)]
    pub replaces: Option<String>,
    /// The instance launched to replace this one.
    #[serde(default)]
    pub replaced_by: Option<String>,
    /// Why it was replaced or closed when its job did not ask for it.
    #[serde(default)]
    pub reason: String,
    /// The pool agent that runs it (pool provider only).
    #[serde(default)]
    pub host: String,
    /// The sandbox its agent runs user code in (as the agent registered).
    #[serde(default)]
    pub sandbox: String,
}

/// One entry of a job's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at_ms: u64,
    /// The job's state after this event.
    pub job: JobState,
    pub instance_id: String,
    /// The instance's state after this event, when it concerns one.
    pub instance: Option<InstanceState>,
    /// A timeline mark such as "instance requested" or "env geared up".
    pub phase: String,
    pub message: String,
    /// The job has ended and all its instances settled.
    pub last: bool,
    /// Training progress reported by the user's code.
    #[serde(default)]
    pub progress: Option<ProgressRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressRecord {
    pub epoch: u32,
    pub total_epochs: u32,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub v: u32,
    pub digest: String,
    pub size: u64,
    /// What the archive holds, from its scan at upload.
    pub files: u64,
    pub unpacked_bytes: u64,
    pub has_predict: bool,
    pub has_train: bool,
}

/// A timeline mark that an update adds besides its status changes.
#[derive(Debug, Clone, Default)]
pub struct TimelineNote {
    pub instance_id: String,
    pub phase: String,
    pub message: String,
    pub progress: Option<ProgressRecord>,
}

impl TimelineNote {
    pub fn phase(instance_id: &str, phase: &str) -> Self {
        TimelineNote {
            instance_id: instance_id.to_string(),
            phase: phase.to_string(),
            ..TimelineNote::default()
        }
    }
}

/// What an agent credential speaks for (stored under the credential's sha256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    pub v: u32,
    pub speaks_for: AgentBinding,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentBinding {
    /// The agent a provider launched for this instance.
    Instance(String),
    /// The pool agent with this agent id (and the instances the pool assigns it).
    Pool(String),
}

impl CredentialRecord {
    pub fn instance(instance_id: &str) -> Self {
        CredentialRecord {
            v: RECORD_VERSION,
            speaks_for: AgentBinding::Instance(instance_id.to_string()),
        }
    }

    pub fn pool(agent_id: &str) -> Self {
        CredentialRecord {
            v: RECORD_VERSION,
            speaks_for: AgentBinding::Pool(agent_id.to_string()),
        }
    }
}

/// A pool agent's current credential: the epoch it is derived with, and its
/// sha256 (to revoke it when the agent joins again with the join token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCredentialRecord {
    pub v: u32,
    pub epoch: u64,
    pub hash: String,
}

/// A cloud instance's one-time bootstrap token (stored under its sha256):
/// its agent trades it for the instance's credential at its first Register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRecord {
    pub v: u32,
    pub instance_id: String,
    /// Refused from then on (ms since the Unix epoch).
    pub expires_ms: u64,
}

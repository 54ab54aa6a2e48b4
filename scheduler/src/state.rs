//! The status model of SPEC.md as data and pure functions: job and instance
//! statuses, the seed's map of legal (job, instance) combinations, and the
//! transition functions every change goes through. No I/O.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobKind {
    Inference,
    Training,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    Queuing,
    Deployed,
    Training,
    Canceled,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobSubstatus {
    RequestingServer,
    ConnectingServer,
    GearingUpEnv,
    DeployingModel,
    SendingModelAndData,
    DeployedModel,
    Training,
    Returning,
    Canceled,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceStatus {
    Launching,
    Executing,
    Cooling,
    Closing,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceSubstatus {
    None,
    Cooling,
    Stopping,
    Terminating,
    Stopped,
    Terminated,
}

/// What an instance does for its job. The standby (inference) or the trainer
/// (training) is the job's primary instance: its progress drives the job's
/// substatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Standby,
    Cooling,
    Trainer,
}

impl Role {
    pub fn is_primary(self) -> bool {
        matches!(self, Role::Standby | Role::Trainer)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobState {
    pub status: JobStatus,
    pub substatus: JobSubstatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceState {
    pub status: InstanceStatus,
    pub substatus: InstanceSubstatus,
}

impl JobState {
    pub const fn new(status: JobStatus, substatus: JobSubstatus) -> Self {
        Self { status, substatus }
    }

    pub const QUEUED: JobState = JobState::new(JobStatus::Queuing, JobSubstatus::RequestingServer);

    /// CANCELED or COMPLETED: the job will never change again.
    pub fn is_ended(self) -> bool {
        matches!(self.status, JobStatus::Canceled | JobStatus::Completed)
    }
}

impl InstanceState {
    pub const fn new(status: InstanceStatus, substatus: InstanceSubstatus) -> Self {
        Self { status, substatus }
    }

    pub const LAUNCHING: InstanceState =
        InstanceState::new(InstanceStatus::Launching, InstanceSubstatus::None);
    pub const EXECUTING: InstanceState =
        InstanceState::new(InstanceStatus::Executing, InstanceSubstatus::None);
    pub const COOLING: InstanceState =
        InstanceState::new(InstanceStatus::Cooling, InstanceSubstatus::Cooling);
    pub const STOPPING: InstanceState =
        InstanceState::new(InstanceStatus::Closing, InstanceSubstatus::Stopping);
    pub const TERMINATING: InstanceState =
        InstanceState::new(InstanceStatus::Closing, InstanceSubstatus::Terminating);
    pub const STOPPED: InstanceState =
        InstanceState::new(InstanceStatus::Closed, InstanceSubstatus::Stopped);
    pub const TERMINATED: InstanceState =
        InstanceState::new(InstanceStatus::Closed, InstanceSubstatus::Terminated);

    /// The instance holds no machine any more (CLOSED).
    pub fn is_closed(self) -> bool {
        self.status == InstanceStatus::Closed
    }

    /// Its agent takes requests: EXECUTING, or COOLING (idle, counting down).
    pub fn is_serving(self) -> bool {
        matches!(
            self.status,
            InstanceStatus::Executing | InstanceStatus::Cooling
        )
    }

    /// Nothing more will happen to it unless asked: CLOSED, or COOLING after its job.
    pub fn is_settled(self) -> bool {
        matches!(
            self.status,
            InstanceStatus::Closed | InstanceStatus::Cooling
        )
    }
}

/// A job status with a substatus that does not belong to it, or to the job's kind.
pub fn job_state_valid(kind: JobKind, s: JobState) -> bool {
    use JobStatus as S;
    use JobSubstatus as Sub;
    match (s.status, s.substatus) {
        (S::Queuing, Sub::RequestingServer | Sub::ConnectingServer | Sub::GearingUpEnv) => true,
        (S::Queuing, Sub::DeployingModel) => kind == JobKind::Inference,
        (S::Queuing, Sub::SendingModelAndData) => kind == JobKind::Training,
        (S::Deployed, Sub::DeployedModel) => kind == JobKind::Inference,
        (S::Training, Sub::Training | Sub::Returning) => kind == JobKind::Training,
        (S::Canceled, Sub::Canceled) | (S::Completed, Sub::Completed) => true,
        _ => false,
    }
}

pub fn instance_state_valid(s: InstanceState) -> bool {
    use InstanceStatus as S;
    use InstanceSubstatus as Sub;
    matches!(
        (s.status, s.substatus),
        (S::Launching | S::Executing, Sub::None)
            | (S::Cooling, Sub::Cooling)
            | (S::Closing, Sub::Stopping | Sub::Terminating)
            | (S::Closed, Sub::Stopped | Sub::Terminated)
    )
}

fn role_valid(kind: JobKind, role: Role) -> bool {
    match kind {
        JobKind::Inference => matches!(role, Role::Standby | Role::Cooling),
        JobKind::Training => role == Role::Trainer,
    }
}

/// The seed's status map: may an instance with `role` be in `inst` while its job
/// is in `job`? The cooling instance of a deployed job also stops, wakes, or
/// (failed) is terminated while the job stays DEPLOYED (SPEC.md "Inference jobs").
/// A deployed job's standby may be replaced (spot interruption, lost agent):
/// the replacement launches and the replaced one closes while the job serves,
/// so a standby may be LAUNCHING, EXECUTING, CLOSING or CLOSED then, never
/// COOLING; [`check_job`] keeps one standby LAUNCHING or EXECUTING throughout.
pub fn pair_allowed(kind: JobKind, job: JobState, role: Role, inst: InstanceState) -> bool {
    use InstanceStatus as I;
    if !job_state_valid(kind, job) || !instance_state_valid(inst) || !role_valid(kind, role) {
        return false;
    }
    match job.status {
        JobStatus::Queuing => {
            job.substatus != JobSubstatus::RequestingServer && inst.status == I::Launching
        }
        // The cooling instance comes and goes while the job serves: it stops
        // when idle, wakes on demand, and is terminated if it fails.
        JobStatus::Deployed => match role {
            Role::Cooling => true,
            _ => inst.status != I::Cooling,
        },
        JobStatus::Training => inst.status == I::Executing,
        JobStatus::Canceled | JobStatus::Completed => {
            matches!(inst.status, I::Cooling | I::Closing | I::Closed)
        }
    }
}

/// Why a combination or a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("job cannot go from {from:?} on {event:?}")]
    Job { from: JobState, event: JobEvent },
    #[error("instance cannot go from {from:?} on {event:?}")]
    Instance {
        from: InstanceState,
        event: InstanceEvent,
    },
    #[error("{role:?} instance in {inst:?} is not allowed while the job is {job:?}")]
    Pair {
        job: JobState,
        role: Role,
        inst: InstanceState,
    },
    #[error("job in {job:?} must have an instance")]
    MissingInstance { job: JobState },
}

/// Something that moves a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// The provider fulfilled the request: an instance is launching.
    InstanceLaunched,
    /// The primary agent reports it is gearing up the environment.
    GearingUp,
    /// The primary agent is fetching and loading the model (or the data).
    Loading,
    /// The primary agent serves predictions.
    Serving,
    /// The primary agent started training.
    TrainingStarted,
    /// The primary agent is returning the outputs.
    Returning,
    Cancel,
    Complete,
}

pub fn next_job(kind: JobKind, from: JobState, event: JobEvent) -> Result<JobState, StateError> {
    use JobEvent as E;
    use JobStatus as S;
    use JobSubstatus as Sub;
    let err = Err(StateError::Job { from, event });
    if !job_state_valid(kind, from) {
        return err;
    }
    let to = match (from.status, from.substatus, event) {
        (S::Queuing, Sub::RequestingServer, E::InstanceLaunched) => {
            JobState::new(S::Queuing, Sub::ConnectingServer)
        }
        (S::Queuing, Sub::ConnectingServer, E::GearingUp) => {
            JobState::new(S::Queuing, Sub::GearingUpEnv)
        }
        (S::Queuing, Sub::ConnectingServer | Sub::GearingUpEnv, E::Loading) => match kind {
            JobKind::Inference => JobState::new(S::Queuing, Sub::DeployingModel),
            JobKind::Training => JobState::new(S::Queuing, Sub::SendingModelAndData),
        },
        (S::Queuing, Sub::DeployingModel, E::Serving) if kind == JobKind::Inference => {
            JobState::new(S::Deployed, Sub::DeployedModel)
        }
        (S::Queuing, Sub::SendingModelAndData, E::TrainingStarted) if kind == JobKind::Training => {
            JobState::new(S::Training, Sub::Training)
        }
        (S::Training, Sub::Training, E::Returning) => JobState::new(S::Training, Sub::Returning),
        (S::Training, Sub::Returning, E::Complete) => JobState::new(S::Completed, Sub::Completed),
        (S::Queuing | S::Deployed | S::Training, _, E::Cancel) => {
            JobState::new(S::Canceled, Sub::Canceled)
        }
        (S::Queuing | S::Deployed, _, E::Complete) if kind == JobKind::Inference => {
            JobState::new(S::Completed, Sub::Completed)
        }
        _ => return err,
    };
    debug_assert!(job_state_valid(kind, to));
    Ok(to)
}

/// Something that moves an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceEvent {
    /// Its agent serves (or trains): LAUNCHING → EXECUTING.
    Ready,
    /// No work for a while: EXECUTING → COOLING.
    Idle,
    /// Work again: COOLING → EXECUTING.
    Busy,
    /// Stop the machine but keep its disk.
    Stop,
    /// Give the machine back and remove its disk.
    Terminate,
    /// The provider finished stopping or terminating it.
    Closed,
    /// Start a stopped machine again.
    Start,
    /// A cooling instance is taken by another job (warm reuse).
    Reassign,
}

pub fn next_instance(
    from: InstanceState,
    event: InstanceEvent,
) -> Result<InstanceState, StateError> {
    use InstanceEvent as E;
    use InstanceStatus as S;
    use InstanceSubstatus as Sub;
    if !instance_state_valid(from) {
        return Err(StateError::Instance { from, event });
    }
    let to = match (from.status, from.substatus, event) {
        (S::Launching, _, E::Ready) | (S::Cooling, _, E::Busy) => InstanceState::EXECUTING,
        (S::Executing, _, E::Idle) => InstanceState::COOLING,
        (S::Launching | S::Executing | S::Cooling, _, E::Stop) => InstanceState::STOPPING,
        (S::Launching | S::Executing | S::Cooling, _, E::Terminate)
        | (S::Closing, Sub::Stopping, E::Terminate)
        | (S::Closed, Sub::Stopped, E::Terminate) => InstanceState::TERMINATING,
        (S::Closing, Sub::Stopping, E::Closed) => InstanceState::STOPPED,
        (S::Closing, Sub::Terminating, E::Closed) => InstanceState::TERMINATED,
        (S::Closed, Sub::Stopped, E::Start) | (S::Cooling, _, E::Reassign) => {
            InstanceState::LAUNCHING
        }
        _ => return Err(StateError::Instance { from, event }),
    };
    Ok(to)
}

/// Checks a whole job: every instance pairs legally with the job, and a job
/// past REQUESTING_SERVER that has not ended has its primary instance,
/// LAUNCHING or EXECUTING (a replaced one may be closing beside it).
pub fn check_job(
    kind: JobKind,
    job: JobState,
    instances: &[(Role, InstanceState)],
) -> Result<(), StateError> {
    for &(role, inst) in instances {
        if !pair_allowed(kind, job, role, inst) {
            return Err(StateError::Pair { job, role, inst });
        }
    }
    let needs_primary = !job.is_ended() && job.substatus != JobSubstatus::RequestingServer;
    let has_primary = instances.iter().any(|(role, inst)| {
        role.is_primary()
            && matches!(
                inst.status,
                InstanceStatus::Launching | InstanceStatus::Executing
            )
    });
    if needs_primary && !has_primary {
        return Err(StateError::MissingInstance { job });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

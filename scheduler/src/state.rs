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

impl JobSubstatus {
    /// The SPEC's name: `GEARING_UP_ENV` for `GearingUpEnv`.
    pub fn name(self) -> &'static str {
        match self {
            JobSubstatus::RequestingServer => "REQUESTING_SERVER",
            JobSubstatus::ConnectingServer => "CONNECTING_SERVER",
            JobSubstatus::GearingUpEnv => "GEARING_UP_ENV",
            JobSubstatus::DeployingModel => "DEPLOYING_MODEL",
            JobSubstatus::SendingModelAndData => "SENDING_MODEL_AND_DATA",
            JobSubstatus::DeployedModel => "DEPLOYED_MODEL",
            JobSubstatus::Training => "TRAINING",
            JobSubstatus::Returning => "RETURNING",
            JobSubstatus::Canceled => "CANCELED",
            JobSubstatus::Completed => "COMPLETED",
        }
    }
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
mod tests {
    //! Walks every (kind, job status, job substatus, role, instance status,
    //! instance substatus) combination against the seed's map, written out here
    //! as a table independent of the code under test.

    use super::*;

    const KINDS: [JobKind; 2] = [JobKind::Inference, JobKind::Training];
    const JOB_STATUSES: [JobStatus; 5] = [
        JobStatus::Queuing,
        JobStatus::Deployed,
        JobStatus::Training,
        JobStatus::Canceled,
        JobStatus::Completed,
    ];
    const JOB_SUBSTATUSES: [JobSubstatus; 10] = [
        JobSubstatus::RequestingServer,
        JobSubstatus::ConnectingServer,
        JobSubstatus::GearingUpEnv,
        JobSubstatus::DeployingModel,
        JobSubstatus::SendingModelAndData,
        JobSubstatus::DeployedModel,
        JobSubstatus::Training,
        JobSubstatus::Returning,
        JobSubstatus::Canceled,
        JobSubstatus::Completed,
    ];
    const ROLES: [Role; 3] = [Role::Standby, Role::Cooling, Role::Trainer];
    const INSTANCE_STATUSES: [InstanceStatus; 5] = [
        InstanceStatus::Launching,
        InstanceStatus::Executing,
        InstanceStatus::Cooling,
        InstanceStatus::Closing,
        InstanceStatus::Closed,
    ];
    const INSTANCE_SUBSTATUSES: [InstanceSubstatus; 6] = [
        InstanceSubstatus::None,
        InstanceSubstatus::Cooling,
        InstanceSubstatus::Stopping,
        InstanceSubstatus::Terminating,
        InstanceSubstatus::Stopped,
        InstanceSubstatus::Terminated,
    ];

    fn all_job_states() -> impl Iterator<Item = JobState> {
        JOB_STATUSES.into_iter().flat_map(|s| {
            JOB_SUBSTATUSES
                .into_iter()
                .map(move |sub| JobState::new(s, sub))
        })
    }

    fn all_instance_states() -> impl Iterator<Item = InstanceState> {
        INSTANCE_STATUSES.into_iter().flat_map(|s| {
            INSTANCE_SUBSTATUSES
                .into_iter()
                .map(move |sub| InstanceState::new(s, sub))
        })
    }

    /// The seed's map, row by row ("Job Status | Job Substatus | Instance Status |
    /// Instance Substatus"), plus the DEPLOYED rows SPEC.md adds for the cooling
    /// instance. Names are compared as text so that a mistake in the enums' use in
    /// `pair_allowed` cannot hide here.
    fn seed_allows(kind: JobKind, job: JobState, role: Role, inst: InstanceState) -> bool {
        let k = format!("{kind:?}");
        let r = format!("{role:?}");
        let role_ok = match k.as_str() {
            "Inference" => r == "Standby" || r == "Cooling",
            _ => r == "Trainer",
        };
        let js = format!("{:?}/{:?}", job.status, job.substatus);
        let is = format!("{:?}/{:?}", inst.status, inst.substatus);
        let ended_instance = [
            "Cooling/Cooling",
            "Closing/Stopping",
            "Closing/Terminating",
            "Closed/Stopped",
            "Closed/Terminated",
        ];
        let allowed = match (k.as_str(), js.as_str()) {
            (_, "Queuing/ConnectingServer" | "Queuing/GearingUpEnv") => is == "Launching/None",
            ("Inference", "Queuing/DeployingModel") => is == "Launching/None",
            ("Training", "Queuing/SendingModelAndData") => is == "Launching/None",
            // A standby is replaced (spot interruption, lost agent) while the job serves.
            ("Inference", "Deployed/DeployedModel") if r == "Standby" => [
                "Launching/None",
                "Executing/None",
                "Closing/Stopping",
                "Closed/Stopped",
                "Closing/Terminating",
                "Closed/Terminated",
            ]
            .contains(&is.as_str()),
            ("Inference", "Deployed/DeployedModel") => [
                "Launching/None",
                "Executing/None",
                "Cooling/Cooling",
                "Closing/Stopping",
                "Closed/Stopped",
                "Closing/Terminating",
                "Closed/Terminated",
            ]
            .contains(&is.as_str()),
            ("Training", "Training/Training" | "Training/Returning") => is == "Executing/None",
            (_, "Canceled/Canceled" | "Completed/Completed") => {
                ended_instance.contains(&is.as_str())
            }
            _ => false,
        };
        role_ok && allowed
    }

    #[test]
    fn every_combination_matches_the_seed_map() {
        let mut allowed = 0;
        let mut total = 0;
        for kind in KINDS {
            for job in all_job_states() {
                for role in ROLES {
                    for inst in all_instance_states() {
                        total += 1;
                        let expected = seed_allows(kind, job, role, inst);
                        assert_eq!(
                            pair_allowed(kind, job, role, inst),
                            expected,
                            "{kind:?} {job:?} {role:?} {inst:?}"
                        );
                        allowed += usize::from(expected);
                    }
                }
            }
        }
        assert_eq!(total, 2 * 50 * 3 * 30);
        // Inference: 3 queuing rows x 2 roles + standby 6 + cooling 7 + 2 ended x 5 x 2 roles.
        // Training: 3 queuing + 2 training + 2 ended x 5.
        assert_eq!(allowed, (6 + 6 + 7 + 20) + (3 + 2 + 10));
    }

    #[test]
    fn requesting_server_has_no_instance() {
        for kind in KINDS {
            assert!(check_job(kind, JobState::QUEUED, &[]).is_ok());
            for role in ROLES {
                for inst in all_instance_states() {
                    assert!(check_job(kind, JobState::QUEUED, &[(role, inst)]).is_err());
                }
            }
        }
    }

    #[test]
    fn an_active_job_past_requesting_needs_its_primary_instance() {
        let connecting = JobState::new(JobStatus::Queuing, JobSubstatus::ConnectingServer);
        assert_eq!(
            check_job(JobKind::Inference, connecting, &[]),
            Err(StateError::MissingInstance { job: connecting })
        );
        assert!(check_job(
            JobKind::Inference,
            connecting,
            &[(Role::Cooling, InstanceState::LAUNCHING)]
        )
        .is_err());
        assert!(check_job(
            JobKind::Inference,
            connecting,
            &[(Role::Standby, InstanceState::LAUNCHING)]
        )
        .is_ok());
        let ended = JobState::new(JobStatus::Completed, JobSubstatus::Completed);
        assert!(check_job(JobKind::Inference, ended, &[]).is_ok());
    }

    #[test]
    fn a_deployed_job_keeps_a_live_standby_while_one_is_replaced() {
        let deployed = JobState::new(JobStatus::Deployed, JobSubstatus::DeployedModel);
        let check =
            |insts: &[(Role, InstanceState)]| check_job(JobKind::Inference, deployed, insts);
        // The interrupted standby serves while its replacement launches.
        assert!(check(&[
            (Role::Standby, InstanceState::EXECUTING),
            (Role::Standby, InstanceState::LAUNCHING)
        ])
        .is_ok());
        // A lost one closes while its replacement launches.
        assert!(check(&[
            (Role::Standby, InstanceState::TERMINATING),
            (Role::Standby, InstanceState::LAUNCHING)
        ])
        .is_ok());
        // But never is every standby closing or closed.
        assert!(check(&[
            (Role::Standby, InstanceState::TERMINATED),
            (Role::Standby, InstanceState::STOPPING),
            (Role::Cooling, InstanceState::EXECUTING)
        ])
        .is_err());
        assert!(check(&[(Role::Standby, InstanceState::COOLING)]).is_err());
    }

    /// Every job transition either yields a valid state or is refused; the happy
    /// paths of both kinds walk the substatuses in the seed's order.
    #[test]
    fn job_transitions_walk_the_seed_order() {
        use JobEvent as E;
        let walk = |kind, events: &[E]| {
            let mut s = JobState::QUEUED;
            let mut seen = vec![s.substatus];
            for &e in events {
                s = next_job(kind, s, e).unwrap();
                seen.push(s.substatus);
            }
            seen
        };
        assert_eq!(
            walk(
                JobKind::Inference,
                &[
                    E::InstanceLaunched,
                    E::GearingUp,
                    E::Loading,
                    E::Serving,
                    E::Complete
                ]
            ),
            [
                JobSubstatus::RequestingServer,
                JobSubstatus::ConnectingServer,
                JobSubstatus::GearingUpEnv,
                JobSubstatus::DeployingModel,
                JobSubstatus::DeployedModel,
                JobSubstatus::Completed
            ]
        );
        assert_eq!(
            walk(
                JobKind::Training,
                &[
                    E::InstanceLaunched,
                    E::GearingUp,
                    E::Loading,
                    E::TrainingStarted,
                    E::Returning,
                    E::Complete
                ]
            ),
            [
                JobSubstatus::RequestingServer,
                JobSubstatus::ConnectingServer,
                JobSubstatus::GearingUpEnv,
                JobSubstatus::SendingModelAndData,
                JobSubstatus::Training,
                JobSubstatus::Returning,
                JobSubstatus::Completed
            ]
        );
        let events = [
            E::InstanceLaunched,
            E::GearingUp,
            E::Loading,
            E::Serving,
            E::TrainingStarted,
            E::Returning,
            E::Cancel,
            E::Complete,
        ];
        for kind in KINDS {
            for from in all_job_states() {
                for e in events {
                    match next_job(kind, from, e) {
                        Ok(to) => {
                            assert!(job_state_valid(kind, from), "{kind:?} {from:?} {e:?}");
                            assert!(job_state_valid(kind, to), "{kind:?} {from:?} {e:?}");
                            assert!(!from.is_ended(), "ended jobs never move: {from:?} {e:?}");
                        }
                        Err(err) => assert_eq!(err, StateError::Job { from, event: e }),
                    }
                }
            }
        }
    }

    #[test]
    fn instance_transitions_stay_valid_and_closed_is_final_except_restart() {
        use InstanceEvent as E;
        let events = [
            E::Ready,
            E::Idle,
            E::Busy,
            E::Stop,
            E::Terminate,
            E::Closed,
            E::Start,
        ];
        for from in all_instance_states() {
            for e in events {
                if let Ok(to) = next_instance(from, e) {
                    assert!(instance_state_valid(from), "{from:?} {e:?}");
                    assert!(instance_state_valid(to), "{from:?} {e:?} -> {to:?}");
                    if from == InstanceState::TERMINATED {
                        panic!("a terminated instance moved: {e:?}");
                    }
                }
            }
        }
        let mut s = InstanceState::LAUNCHING;
        for e in [
            E::Ready,
            E::Idle,
            E::Stop,
            E::Closed,
            E::Start,
            E::Ready,
            E::Terminate,
            E::Closed,
        ] {
            s = next_instance(s, e).unwrap();
        }
        assert_eq!(s, InstanceState::TERMINATED);
    }
}

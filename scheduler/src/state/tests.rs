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
        (_, "Canceled/Canceled" | "Completed/Completed") => ended_instance.contains(&is.as_str()),
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
    let check = |insts: &[(Role, InstanceState)]| check_job(JobKind::Inference, deployed, insts);
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

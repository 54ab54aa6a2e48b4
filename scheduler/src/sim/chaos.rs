//! Property test: random sequences of requests, idle stretches (cool-down
//! timers), spot interruptions, machines that die and scheduler crashes
//! (restart on the same store), driven through the real
//! control plane, router, lifecycle and store on tokio's paused clock. After
//! every step has settled: only legal (job, instance) pairs were ever stored,
//! the job still serves, it has exactly one serving standby and at most one
//! cooling instance, and the machines running are exactly the instances the
//! store holds as not closed (none lost, none duplicated). Completing the job
//! then ends every machine.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::state::{InstanceStatus, JobStatus};

#[derive(Debug, Clone)]
enum Op {
    /// A burst of requests.
    Predict(u8),
    /// No requests for a while (the cooling instance may cool down and stop).
    Idle(u16),
    /// The spot market interrupts the role's live instance.
    Interrupt(Role, u8),
    /// The role's live instance's machine dies.
    Lose(Role),
    /// The scheduler crashes and starts again on its store.
    Restart,
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Standby), Just(Role::Cooling)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..8).prop_map(Op::Predict),
        2 => (1u16..400).prop_map(Op::Idle),
        2 => (role(), 1u8..30).prop_map(|(r, s)| Op::Interrupt(r, s)),
        2 => role().prop_map(Op::Lose),
        2 => Just(Op::Restart),
    ]
}

/// How long every step gets to settle: longer than any notice and any boot.
const SETTLE: Duration = Duration::from_secs(90);

fn instances(sim: &Harness) -> Vec<InstanceRecord> {
    let store = sim.control.store();
    let job = store.job(&sim.job_id).unwrap().unwrap();
    store.instances_of(&job).unwrap()
}

/// The newest instance of the role that holds a machine.
fn live(sim: &Harness, role: Role) -> Option<InstanceRecord> {
    instances(sim).into_iter().rev().find(|i| {
        i.role == role && !i.state.is_closed() && i.state.status != InstanceStatus::Closing
    })
}

fn check(sim: &Harness, step: &str) -> Result<(), TestCaseError> {
    let store = sim.control.store();
    let job = store.job(&sim.job_id).unwrap().unwrap();
    let insts = instances(sim);
    // Every stored event paired legally, and so does the job now.
    for e in store.events(&sim.job_id).unwrap() {
        if let Some(state) = e.instance {
            let role = insts.iter().find(|i| i.id == e.instance_id).unwrap().role;
            prop_assert!(
                crate::state::pair_allowed(job.kind, e.job, role, state),
                "{step}: illegal pair stored: {e:?}"
            );
        }
    }
    let pairs: Vec<_> = insts.iter().map(|i| (i.role, i.state)).collect();
    prop_assert!(crate::state::check_job(job.kind, job.state, &pairs).is_ok());
    prop_assert_eq!(
        job.state.status,
        JobStatus::Deployed,
        "{}: {}",
        step,
        job.reason
    );
    let serving_standbys = insts
        .iter()
        .filter(|i| i.role == Role::Standby && i.state == InstanceState::EXECUTING)
        .count();
    prop_assert_eq!(serving_standbys, 1, "{}: {:#?}", step, insts);
    let coolings = insts
        .iter()
        .filter(|i| {
            i.role == Role::Cooling
                && i.state.substatus != crate::state::InstanceSubstatus::Terminated
        })
        .count();
    prop_assert!(coolings <= 1, "{step}: {insts:#?}");
    // No machine lost or duplicated.
    let held: BTreeSet<String> = insts
        .iter()
        .filter(|i| !i.state.is_closed())
        .map(|i| i.id.clone())
        .collect();
    prop_assert_eq!(held, sim.running_machines(), "{}", step);
    Ok(())
}

async fn play(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        standby: "g4dn.4xlarge.od".into(),
        cooling: Some("g4dn.12xlarge.od".into()),
        cool_down_s: 120,
        boot: Duration::from_secs(20),
    };
    let mut sim = Harness::deploy(&options, dir.path()).await.unwrap();
    for (n, op) in ops.iter().enumerate() {
        match op {
            Op::Predict(burst) => {
                for _ in 0..*burst {
                    prop_assert!(sim.predict().await.is_ok(), "step {n} {op:?}");
                }
            }
            Op::Idle(s) => tokio::time::sleep(Duration::from_secs((*s).into())).await,
            Op::Interrupt(role, notice) => {
                if let Some(inst) = live(&sim, *role) {
                    sim.interrupt(&inst.id, Duration::from_secs((*notice).into()));
                }
            }
            Op::Lose(role) => {
                if let Some(inst) = live(&sim, *role) {
                    sim.lose(&inst).await;
                }
            }
            Op::Restart => sim.restart().await.unwrap(),
        }
        tokio::time::sleep(SETTLE).await;
        check(&sim, &format!("after step {n} {op:?}"))?;
        prop_assert!(sim.predict().await.is_ok(), "after step {n} {op:?}");
    }
    sim.complete().await.unwrap();
    prop_assert!(instances(&sim)
        .iter()
        .all(|i| i.state == InstanceState::TERMINATED));
    prop_assert!(sim.running_machines().is_empty());
    sim.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_requests_timers_interruptions_and_deaths_keep_the_fleet_whole(
        ops in proptest::collection::vec(op(), 1..12)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(play(ops))?;
    }
}

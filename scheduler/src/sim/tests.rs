//! The cooling lifecycle's timers on tokio's paused clock, through the real
//! control plane with simulated machines: countdown reset, stop at expiry,
//! wake on request, one wake per burst, complete during wake-up.

use std::time::Duration;

use super::*;
use crate::state::InstanceState;

const COOL_DOWN: u64 = 600;

fn options(boot_s: u64) -> Options {
    Options {
        standby: "g4dn.4xlarge.od".into(),
        cooling: Some("g4dn.12xlarge.od".into()),
        cool_down_s: COOL_DOWN as u32,
        boot: Duration::from_secs(boot_s),
    }
}

/// Every stored event pairs its job and instance states legally (the seed's map).
fn assert_history_legal(sim: &Harness) {
    let store = sim.control.store();
    let job = store.job(&sim.job_id).unwrap().unwrap();
    let instances = store.instances_of(&job).unwrap();
    for e in store.events(&sim.job_id).unwrap() {
        if let Some(state) = e.instance {
            let role = instances
                .iter()
                .find(|i| i.id == e.instance_id)
                .unwrap()
                .role;
            assert!(
                crate::state::pair_allowed(job.kind, e.job, role, state),
                "{e:?}"
            );
        }
    }
}

async fn at(sim: &Harness, s: u64) {
    tokio::time::sleep_until(sim.start + Duration::from_secs(s)).await;
}

fn marks(sim: &Harness, phase: &str) -> usize {
    let events = sim.control.store().events(&sim.job_id).unwrap();
    events.iter().filter(|e| e.phase == phase).count()
}

/// The times (virtual ms since the deploy) at which the cooling instance entered `state`.
fn entered(sim: &Harness, state: InstanceState) -> Vec<u64> {
    let cooling = sim.instance(Role::Cooling).id;
    let events = sim.control.store().events(&sim.job_id).unwrap();
    let created = events[0].at_ms;
    events
        .iter()
        .filter(|e| e.instance_id == cooling && e.instance == Some(state))
        .map(|e| e.at_ms - created)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn stops_at_expiry_showing_cooling_while_idle() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Harness::deploy(&options(0), dir.path()).await.unwrap();
    assert_eq!(sim.predict().await.unwrap().role, Role::Cooling);
    at(&sim, 30).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::EXECUTING);
    at(&sim, 90).await;
    assert_eq!(
        sim.instance(Role::Cooling).state,
        InstanceState::COOLING,
        "idle for 60 s"
    );
    at(&sim, COOL_DOWN - 1).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::COOLING);
    at(&sim, COOL_DOWN + 1).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::STOPPED);
    assert_eq!(entered(&sim, InstanceState::STOPPING), [COOL_DOWN * 1000]);
    assert_eq!(
        sim.instance(Role::Standby).state,
        InstanceState::EXECUTING,
        "the standby never stops"
    );
    assert_history_legal(&sim);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn each_request_restarts_the_countdown() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Harness::deploy(&options(0), dir.path()).await.unwrap();
    at(&sim, 500).await;
    assert_eq!(sim.predict().await.unwrap().role, Role::Cooling);
    assert_eq!(
        sim.instance(Role::Cooling).state,
        InstanceState::COOLING,
        "updated by the lifecycle, not the request"
    );
    at(&sim, 501).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::EXECUTING);
    at(&sim, 1000).await;
    assert!(
        sim.instance(Role::Cooling).state.is_serving(),
        "600 s after the first request, but not the last"
    );
    at(&sim, 500 + COOL_DOWN + 1).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::STOPPED);
    assert_eq!(
        entered(&sim, InstanceState::STOPPING),
        [(500 + COOL_DOWN) * 1000]
    );
    assert_history_legal(&sim);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_request_wakes_the_stopped_instance_once_per_burst() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Harness::deploy(&options(45), dir.path()).await.unwrap();
    at(&sim, 2000).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::STOPPED);
    assert_eq!(
        marks(&sim, "instance woken"),
        0,
        "requests during the first boot do not count"
    );

    // A burst: every request is answered by the standby while the cooling instance wakes.
    let burst = (0..50).map(|_| sim.predict());
    for routed in futures::future::join_all(burst).await {
        assert_eq!(routed.unwrap().role, Role::Standby);
    }
    at(&sim, 2010).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::LAUNCHING);
    assert_eq!(
        sim.predict().await.unwrap().role,
        Role::Standby,
        "the standby serves until it is ready"
    );
    at(&sim, 2050).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::EXECUTING);
    assert_eq!(sim.predict().await.unwrap().role, Role::Cooling);
    assert_eq!(marks(&sim, "instance woken"), 1);
    assert_eq!(
        marks(&sim, "env reused"),
        1,
        "the woken instance kept its environment"
    );
    assert_history_legal(&sim);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn complete_during_wake_up_terminates_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Harness::deploy(&options(120), dir.path()).await.unwrap();
    at(&sim, 2000).await;
    assert_eq!(sim.predict().await.unwrap().role, Role::Standby);
    at(&sim, 2010).await;
    assert_eq!(sim.instance(Role::Cooling).state, InstanceState::LAUNCHING);
    sim.complete().await.unwrap();
    at(&sim, 5000).await;
    for role in [Role::Standby, Role::Cooling] {
        assert_eq!(sim.instance(role).state, InstanceState::TERMINATED);
    }
    assert!(sim.predict().await.is_err(), "no longer served");
    assert_eq!(marks(&sim, "instance woken"), 1);
    assert_eq!(
        marks(&sim, "model loaded"),
        2,
        "the woken agent never got to serve"
    );
    assert_history_legal(&sim);
    sim.shutdown().await;
}

/// The original AIbro case study, from the shipped trace.
#[tokio::test(start_paused = true)]
async fn the_case_study_day_costs_what_aibro_said() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/traces/case-study-day.txt"
    ))
    .unwrap();
    let trace = Trace::parse(&text).unwrap();
    let cents = |v: f64| (v * 100.0).round() as i64;
    let dir = tempfile::tempdir().unwrap();
    let report = run(&trace, &options(0), dir.path()).await.unwrap();
    let od: f64 = report.instances.iter().map(|i| i.on_demand_usd).sum();
    let spot: f64 = report.instances.iter().map(|i| i.spot_usd).sum();
    assert_eq!((cents(od), cents(spot)), (4266, 1542), "{}", report.table());
    assert_eq!(
        (
            cents(report.always_on_on_demand_usd),
            cents(report.always_on_spot_usd)
        ),
        (6256, 2576)
    );
    let cooling = report
        .instances
        .iter()
        .find(|i| i.role == Role::Cooling)
        .unwrap();
    assert_eq!(cooling.running_ms, 6 * 3_600_000);
    assert_eq!(report.unserved, 0);
    assert_eq!(
        report.instances.iter().map(|i| i.requests).sum::<u64>(),
        report.requests
    );

    let dir = tempfile::tempdir().unwrap();
    let standby_only = Options {
        standby: "g4dn.12xlarge.od".into(),
        cooling: None,
        ..options(0)
    };
    let report = run(&trace, &standby_only, dir.path()).await.unwrap();
    let od: f64 = report.instances.iter().map(|i| i.on_demand_usd).sum();
    assert_eq!(cents(od), 6256);
}

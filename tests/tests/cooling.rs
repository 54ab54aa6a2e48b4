//! Standby + cooling with real processes and a short cool-down: the cooling
//! instance serves first, cools down, stops keeping its disk, is woken by the
//! next request (which the standby answers), and serves again without gearing
//! up a second time.

use std::time::Duration;

use aibro_proto::v1::{self as pb, InstanceRole, InstanceStatus, InstanceSubstatus, JobStatus};
use aibro_tests::{example, Scheduler, DEPLOY_DEADLINE};

fn instance_reached(
    e: &pb::JobEvent,
    id: &str,
    status: InstanceStatus,
    sub: InstanceSubstatus,
) -> bool {
    e.instance_id == id && e.instance_status() == status && e.instance_substatus() == sub
}

#[tokio::test]
async fn cooling_instance_cools_down_stops_and_wakes_on_request() -> anyhow::Result<()> {
    let s = Scheduler::start_with(&["--lifecycle-tick-ms", "100"]).await?;
    let token = s.user("dora").await?;
    // A requirements file makes gear-up build a virtualenv (installing nothing).
    let repo = tempfile::tempdir()?;
    for entry in std::fs::read_dir(example("echo"))? {
        let entry = entry?;
        let to = repo.path().join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir(&to)?;
            for f in std::fs::read_dir(entry.path())? {
                let f = f?;
                std::fs::copy(f.path(), to.join(f.file_name()))?;
            }
        } else {
            std::fs::copy(entry.path(), to)?;
        }
    }
    std::fs::write(repo.path().join("requirements.txt"), "--no-index\n")?;
    let digest = s.upload_dir(&token, repo.path()).await?;
    let job_id = s
        .deploy_with_cooling(&token, "cool", &digest, "local.large.od", 2)
        .await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let job = s.get_job(&token, &job_id).await?;
    assert_eq!(job.cooling_machine, "local.large.od");
    let cooling = job
        .instances
        .iter()
        .find(|i| i.role() == InstanceRole::Cooling)
        .expect("a cooling instance")
        .instance_id
        .clone();

    // The cooling instance takes requests once it is ready.
    s.watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| {
        instance_reached(
            e,
            &cooling,
            InstanceStatus::Executing,
            InstanceSubstatus::None,
        )
    })
    .await?;
    for i in 0..5 {
        let r = s
            .predict("dora", "public", "cool", &format!("{{\"i\": {i}}}"))
            .await?;
        assert_eq!(r.role(), InstanceRole::Cooling, "request {i}");
        assert_eq!(r.instance_id, cooling);
    }

    // Idle: COOLING, then stopped with its disk kept.
    let events = s
        .watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| {
            instance_reached(
                e,
                &cooling,
                InstanceStatus::Closed,
                InstanceSubstatus::Stopped,
            )
        })
        .await?;
    let cooling_states: Vec<_> = events
        .iter()
        .filter(|e| e.instance_id == cooling && e.instance_status != 0)
        .map(|e| (e.instance_status(), e.instance_substatus()))
        .collect();
    let tail = &cooling_states[cooling_states.len() - 3..];
    assert_eq!(
        tail,
        [
            (InstanceStatus::Cooling, InstanceSubstatus::Cooling),
            (InstanceStatus::Closing, InstanceSubstatus::Stopping),
            (InstanceStatus::Closed, InstanceSubstatus::Stopped),
        ],
        "{cooling_states:?}"
    );
    assert!(
        s.data_dir
            .join("instances")
            .join(&cooling)
            .join("envs")
            .is_dir(),
        "the disk was kept"
    );
    // The job stays DEPLOYED while its cooling instance stops.
    assert!(events
        .iter()
        .skip_while(|e| e.status() != JobStatus::Deployed)
        .all(|e| e.status() == JobStatus::Deployed));

    // The next request: answered by the standby at once, and it wakes the cooling instance.
    let r = s
        .predict("dora", "public", "cool", r#"{"wake": true}"#)
        .await?;
    assert_eq!(r.role(), InstanceRole::Standby);
    // A burst during wake-up: none fails, all answered by the standby.
    for _ in 0..10 {
        let r = s.predict("dora", "public", "cool", "{}").await?;
        assert_eq!(r.role(), InstanceRole::Standby);
    }
    s.watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| {
        e.seq > events.last().unwrap().seq
            && instance_reached(
                e,
                &cooling,
                InstanceStatus::Executing,
                InstanceSubstatus::None,
            )
    })
    .await?;
    let r = s
        .predict("dora", "public", "cool", r#"{"after": "wake"}"#)
        .await?;
    assert_eq!(r.role(), InstanceRole::Cooling);
    assert_eq!(r.instance_id, cooling, "the same instance came back");

    // Woken once, and it reused its environment instead of gearing up again.
    let timeline = s.timeline(&token, &job_id).await?;
    let marks: Vec<&str> = timeline
        .events
        .iter()
        .filter(|e| e.instance_id == cooling && !e.phase.is_empty())
        .map(|e| e.phase.as_str())
        .collect();
    let woken = marks
        .iter()
        .position(|m| *m == "instance woken")
        .expect("woken mark");
    assert_eq!(
        marks.iter().filter(|m| **m == "instance woken").count(),
        1,
        "{marks:?}"
    );
    assert!(marks[..woken].contains(&"env geared up"), "{marks:?}");
    assert!(marks[woken..].contains(&"env reused"), "{marks:?}");
    assert!(!marks[woken..].contains(&"env geared up"), "{marks:?}");

    // Complete terminates both, and removes their disks.
    s.complete(&token, &job_id).await?;
    let job = s.get_job(&token, &job_id).await?;
    // The ledger: each instance was charged for the time it held a machine.
    let total: f64 = job.instances.iter().map(|i| i.cost_usd).sum();
    assert!(
        (job.cost_usd - total).abs() < 1e-9 && total > 0.0,
        "{job:?}"
    );
    assert!(job.always_on_cost_usd > 0.0);
    for inst in &job.instances {
        let hours = inst.running_ms as f64 / 3_600_000.0;
        assert!(
            (inst.cost_usd - inst.price_per_hour * hours).abs() < 1e-9,
            "{inst:?}"
        );
    }
    let cooling_inst = job
        .instances
        .iter()
        .find(|i| i.role() == InstanceRole::Cooling)
        .unwrap();
    let ms = |t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref().unwrap();
        t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000
    };
    let lifetime = ms(&cooling_inst.updated_at) - ms(&cooling_inst.created_at);
    assert!(
        cooling_inst.running_ms < lifetime,
        "the stopped time was not charged: ran {} of {lifetime} ms",
        cooling_inst.running_ms
    );
    for inst in &job.instances {
        assert_eq!(inst.substatus(), InstanceSubstatus::Terminated);
        assert!(!s
            .data_dir
            .join("instances")
            .join(&inst.instance_id)
            .exists());
    }
    Ok(())
}

/// A cooling instance whose model fails to load (here: only on the large
/// machine) is terminated once the job is DEPLOYED; the standby serves alone.
#[tokio::test]
async fn a_failing_cooling_instance_is_dropped_and_the_standby_serves() -> anyhow::Result<()> {
    let s = Scheduler::start_with(&["--lifecycle-tick-ms", "100"]).await?;
    let token = s.user("kim").await?;
    let repo = aibro_tests::repo(
        "import os\n\
         def load_model():\n    \
             if os.environ.get('AIBRO_MACHINE_ID', '').startswith('local.large'):\n        \
                 raise RuntimeError('this model needs a GPU')\n    \
             return 1\n\
         def run(model, data):\n    return {'ok': model}\n",
    );
    let digest = s.upload_dir(&token, repo.path()).await?;
    let job_id = s
        .deploy_with_cooling(&token, "picky", &digest, "local.large.od", 0)
        .await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let deadline = std::time::Instant::now() + DEPLOY_DEADLINE;
    loop {
        let job = s.get_job(&token, &job_id).await?;
        let cooling = job
            .instances
            .iter()
            .find(|i| i.role() == InstanceRole::Cooling);
        if cooling.is_some_and(|i| i.substatus() == InstanceSubstatus::Terminated) {
            assert_eq!(job.status(), JobStatus::Deployed);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let r = s.predict("kim", "public", "picky", "{}").await?;
        assert_eq!(r.role(), InstanceRole::Standby);
    }
    Ok(())
}

//! Pool agents against the fake scheduler: Assign, registering again, reuse of a
//! stopped job's files, dropped reports of an earlier instance, idle heartbeats.

mod common;

use common::*;

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aibro_proto::v1::{AgentPhase, JobKind, StopRequest};

/// What the scheduler does with a pool agent: assign it (it registers again as the
/// instance and is prepared), stop the instance (Stop, then back to the pool), start
/// it again (the job's unpacked repo and environment are reused), terminate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_agent_is_assigned_stopped_and_started_again() {
    let mut h = Harness::start_with(&["--machine-id", "gpu.small", "--workers", "1"]).await;
    let joined = h.next_register().await;
    assert_eq!(joined.instance_id, "");
    assert_eq!(joined.machine_id, "gpu.small");
    let agent_id = joined.agent_id.clone();
    assert!(agent_id.starts_with("agent-"), "{joined:?}");
    assert_eq!(
        std::fs::read_to_string(h.dir.join("agent-id")).unwrap(),
        agent_id
    );
    let idle = Ids {
        instance_id: String::new(),
        agent_id: agent_id.clone(),
    };
    h.heartbeat_where(|hb, ids| *ids == idle && hb.workers == 0)
        .await;
    let digest = h.add_artifact(&[
        (
            "predict.py",
            // The worker holds a lock on a file in its directory while it lives
            // (its pid is its sandbox's, meaningless here).
            "import fcntl, os\ndef load_model():\n    \
             lock = open('held', 'w')\n    fcntl.flock(lock, fcntl.LOCK_EX)\n    return lock\n\
             def run(model, data):\n    return {'x': data['x'], 'pid': os.getpid()}\n",
        ),
        ("requirements.txt", "--no-index\n"),
    ]);
    let mut c = h.client().await;
    // An idle agent takes no job.
    let e = c
        .prepare(prepare_req("job-1", &digest, JobKind::Inference))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // Launch: assigned, it registers again as the instance.
    c.assign(assign("inst-9")).await.unwrap();
    let req = h.next_register().await;
    assert_eq!(
        (req.instance_id.as_str(), req.agent_id.as_str()),
        ("inst-9", agent_id.as_str())
    );
    let inst = Ids {
        instance_id: "inst-9".into(),
        agent_id: agent_id.clone(),
    };
    c.prepare(prepare_req("job-1", &digest, JobKind::Inference))
        .await
        .unwrap();
    for (phase, cached) in [
        (AgentPhase::GearingUpEnv, false),
        (AgentPhase::ModelLoading, false),
        (AgentPhase::Serving, false),
    ] {
        let (p, ids) = h.next_phase_from().await;
        assert_eq!((p.phase(), p.env_cached), (phase, cached), "{p:?}");
        assert_eq!(ids, inst);
    }
    let out = c
        .predict(predict_req("job-1", serde_json::json!({"x": 1})))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(v["x"], 1);
    assert!(v["pid"].is_u64(), "{v}");
    h.heartbeat_where(|hb, ids| *ids == inst && hb.workers == 1 && hb.workers_alive == 1)
        .await;
    let repo_file = h.dir.join("jobs/job-1/repo/predict.py");
    let unpacked = std::fs::metadata(&repo_file).unwrap().modified().unwrap();

    // Assigning the instance it already runs as changes nothing.
    c.assign(assign("inst-9")).await.unwrap();
    // Stop: the worker has exited when Stop returns; back to the pool.
    c.stop(StopRequest { terminate: false }).await.unwrap();
    assert!(lock_is_free(&h), "the worker survived Stop");
    c.assign(assign("")).await.unwrap();
    // The next registration is the idle one (the no-op Assign sent none).
    let req = h.next_register().await;
    assert_eq!(
        (req.instance_id.as_str(), req.agent_id.as_str()),
        ("", agent_id.as_str())
    );
    h.heartbeat_where(|hb, ids| *ids == idle && hb.workers == 0 && hb.workers_alive == 0)
        .await;
    assert!(repo_file.exists());

    // Start again: nothing is fetched (the artifact is gone from the scheduler) and
    // nothing installed.
    h.artifacts.lock().unwrap().clear();
    c.assign(assign("inst-9")).await.unwrap();
    assert_eq!(h.next_register().await.instance_id, "inst-9");
    c.prepare(prepare_req("job-1", &digest, JobKind::Inference))
        .await
        .unwrap();
    for (phase, cached) in [
        (AgentPhase::ModelLoading, true),
        (AgentPhase::Serving, false),
    ] {
        let (p, ids) = h.next_phase_from().await;
        assert_eq!((p.phase(), p.env_cached), (phase, cached), "{p:?}");
        assert_eq!(ids, inst);
    }
    assert_eq!(
        std::fs::metadata(&repo_file).unwrap().modified().unwrap(),
        unpacked
    );
    let out = c
        .predict(predict_req("job-1", serde_json::json!({"x": 2})))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(v["x"], 2);
    assert!(!lock_is_free(&h), "no new worker holds its lock");

    // Terminate: the job's files go, the environment stays for later jobs.
    c.stop(StopRequest { terminate: true }).await.unwrap();
    c.assign(assign("")).await.unwrap();
    assert_eq!(h.next_register().await.instance_id, "");
    assert!(!h.dir.join("jobs").exists());
    assert!(h.dir.join("envs").is_dir());
    h.stop_agent().await;
}

/// Reports queued for an instance are not sent once the agent runs as another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_an_earlier_instance_are_dropped() {
    let mut h = Harness::start_with(&["--machine-id", "gpu.small", "--workers", "1"]).await;
    assert_eq!(h.next_register().await.instance_id, "");
    let digest = h.add_artifact(&[(
        "predict.py",
        "def load_model():\n    return 0\ndef run(m, d):\n    return d\n",
    )]);
    let mut c = h.client().await;
    c.assign(assign("inst-a")).await.unwrap();
    assert_eq!(h.next_register().await.instance_id, "inst-a");
    // The scheduler becomes unreachable: the job's reports stay queued.
    h.refuse_reports.store(true, Ordering::SeqCst);
    c.prepare(prepare_req("old", &digest, JobKind::Inference))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while c
        .predict(predict_req("old", serde_json::json!(1)))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "job never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reassigned meanwhile (the scheduler's Stop is skipped: the job stays).
    c.assign(assign("inst-b")).await.unwrap();
    loop {
        if h.next_register().await.instance_id == "inst-b" {
            break;
        }
    }
    h.refuse_reports.store(false, Ordering::SeqCst);
    c.prepare(prepare_req("new", &digest, JobKind::Inference))
        .await
        .unwrap();
    // The first report to arrive is the new job's, under the new instance.
    let (p, ids) = h.next_phase_from().await;
    assert_eq!(p.job_id, "new", "{p:?}");
    assert_eq!(ids.instance_id, "inst-b");
    loop {
        let (p, ids) = h.next_phase_from().await;
        assert_eq!(
            (p.job_id.as_str(), ids.instance_id.as_str()),
            ("new", "inst-b")
        );
        if p.phase() == AgentPhase::Serving {
            break;
        }
    }
    h.stop_agent().await;
}

/// An idle pool agent keeps heartbeating, so the orphan timeout never hits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pool_agent_is_not_orphaned() {
    let mut h =
        Harness::start_with(&["--machine-id", "gpu.small", "--orphan-timeout-s", "1"]).await;
    assert_eq!(h.next_register().await.instance_id, "");
    let first = tokio::time::Instant::now();
    // Heartbeats spanning twice the orphan timeout, every one of them idle.
    while first.elapsed() < Duration::from_secs(2) {
        h.heartbeat_where(|_, ids| ids.instance_id.is_empty()).await;
    }
    assert!(!h.agent.is_finished(), "the idle agent exited");
    h.stop_agent().await;
}

/// The lock the job's worker holds while it lives is free.
fn lock_is_free(h: &Harness) -> bool {
    let held = std::fs::File::open(h.dir.join("jobs/job-1/workers/0/held")).unwrap();
    // SAFETY: flock on an open fd; the lock goes with the file.
    unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A pool agent sends the join token only to join: the credential the scheduler
/// gives it is kept (mode 0600) and sent on every later call, also after a restart
/// without the join token; its own service takes calls only with that credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_agent_trades_the_join_token_for_its_credential() {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::start_with(&["--machine-id", "gpu.small"]).await;
    let auths = |h: &mut Harness| h.events.try_recv();
    let first = loop {
        if let Event::Registered(_, auth) = h.next_event().await {
            break auth;
        }
    };
    assert_eq!(first, format!("Bearer {JOIN_TOKEN}"));
    let kept = h.dir.join("credential");
    h.heartbeat_where(|_, _| true).await;
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), CREDENTIAL);
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The service refuses calls without the credential, or with another.
    for credential in ["", JOIN_TOKEN, "agent_other"] {
        let e = h
            .client_with(credential)
            .await
            .assign(assign("inst-1"))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::Unauthenticated,
            "{credential}: {e:?}"
        );
    }
    // Registering again (Assign) goes out with the credential.
    h.client().await.assign(assign("inst-1")).await.unwrap();
    let again = loop {
        if let Ok(Event::Registered(req, auth)) = auths(&mut h) {
            break (req.instance_id, auth);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(again, ("inst-1".into(), format!("Bearer {CREDENTIAL}")));
}

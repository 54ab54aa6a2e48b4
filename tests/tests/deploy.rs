//! Deploy → DEPLOYED → predict (both `run` signatures) → complete, with real
//! scheduler, agent and Python processes on loopback.

use aibro_proto::v1::{self as pb, JobStatus, JobSubstatus};
use aibro_tests::{example, substatuses, Scheduler};

#[tokio::test]
async fn deploy_predict_complete_with_both_run_signatures() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("alice").await?;

    let echo = s.upload_dir(&token, &example("echo")).await?;
    let legacy = s.upload_dir(&token, &example("legacy")).await?;
    let echo_job = s.deploy(&token, "echo", &echo).await?;
    let legacy_job = s.deploy(&token, "legacy", &legacy).await?;

    let events = s
        .wait_status(&token, &echo_job, JobStatus::Deployed)
        .await?;
    assert_eq!(
        substatuses(&events),
        [
            JobSubstatus::RequestingServer,
            JobSubstatus::ConnectingServer,
            JobSubstatus::GearingUpEnv,
            JobSubstatus::DeployingModel,
            JobSubstatus::DeployedModel,
        ]
    );
    s.wait_status(&token, &legacy_job, JobStatus::Deployed)
        .await?;

    // run(model, data): the payload comes back.
    let r = s
        .predict("alice", "public", "echo", r#"{"x": [1, 2, 3]}"#)
        .await?;
    let out: serde_json::Value = serde_json::from_slice(&r.output)?;
    assert_eq!(out["echo"], serde_json::json!({"x": [1, 2, 3]}));
    assert_eq!(r.role(), pb::InstanceRole::Standby);
    assert!(!r.instance_id.is_empty());

    // run(model): the payload is what it reads from data/.
    let r = s
        .predict("alice", "", "legacy", r#"{"data": [10, 20]}"#)
        .await?;
    let out: serde_json::Value = serde_json::from_slice(&r.output)?;
    assert_eq!(out["sum"], serde_json::json!(30));
    assert_eq!(out["data"], serde_json::json!({"data": [10, 20]}));

    // Concurrent legacy requests never see each other's data.
    let mut handles = Vec::new();
    for i in 0..16 {
        let payload = format!(r#"{{"data": [{i}, {i}]}}"#);
        let inference = s.inference(None).await?;
        handles.push(tokio::spawn(async move {
            let mut inference = inference;
            let r = inference
                .predict(pb::PredictRequest {
                    owner: "alice".into(),
                    client_id: "public".into(),
                    model_name: "legacy".into(),
                    payload: payload.into_bytes(),
                    content_type: "application/json".into(),
                })
                .await
                .map(|r| r.into_inner());
            (i, r)
        }));
    }
    for h in handles {
        let (i, r) = h.await?;
        let out: serde_json::Value = serde_json::from_slice(&r?.output)?;
        assert_eq!(out["sum"], serde_json::json!(2 * i));
    }

    // The timeline holds each phase, in order.
    let timeline = s.timeline(&token, &echo_job).await?;
    let names: Vec<_> = timeline.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "REQUESTING_SERVER",
            "CONNECTING_SERVER",
            "GEARING_UP_ENV",
            "DEPLOYING_MODEL",
            "DEPLOYED_MODEL"
        ]
    );
    assert!(timeline.phases[..4].iter().all(|p| p.ended_at.is_some()));
    let marks: Vec<_> = timeline
        .events
        .iter()
        .map(|e| e.phase.as_str())
        .filter(|p| !p.is_empty())
        .collect();
    for mark in [
        "job created",
        "instance requested",
        "agent connected",
        "gearing up env",
        "model loaded",
    ] {
        assert!(marks.contains(&mark), "{mark} missing from {marks:?}");
    }

    // Heartbeats show the agent's workers (2 by default).
    let deadline = std::time::Instant::now() + aibro_tests::DEPLOY_DEADLINE;
    loop {
        let inst = s.get_job(&token, &echo_job).await?.instances.remove(0);
        if inst.last_heartbeat_at.is_some() && inst.workers_alive == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{inst:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Complete: serving stops at once, the instance is terminated, its dir removed.
    let job = s.get_job(&token, &echo_job).await?;
    let instance_id = job.instances[0].instance_id.clone();
    assert_eq!(job.instances[0].status(), pb::InstanceStatus::Executing);
    assert!(job.instances[0]
        .hardware
        .as_ref()
        .is_some_and(|h| h.cpus > 0));
    s.inference(Some(&token))
        .await?
        .complete(pb::CompleteRequest {
            job_id: String::new(),
            model_name: "echo".into(),
        })
        .await?;
    let err = s
        .predict("alice", "public", "echo", "{}")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let events = s
        .watch_until(&token, &echo_job, aibro_tests::DEPLOY_DEADLINE, |e| e.last)
        .await?;
    let last = events.last().unwrap();
    assert_eq!(last.status(), JobStatus::Completed);
    let job = s.get_job(&token, &echo_job).await?;
    assert_eq!(job.instances[0].status(), pb::InstanceStatus::Closed);
    assert_eq!(
        job.instances[0].substatus(),
        pb::InstanceSubstatus::Terminated
    );
    assert!(!s.data_dir.join("instances").join(&instance_id).exists());

    // The other job still serves.
    s.predict("alice", "public", "legacy", r#"{"data": [1]}"#)
        .await?;
    Ok(())
}

/// `--runtime-threads` and `--agent-runtime-threads` size the scheduler's and
/// its agents' async runtimes; a deployment serves with one thread in each.
#[tokio::test]
async fn serves_with_one_runtime_thread_each() -> anyhow::Result<()> {
    let s =
        Scheduler::start_with(&["--runtime-threads", "1", "--agent-runtime-threads", "1"]).await?;
    let token = s.user("alice").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job = s.deploy(&token, "echo", &digest).await?;
    s.wait_status(&token, &job, JobStatus::Deployed).await?;
    let r = s.predict("alice", "public", "echo", r#"{"x": 1}"#).await?;
    let out: serde_json::Value = serde_json::from_slice(&r.output)?;
    assert_eq!(out["echo"]["x"], 1, "{out}");
    for pid in s.live_agents() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let args: Vec<_> = cmdline.split(|b| *b == 0).collect();
        assert!(
            args.windows(2)
                .any(|w| w == [&b"--runtime-threads"[..], &b"1"[..]]),
            "agent {pid} was started without --runtime-threads 1"
        );
    }
    Ok(())
}

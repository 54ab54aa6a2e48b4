//! Serving against the fake scheduler: register, Prepare and its phase reports,
//! Predict and its error codes, Stop, heartbeats, load failures and GPU assignment.

mod common;

use common::*;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use aibro_proto::v1::{
    AgentPhase, AgentPredictRequest, AssignRequest, JobKind, PrepareRequest, StopRequest,
    TrainRequest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_predict_stop() {
    let mut h = Harness::start().await;
    match h.next_event().await {
        Event::Registered(req, auth) => {
            assert_eq!(req.instance_id, "inst-1");
            assert!(req.agent_id.starts_with("agent-"), "{req:?}");
            assert_eq!(
                auth,
                format!("Bearer {CREDENTIAL}"),
                "the handed-over credential"
            );
            assert_eq!(format!("http://{}", req.address), h.agent_url);
            assert!(req.hardware.unwrap().cpus >= 1);
        }
        other => panic!("expected Register, got {other:?}"),
    }
    let digest = h.add_artifact(&[
        (
            "predict.py",
            "import json\ndef load_model():\n    print('loading')\n    return 3\n\
             def run(model):\n    return {'y': json.load(open('data/in.json'))['x'] * model}\n",
        ),
        ("data/in.json", r#"{"x": 1}"#),
        ("requirements.txt", "# nothing to install\n"),
    ]);
    let mut c = h.client().await;

    // Only pool agents can be assigned.
    let e = c
        .assign(AssignRequest {
            instance_id: "inst-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("inst-1"), "{e:?}");

    // Unknown job.
    let e = c
        .predict(AgentPredictRequest {
            job_id: "job-1".into(),
            payload: b"{}".to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    c.prepare(PrepareRequest {
        job_id: "job-1".into(),
        artifact_digest: digest.clone(),
        kind: JobKind::Inference.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let phases = [
        AgentPhase::GearingUpEnv,
        AgentPhase::ModelLoading,
        AgentPhase::Serving,
    ];
    for want in phases {
        let p = h.next_phase().await;
        assert_eq!(p.job_id, "job-1");
        assert_eq!(p.phase(), want, "{p:?}");
    }
    let out = c
        .predict(AgentPredictRequest {
            job_id: "job-1".into(),
            payload: br#"{"x": 14}"#.to_vec(),
            content_type: "application/json".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.content_type, "application/json");
    let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(v, serde_json::json!({"y": 42}));

    // Heartbeats report both workers.
    loop {
        if let Event::Heartbeat(hb, _) = h.next_event().await {
            if hb.workers_alive == 2 && hb.workers == 2 && hb.queued == 0 {
                break;
            }
        }
    }

    // An inference job cannot train.
    let e = c
        .train(TrainRequest {
            job_id: "job-1".into(),
            args: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("TRAINING"), "{e:?}");

    // A repo without train.py cannot be prepared for training.
    c.prepare(PrepareRequest {
        job_id: "job-2".into(),
        artifact_digest: digest,
        kind: JobKind::Training.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = loop {
        let p = h.next_phase().await;
        assert_eq!(p.job_id, "job-2");
        if p.phase() == AgentPhase::Failed {
            break p;
        }
        assert_ne!(p.phase(), AgentPhase::Serving, "{p:?}");
    };
    assert!(
        p.message.contains("train.py") && p.message.contains("train(output_dir, **args)"),
        "{p:?}"
    );

    c.stop(StopRequest { terminate: true }).await.unwrap();
    assert!(!h.dir.join("jobs").exists());
    let e = c
        .predict(AgentPredictRequest {
            job_id: "job-1".into(),
            payload: b"{}".to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_load_reports_traceback() {
    let mut h = Harness::start().await;
    let digest = h.add_artifact(&[(
        "predict.py",
        "def load_model():\n    raise RuntimeError('no weights here')\ndef run(m, d):\n    pass\n",
    )]);
    let mut c = h.client().await;
    c.prepare(PrepareRequest {
        job_id: "bad".into(),
        artifact_digest: digest,
        kind: JobKind::Inference.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = loop {
        let p = h.next_phase().await;
        if p.phase() == AgentPhase::Failed {
            break p;
        }
        assert_ne!(p.phase(), AgentPhase::Serving);
    };
    assert!(
        p.traceback.contains("RuntimeError: no weights here"),
        "{p:?}"
    );
    let e = c
        .predict(AgentPredictRequest {
            job_id: "bad".into(),
            payload: b"{}".to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    // A missing artifact fails too, with the scheduler's reason.
    c.prepare(PrepareRequest {
        job_id: "missing".into(),
        artifact_digest: "sha256:00".into(),
        kind: JobKind::Inference.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = loop {
        let p = h.next_phase().await;
        if p.phase() == AgentPhase::Failed {
            break p;
        }
    };
    assert!(p.traceback.contains("no such artifact"), "{p:?}");
    h.stop_agent().await;
}

/// `--gpus 0,1` with two workers: each worker sees one GPU through
/// CUDA_VISIBLE_DEVICES; heartbeats count the requests waiting for a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_are_spread_over_the_workers() {
    let mut h =
        Harness::start_with(&["--instance-id", "inst-g", "--workers", "2", "--gpus", "0,1"]).await;
    let req = h.next_register().await;
    // Only detected GPUs are reported, and only those named by --gpus.
    let reported = req.hardware.unwrap().gpus;
    assert!(reported.iter().all(|g| g.index <= 1), "{reported:?}");
    let digest = h.add_artifact(&[(
        "predict.py",
        // Each worker names itself by its directory and holds a lock there
        // while it lives (pids are its sandbox's, meaningless here).
        "import fcntl, os, time\nme = os.path.basename(os.getcwd())\n\
         def load_model():\n    \
         lock = open('held', 'w')\n    fcntl.flock(lock, fcntl.LOCK_EX)\n    return lock\n\
         def run(model, data):\n    \
         open(os.path.join(data['dir'], 'started-' + me), 'w').close()\n    \
         deadline = time.time() + 60\n    \
         while not os.path.exists(os.path.join(data['dir'], 'release')) and time.time() < deadline:\n        \
         time.sleep(0.01)\n    \
         return {'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), 'worker': me}\n",
    )]);
    let mut c = h.client().await;
    c.prepare(prepare_req("g", &digest, JobKind::Inference))
        .await
        .unwrap();
    loop {
        if h.next_phase().await.phase() == AgentPhase::Serving {
            break;
        }
    }
    // In the workers' HOME: the one place outside their own dirs they all write.
    let sync = h.dir.join("jobs/g/home/sync");
    std::fs::create_dir_all(&sync).unwrap();
    let call = |c: &Client| {
        let mut c = c.clone();
        let req = predict_req("g", serde_json::json!({ "dir": sync }));
        tokio::spawn(async move { c.predict(req).await })
    };
    let busy = [call(&c), call(&c)];
    // Both requests run at once: one on each worker.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&sync).unwrap().count() < 2 {
        assert!(std::time::Instant::now() < deadline, "workers never busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = call(&c);
    h.heartbeat_where(|hb, _| {
        (hb.in_flight, hb.queued, hb.workers, hb.workers_alive) == (3, 1, 2, 2)
    })
    .await;
    std::fs::write(sync.join("release"), "").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut workers = std::collections::BTreeSet::new();
    for r in busy.into_iter().chain([waiting]) {
        let out = r.await.unwrap().unwrap().into_inner();
        let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
        seen.insert(v["cuda"].as_str().unwrap().to_string());
        workers.insert(v["worker"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["0".to_string(), "1".to_string()].into());
    assert_eq!(workers.len(), 2);
    h.heartbeat_where(|hb, _| hb.in_flight == 0 && hb.queued == 0)
        .await;
    // Stop returns once the workers (and so their GPU memory) are gone.
    c.stop(StopRequest { terminate: false }).await.unwrap();
    for w in workers {
        let held = std::fs::File::open(h.dir.join("jobs/g/workers").join(&w).join("held")).unwrap();
        // SAFETY: flock on an open fd.
        let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "worker {w} survived Stop");
    }
    h.stop_agent().await;
}

/// An agent started as an instance reads its credential from the handed-over
/// file (and deletes it); its service refuses calls without that credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_wants_the_agents_credential() {
    let mut h = Harness::start().await;
    h.next_register().await;
    assert!(
        !h._tmp.path().join("credential-handed-over").exists(),
        "the handed-over file is deleted once read"
    );
    for credential in [
        "",
        "join-secret",
        "agent_fake-credentia",
        "agent_fake-credential0",
    ] {
        let mut c = h.client_with(credential).await;
        let e = c.stop(StopRequest { terminate: false }).await.unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::Unauthenticated,
            "{credential}: {e:?}"
        );
        let e = c
            .predict(predict_req("job-1", serde_json::json!({})))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::Unauthenticated,
            "{credential}: {e:?}"
        );
    }
    h.client()
        .await
        .stop(StopRequest { terminate: false })
        .await
        .unwrap();
}

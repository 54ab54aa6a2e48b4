//! A Python worker killed with -9 while its agent serves: the agent restarts
//! it, a request that hit it gets a clear retryable error (UNAVAILABLE), the
//! job stays DEPLOYED, and the heartbeats show the worker back.

use std::time::{Duration, Instant};

use aibro_proto::v1::JobStatus;
use aibro_tests::{Scheduler, DEPLOY_DEADLINE};

/// Pids of the processes whose command line mentions `needle`, below `parent`.
fn children_matching(parent: i32, needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let mut stack = vec![parent];
    while let Some(pid) = stack.pop() {
        // Children hang off the thread that started them.
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        let children: String = tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .collect::<Vec<_>>()
            .join(" ");
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(child);
            }
            stack.push(child);
        }
    }
    found
}

#[tokio::test]
async fn a_killed_worker_is_restarted_and_its_request_is_retryable() -> anyhow::Result<()> {
    // It finds and kills a worker by its pid on this host: no sandbox
    // (whose processes wrap each worker) between them.
    let s = Scheduler::start_with(&["--heartbeat-ms", "200", "--agent-sandbox", "none"]).await?;
    let token = s.user("wanda").await?;
    // run() is slow enough that a request is in flight when its worker dies.
    let repo = aibro_tests::repo(
        "import time\n\
         def load_model():\n    return None\n\
         def run(model, data):\n    time.sleep(data.get('sleep', 0))\n    return data\n",
    );
    let digest = s.upload_dir(&token, repo.path()).await?;
    let job_id = s.deploy(&token, "sturdy", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let agent = s.live_agents()[0];
    let workers = children_matching(agent, "worker.py");
    assert_eq!(workers.len(), 2, "two workers: {workers:?}");

    // Both workers busy, then one is killed under its request.
    let slow = |i: u32| {
        let endpoint = s.endpoint();
        tokio::spawn(async move {
            let mut client =
                aibro_proto::v1::inference_client::InferenceClient::connect(endpoint).await?;
            let r = client
                .predict(aibro_proto::v1::PredictRequest {
                    owner: "wanda".into(),
                    client_id: "public".into(),
                    model_name: "sturdy".into(),
                    payload: format!("{{\"sleep\": 2, \"i\": {i}}}").into_bytes(),
                    content_type: "application/json".into(),
                })
                .await;
            anyhow::Ok(r)
        })
    };
    let calls = [slow(0), slow(1)];
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    while s.get_job(&token, &job_id).await?.instances[0].in_flight < 2 {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the workers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(workers[0], libc::SIGKILL) };
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await??);
    }
    let failed: Vec<&tonic::Status> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed.len(), 1, "{outcomes:?}");
    assert_eq!(
        failed[0].code(),
        tonic::Code::Unavailable,
        "{:?}",
        failed[0]
    );
    assert!(
        failed[0].message().contains("can be retried"),
        "{}",
        failed[0].message()
    );

    // The worker is back: two alive again, and requests succeed.
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    loop {
        let inst = s.get_job(&token, &job_id).await?.instances[0].clone();
        let alive = children_matching(agent, "worker.py");
        if inst.workers_alive == 2 && alive.len() == 2 && !alive.contains(&workers[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker was not restarted: {inst:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..4 {
        s.predict("wanda", "public", "sturdy", &format!("{{\"i\": {i}}}"))
            .await?;
    }
    assert_eq!(
        s.get_job(&token, &job_id).await?.status(),
        JobStatus::Deployed
    );
    Ok(())
}

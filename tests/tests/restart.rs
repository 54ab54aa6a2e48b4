//! Restarting the scheduler process on the same data dir keeps every job as it
//! was, and deployed models answer again (their agents kept running).

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{example, Scheduler};

/// The caller's jobs, with what changes with the clock set aside: the cost
/// accrued so far by running instances (returned separately) and the agents'
/// last heartbeats.
async fn snapshot(s: &Scheduler, token: &str) -> anyhow::Result<(Vec<pb::Job>, f64)> {
    let mut jobs = s
        .jobs(Some(token))
        .await?
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    let mut accrued = 0.0;
    for job in &mut jobs {
        if job.status() == JobStatus::Deployed {
            accrued += job.cost_usd;
            (job.cost_usd, job.always_on_cost_usd) = (0.0, 0.0);
            for inst in &mut job.instances {
                (inst.cost_usd, inst.running_ms) = (0.0, 0);
                // What the agent last reported is live, not stored.
                (inst.in_flight, inst.workers_alive, inst.last_heartbeat_at) = (0, 0, None);
                (inst.queued, inst.workers, inst.gpus) = (0, 0, vec![]);
            }
        }
    }
    Ok((jobs, accrued))
}

async fn restart_keeps_jobs(crash: bool) -> anyhow::Result<()> {
    let mut s = Scheduler::start().await?;
    let token = s.user("alice").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let served = s.deploy(&token, "served", &digest).await?;
    let done = s.deploy(&token, "done", &digest).await?;
    s.wait_status(&token, &served, JobStatus::Deployed).await?;
    s.wait_status(&token, &done, JobStatus::Deployed).await?;
    s.complete(&token, &done).await?;
    let (before, cost_before) = snapshot(&s, &token).await?;
    assert_eq!(before.len(), 2);

    if crash {
        s.kill9();
    } else {
        s.stop()?;
    }
    s.spawn().await?;

    let (after, cost_after) = snapshot(&s, &token).await?;
    assert_eq!(before, after, "jobs changed across the restart");
    assert!(
        cost_after > cost_before,
        "the running standby kept accruing"
    );
    let r = s
        .predict("alice", "public", "served", r#"{"again": true}"#)
        .await?;
    let out: serde_json::Value = serde_json::from_slice(&r.output)?;
    assert_eq!(out["echo"], serde_json::json!({"again": true}));
    // The old token and the same admin token still work.
    assert_eq!(
        std::fs::read_to_string(s.data_dir.join("admin-token"))?,
        s.admin_token
    );
    Ok(())
}

#[tokio::test]
async fn graceful_restart_keeps_every_job() -> anyhow::Result<()> {
    restart_keeps_jobs(false).await
}

#[tokio::test]
async fn kill9_restart_keeps_every_job() -> anyhow::Result<()> {
    restart_keeps_jobs(true).await
}

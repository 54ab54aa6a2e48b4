//! A test-sized soak on loopback: many users deploy, predict concurrently and
//! complete, round after round. Nothing fails but what is expected, nothing
//! is left running or on disk, and the scheduler's memory stays flat once
//! warm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aibro_proto::v1::JobStatus;
use aibro_tests::{example, Scheduler};
use anyhow::Result;

const USERS: usize = 4;
const ROUNDS: usize = 3;
const REQUESTS: usize = 40;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One user's round: deploy, `REQUESTS` concurrent predictions, complete.
async fn round(s: &Scheduler, user: &str, token: &str, digest: &str, n: usize) -> Result<u64> {
    let model = format!("soak-{n}");
    let job_id = s.deploy(token, &model, digest).await?;
    s.wait_status(token, &job_id, JobStatus::Deployed).await?;
    let calls = (0..REQUESTS).map(|i| {
        let (user, model) = (user.to_string(), model.clone());
        async move {
            s.predict(&user, "public", &model, &format!("{{\"i\": {i}}}"))
                .await
        }
    });
    let served = futures::future::join_all(calls).await;
    let failed: Vec<_> = served.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{user} round {n}: {failed:?}");
    // A completed model is gone for its callers: that error is the expected one.
    s.complete(token, &job_id).await?;
    let gone = s.predict(user, "public", &model, "{}").await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    Ok(served.len() as u64)
}

#[tokio::test]
async fn users_deploy_predict_and_complete_round_after_round() -> Result<()> {
    let s = Scheduler::start().await?;
    let pid = s.child.as_ref().unwrap().id();
    let mut users = Vec::new();
    for u in 0..USERS {
        let name = format!("soaker{u}");
        let token = s.user(&name).await?;
        let digest = s.upload_dir(&token, &example("echo")).await?;
        users.push((name, token, digest));
    }
    let served = Arc::new(AtomicU64::new(0));
    let mut warm_rss = 0;
    for n in 0..ROUNDS {
        let rounds = users
            .iter()
            .map(|(name, token, digest)| round(&s, name, token, digest, n));
        for r in futures::future::join_all(rounds).await {
            served.fetch_add(r?, Ordering::Relaxed);
        }
        if n == 0 {
            warm_rss = rss_kib(pid);
        }
    }
    let end_rss = rss_kib(pid);
    eprintln!(
        "soak: {} requests served, {} deploys; scheduler RSS {warm_rss} KiB after round 1, {end_rss} KiB at the end",
        served.load(Ordering::Relaxed),
        USERS * ROUNDS
    );
    assert_eq!(
        served.load(Ordering::Relaxed),
        (USERS * ROUNDS * REQUESTS) as u64
    );
    assert!(
        end_rss < warm_rss + warm_rss / 2,
        "memory grew from {warm_rss} to {end_rss} KiB"
    );
    assert!(s.live_agents().is_empty(), "agents left running");
    let dirs = std::fs::read_dir(s.data_dir.join("instances"))?.count();
    assert_eq!(dirs, 0, "instance directories left");
    Ok(())
}

//! Crash anywhere, lose nothing: the scheduler aborts (as kill -9 would) at
//! each crash point of a deployment's life (deploy, launch, agent reports,
//! cool-down, wake-up, complete), is started again on the same data dir, and
//! then: every acknowledged job is there, the job reaches its end state,
//! predictions answer while it is deployed, each role has one instance (none
//! launched twice), and once it is complete no agent process, instance
//! directory or capacity is left behind.

use std::time::{Duration, Instant};

use aibro_proto::v1::{self as pb, InstanceRole, InstanceStatus, JobStatus};
use aibro_tests::{example, Scheduler, DEPLOY_DEADLINE};
use anyhow::{bail, Result};

const ARGS: [&str; 4] = ["--lifecycle-tick-ms", "100", "--heartbeat-ms", "200"];

/// Whether the process has exited (a zombie until it is reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn instance(job: &pb::Job, role: InstanceRole) -> Option<&pb::Instance> {
    job.instances.iter().rev().find(|i| i.role() == role)
}

/// A deployment's whole life: deploy with a cooling instance, predict, let
/// the cooling instance cool down and stop, wake it, complete. Returns the
/// acknowledged job id as soon as Deploy answered, through `acked`.
async fn life(s: &Scheduler, token: &str, digest: &str, acked: &mut Option<String>) -> Result<()> {
    let job_id = s
        .deploy_with_cooling(token, "phoenix", digest, "local.large.od", 2)
        .await?;
    *acked = Some(job_id.clone());
    let serving = |job: &pb::Job| {
        [InstanceRole::Standby, InstanceRole::Cooling]
            .iter()
            .all(|r| instance(job, *r).is_some_and(|i| i.status() == InstanceStatus::Executing))
    };
    wait_job(s, token, &job_id, "both serving", serving).await?;
    s.predict("cat", "public", "phoenix", "{}").await?;
    wait_job(s, token, &job_id, "the cooling instance stopped", |job| {
        instance(job, InstanceRole::Cooling).is_some_and(|i| i.status() == InstanceStatus::Closed)
    })
    .await?;
    s.predict("cat", "public", "phoenix", "{}").await?;
    wait_job(s, token, &job_id, "both serving again", serving).await?;
    s.complete(token, &job_id).await?;
    Ok(())
}

async fn wait_job(
    s: &Scheduler,
    token: &str,
    job_id: &str,
    what: &str,
    done: impl Fn(&pb::Job) -> bool,
) -> Result<pb::Job> {
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    loop {
        let job = s.get_job(token, job_id).await?;
        if done(&job) {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen: {job:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whose life a crash interrupts.
#[derive(Clone, Copy)]
enum Scenario {
    Deployment,
    Fit,
}

/// Runs the scenario on a scheduler that crashes at `point`, starts it again
/// on the same data dir, and returns it with the user's token and jobs
/// (checked to hold the acknowledged one, and no other).
async fn crash_then_restart(
    point: &str,
    scenario: Scenario,
) -> Result<(Scheduler, String, Vec<pb::Job>)> {
    let mut s = Scheduler::start_crashing_at(point, &ARGS).await?;
    let (user, repo) = match scenario {
        Scenario::Deployment => ("cat", "echo"),
        Scenario::Fit => ("fox", "train-linear"),
    };
    let token = s.user(user).await?;
    let digest = s.upload_dir(&token, &example(repo)).await?;
    let pid = s.child.as_ref().unwrap().id();
    let mut acked = None;
    let crashed = async {
        while !exited(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let run = async {
        match scenario {
            Scenario::Deployment => life(&s, &token, &digest, &mut acked).await,
            Scenario::Fit => fit_life(&s, &token, &digest, &mut acked).await,
        }
    };
    tokio::select! {
        // Calls fail once it is gone; only the crash matters.
        _ = run => {}
        _ = crashed => {}
    }
    s.wait_exit().await?;
    s.spawn().await?;

    let jobs = s
        .jobs(Some(&token))
        .await?
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    if let Some(acked) = &acked {
        assert!(
            jobs.iter().any(|j| &j.job_id == acked),
            "{point}: acknowledged job lost"
        );
    }
    assert!(jobs.len() <= 1, "{point}: {jobs:#?}");
    Ok((s, token, jobs))
}

/// No agent process and no instance directory is left.
async fn assert_nothing_left(s: &Scheduler, point: &str) {
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    while !s.live_agents().is_empty() {
        assert!(Instant::now() < deadline, "{point}: agents left running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dirs: Vec<_> = std::fs::read_dir(s.data_dir.join("instances"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "{point}: instance dirs left: {dirs:?}");
}

async fn crash_at(point: &str) -> Result<()> {
    let (s, token, jobs) = crash_then_restart(point, Scenario::Deployment).await?;
    for job in jobs {
        if job.status() != JobStatus::Completed {
            // It goes on to serve, then is completed.
            wait_job(&s, &token, &job.job_id, "DEPLOYED again", |j| {
                j.status() == JobStatus::Deployed
                    && instance(j, InstanceRole::Standby)
                        .is_some_and(|i| i.status() == InstanceStatus::Executing)
            })
            .await
            .map_err(|e| anyhow::anyhow!("{point}: {e}"))?;
            s.predict("cat", "public", "phoenix", "{}").await?;
            s.complete(&token, &job.job_id).await?;
        }
        let job = wait_job(&s, &token, &job.job_id, "every instance closed", |j| {
            j.instances
                .iter()
                .all(|i| i.substatus() == pb::InstanceSubstatus::Terminated)
        })
        .await?;
        for role in [InstanceRole::Standby, InstanceRole::Cooling] {
            let n = job.instances.iter().filter(|i| i.role() == role).count();
            assert!(
                n <= 1,
                "{point}: {n} {role:?} instances: {:#?}",
                job.instances
            );
        }
    }
    assert_nothing_left(&s, point).await;
    for (machine, capacity) in [("local.small", 8), ("local.large", 4)] {
        let m = s.machine(&token, machine).await?;
        assert_eq!(m.available, capacity, "{point}: {machine} capacity leaked");
    }
    Ok(())
}

#[tokio::test]
async fn crashes_while_deploying_lose_nothing() -> Result<()> {
    for point in [
        "deploy.created",
        "launch.provisioned",
        "launch.recorded",
        "report.applied",
    ] {
        crash_at(point).await?;
    }
    Ok(())
}

#[tokio::test]
async fn crashes_while_cooling_waking_and_completing_lose_nothing() -> Result<()> {
    for point in [
        "close.marked",
        "close.provider_done",
        "wake.marked",
        "complete.recorded",
    ] {
        crash_at(point).await?;
    }
    Ok(())
}

/// A training job's life: Fit, train, return the outputs (the trainer is
/// terminated after), download them.
async fn fit_life(
    s: &Scheduler,
    token: &str,
    digest: &str,
    acked: &mut Option<String>,
) -> Result<()> {
    let job_id = s
        .training(Some(token))
        .await?
        .fit(pb::FitRequest {
            artifact_digest: digest.into(),
            machine_ids: vec!["local.small.od".into()],
            args: [("epochs".to_string(), "2".to_string())].into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job_id;
    *acked = Some(job_id.clone());
    wait_job(s, token, &job_id, "COMPLETED", |j| {
        j.status() == JobStatus::Completed
    })
    .await?;
    Ok(())
}

async fn fit_crash_at(point: &str) -> Result<()> {
    let (s, token, jobs) = crash_then_restart(point, Scenario::Fit).await?;
    for job in jobs {
        let job = wait_job(&s, &token, &job.job_id, "completed and closed", |j| {
            j.status() == JobStatus::Completed
                && j.instances
                    .iter()
                    .all(|i| i.substatus() == pb::InstanceSubstatus::Terminated)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{point}: {e}"))?;
        assert!(job.result_size > 0, "{point}: no result");
        let n = job.instances.len();
        assert_eq!(n, 1, "{point}: {n} trainers: {:#?}", job.instances);
    }
    assert_nothing_left(&s, point).await;
    Ok(())
}

#[tokio::test]
async fn crashes_while_training_lose_nothing() -> Result<()> {
    for point in ["fit.created", "report.applied", "train.returned"] {
        fit_crash_at(point).await?;
    }
    Ok(())
}

/// The walks above cover every crash point the scheduler has.
#[test]
fn every_crash_point_is_walked() {
    let walked = [
        "deploy.created",
        "fit.created",
        "launch.provisioned",
        "launch.recorded",
        "report.applied",
        "close.marked",
        "close.provider_done",
        "wake.marked",
        "complete.recorded",
        "train.returned",
    ];
    assert_eq!(walked, aibro_scheduler::crash::POINTS);
}

//! An agent that dies (kill -9) stops sending heartbeats: after the grace
//! period its job is canceled with a reason that says so, and the instance is
//! closed through the ordinary path (nothing left running).

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{example, Scheduler, DEPLOY_DEADLINE};

#[tokio::test]
async fn a_killed_agent_is_detected_and_its_job_canceled() -> anyhow::Result<()> {
    let s =
        Scheduler::start_with(&["--heartbeat-ms", "200", "--agent-lost-after-ms", "1500"]).await?;
    let token = s.user("ivan").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job_id = s.deploy(&token, "fragile", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let instance_id = s.get_job(&token, &job_id).await?.instances[0]
        .instance_id
        .clone();
    let pid: i32 = std::fs::read_to_string(
        s.data_dir
            .join("instances")
            .join(&instance_id)
            .join("agent.pid"),
    )?
    .trim()
    .parse()?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    let events = s
        .watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;
    assert_eq!(events.last().unwrap().status(), JobStatus::Canceled);
    let job = s.get_job(&token, &job_id).await?;
    assert!(job.reason.contains("sent no heartbeat"), "{}", job.reason);
    assert_eq!(
        job.instances[0].substatus(),
        pb::InstanceSubstatus::Terminated
    );
    assert!(s.live_agents().is_empty());
    Ok(())
}

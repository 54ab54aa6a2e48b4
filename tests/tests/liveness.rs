//! An agent that dies (kill -9) stops sending heartbeats: after the grace
//! period it is taken as lost through the ordinary transition path. A
//! deployed job's lost instance is terminated and its role replaced, and the
//! job serves again from the replacement; a job still queuing is canceled.

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{example, serving_replacement_of, Scheduler, DEPLOY_DEADLINE};

fn kill_agent(s: &Scheduler, instance_id: &str) -> anyhow::Result<()> {
    let pid: i32 = std::fs::read_to_string(
        s.data_dir
            .join("instances")
            .join(instance_id)
            .join("agent.pid"),
    )?
    .trim()
    .parse()?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    Ok(())
}

#[tokio::test]
async fn a_killed_agent_is_detected_and_its_role_replaced() -> anyhow::Result<()> {
    let s =
        Scheduler::start_with(&["--heartbeat-ms", "200", "--agent-lost-after-ms", "1500"]).await?;
    let token = s.user("ivan").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job_id = s.deploy(&token, "fragile", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let lost = s.get_job(&token, &job_id).await?.instances[0]
        .instance_id
        .clone();
    kill_agent(&s, &lost)?;

    let job = s
        .wait_instances(&token, &job_id, "the replacement", |insts| {
            serving_replacement_of(insts, &lost).is_some()
                && insts.iter().any(|i| {
                    i.instance_id == lost && i.substatus() == pb::InstanceSubstatus::Terminated
                })
        })
        .await?;
    assert_eq!(job.status(), JobStatus::Deployed, "{}", job.reason);
    let old = job
        .instances
        .iter()
        .find(|i| i.instance_id == lost)
        .unwrap();
    assert!(old.reason.contains("sent no heartbeat"), "{}", old.reason);
    let r = s.predict("ivan", "public", "fragile", "{}").await?;
    assert_ne!(r.instance_id, lost);
    s.complete(&token, &job_id).await?;
    assert!(s.live_agents().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_killed_agent_cancels_a_job_still_queuing() -> anyhow::Result<()> {
    let s =
        Scheduler::start_with(&["--heartbeat-ms", "200", "--agent-lost-after-ms", "1500"]).await?;
    let token = s.user("iris").await?;
    // load_model() blocks until its file appears: the job stays QUEUING.
    let repo = aibro_tests::repo(
        "import os, time\n\
         def load_model():\n    \
             while not os.path.exists('never'):\n        time.sleep(0.05)\n\
         def run(model, data):\n    return data\n",
    );
    let digest = s.upload_dir(&token, repo.path()).await?;
    let job_id = s.deploy(&token, "stuck", &digest).await?;
    s.watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| {
        e.substatus() == pb::JobSubstatus::DeployingModel
    })
    .await?;
    let inst = s.get_job(&token, &job_id).await?.instances[0]
        .instance_id
        .clone();
    kill_agent(&s, &inst)?;
    let events = s
        .watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;
    assert_eq!(events.last().unwrap().status(), JobStatus::Canceled);
    let job = s.get_job(&token, &job_id).await?;
    assert!(job.reason.contains("sent no heartbeat"), "{}", job.reason);
    assert!(s.live_agents().is_empty());
    Ok(())
}

//! The pool provider with agents started by hand, as on GPU hosts: they join
//! as idle machines of a catalog type, are assigned by launches, keep their
//! environment and the unpacked repo across stop/start, and are wiped and
//! freed on terminate. The marketplace counts the agents that joined.

use std::time::{Duration, Instant};

use aibro_proto::v1::{self as pb, InstanceRole, InstanceStatus, InstanceSubstatus, JobStatus};
use aibro_tests::{
    host_agent, pool_scheduler, serving_replacement_of, wait_pool, Scheduler, DEPLOY_DEADLINE,
};
use anyhow::{bail, Result};

/// A deploy of `digest` on pool.cpu (standby, and cooling when asked).
fn pool_request(model_name: &str, digest: &str, cooling: bool) -> pb::DeployRequest {
    let mut request = aibro_tests::deploy_request(model_name, digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: "pool.cpu.od".into(),
        cooling: if cooling {
            "pool.cpu.od".into()
        } else {
            String::new()
        },
    });
    request
}

async fn wait_instance(
    s: &Scheduler,
    token: &str,
    job_id: &str,
    id: &str,
    status: InstanceStatus,
) -> Result<pb::Instance> {
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    loop {
        let job = s.get_job(token, job_id).await?;
        let inst = job.instances.iter().find(|i| i.instance_id == id).unwrap();
        if inst.status() == status {
            return Ok(inst.clone());
        }
        if Instant::now() > deadline {
            bail!("{id} is {:?}, not {status:?}", inst.status());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pool_agents_join_are_assigned_keep_their_disk_and_are_freed() -> Result<()> {
    let (s, _catalog) = pool_scheduler(&["--lifecycle-tick-ms", "100"]).await?;
    let token = s.user("olga").await?;
    let hosts = tempfile::tempdir()?;
    let host_dirs = [hosts.path().join("a"), hosts.path().join("b")];
    let _agents = host_dirs
        .iter()
        .map(|d| host_agent(&s, d, "pool.cpu"))
        .collect::<Result<Vec<_>>>()?;
    wait_pool(&s, &token, (2, 2)).await?;

    // A requirements file makes gear-up build a virtualenv (installing nothing).
    let repo = aibro_tests::repo(
        "def load_model():\n    return None\n\ndef run(model, data):\n    return data\n",
    );
    std::fs::write(repo.path().join("requirements.txt"), "--no-index\n")?;
    let digest = s.upload_dir(&token, repo.path()).await?;
    let mut request = pool_request("pooled", &digest, true);
    request.cool_down_period_s = 2;
    let job_id = s.deploy_with(&token, request).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let job = s
        .wait_instances(&token, &job_id, "both instances serving", |insts| {
            insts.len() == 2
                && insts
                    .iter()
                    .all(|i| i.status() == InstanceStatus::Executing)
        })
        .await?;
    let cooling = job
        .instances
        .iter()
        .find(|i| i.role() == InstanceRole::Cooling)
        .unwrap()
        .clone();
    let hosts_used: Vec<&str> = job.instances.iter().map(|i| i.host.as_str()).collect();
    assert!(
        hosts_used.iter().all(|h| h.starts_with("agent-")),
        "{hosts_used:?}"
    );
    assert_ne!(hosts_used[0], hosts_used[1], "one agent per instance");
    wait_pool(&s, &token, (2, 0)).await?;
    s.predict("olga", "public", "pooled", "{}").await?;

    // Idle: the cooling instance stops; its agent keeps the job's files and
    // stays reserved for it (not free for other launches).
    wait_instance(
        &s,
        &token,
        &job_id,
        &cooling.instance_id,
        InstanceStatus::Closed,
    )
    .await?;
    wait_pool(&s, &token, (2, 0)).await?;
    let cooling_dir = host_dirs
        .iter()
        .find(|d| {
            std::fs::read_to_string(d.join("agent-id")).ok().as_deref()
                == Some(cooling.host.as_str())
        })
        .expect("the cooling host's dir");
    assert!(
        cooling_dir.join("jobs").join(&job_id).is_dir(),
        "the repo was kept"
    );

    // The next request wakes it on the same agent, without gearing up again.
    let r = s.predict("olga", "public", "pooled", "{}").await?;
    assert_eq!(r.role(), InstanceRole::Standby);
    let woken = wait_instance(
        &s,
        &token,
        &job_id,
        &cooling.instance_id,
        InstanceStatus::Executing,
    )
    .await?;
    assert_eq!(woken.host, cooling.host);
    let timeline = s.timeline(&token, &job_id).await?;
    let env_marks: Vec<&str> = timeline
        .events
        .iter()
        .filter(|e| e.instance_id == cooling.instance_id && e.phase.starts_with("env "))
        .map(|e| e.phase.as_str())
        .collect();
    assert_eq!(env_marks.last(), Some(&"env reused"), "{env_marks:?}");

    // It idles again and stops: completing the job must wipe the parked
    // host too. Both are terminated, their job files gone, both agents free.
    wait_instance(
        &s,
        &token,
        &job_id,
        &cooling.instance_id,
        InstanceStatus::Closed,
    )
    .await?;
    s.complete(&token, &job_id).await?;
    let job = s.get_job(&token, &job_id).await?;
    assert!(job
        .instances
        .iter()
        .all(|i| i.substatus() == InstanceSubstatus::Terminated));
    wait_pool(&s, &token, (2, 2)).await?;
    for d in &host_dirs {
        assert!(
            !d.join("jobs").join(&job_id).exists(),
            "{} still has the job",
            d.display()
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_agent_of_an_unknown_pool_type_is_refused() -> Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("pia").await?;
    let dir = tempfile::tempdir()?;
    let mut agent = host_agent(&s, &dir.path().join("h"), "local.small")?;
    // It keeps trying to register and is refused each time; the reason is logged.
    let log = dir.path().join("h.log");
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    while !std::fs::read_to_string(&log)?.contains("not a pool machine type") {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log)?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.kill().await?;
    let small = s.machine(&token, "local.small").await?;
    assert_eq!(small.capacity, 8, "a refused agent adds nothing");
    Ok(())
}

#[tokio::test]
async fn a_pool_host_that_restarts_gets_its_role_back() -> Result<()> {
    let (s, _catalog) = pool_scheduler(&["--agent-lost-after-ms", "1500"]).await?;
    let token = s.user("otto").await?;
    let hosts = tempfile::tempdir()?;
    let host = hosts.path().join("only");
    let mut agent = host_agent(&s, &host, "pool.cpu")?;
    wait_pool(&s, &token, (1, 1)).await?;
    let digest = s.upload_dir(&token, &aibro_tests::example("echo")).await?;
    let job_id = s
        .deploy_with(&token, pool_request("phoenix", &digest, false))
        .await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let first = s.get_job(&token, &job_id).await?.instances[0].clone();

    // The host's agent dies and systemd starts it again: it comes back idle,
    // the instance it ran is taken as lost and replaced on the same host.
    agent.kill().await?;
    let _agent = host_agent(&s, &host, "pool.cpu")?;
    let job = s
        .wait_instances(&token, &job_id, "the replacement", |insts| {
            serving_replacement_of(insts, &first.instance_id).is_some()
        })
        .await?;
    assert_eq!(job.status(), JobStatus::Deployed, "{}", job.reason);
    let replacement = job
        .instances
        .iter()
        .find(|i| i.replaces == first.instance_id)
        .unwrap();
    assert_eq!(
        replacement.host, first.host,
        "the same host, known by its agent id"
    );
    let r = s.predict("otto", "public", "phoenix", "{}").await?;
    assert_eq!(r.instance_id, replacement.instance_id);
    s.complete(&token, &job_id).await?;
    wait_pool(&s, &token, (1, 1)).await?;
    Ok(())
}

#[tokio::test]
async fn a_lost_host_with_no_other_to_take_its_role_cancels_the_job() -> Result<()> {
    let (s, _catalog) = pool_scheduler(&["--agent-lost-after-ms", "1500"]).await?;
    let token = s.user("vera").await?;
    let hosts = tempfile::tempdir()?;
    let mut agent = host_agent(&s, &hosts.path().join("only"), "pool.cpu")?;
    wait_pool(&s, &token, (1, 1)).await?;
    let digest = s.upload_dir(&token, &aibro_tests::example("echo")).await?;
    let mut request = pool_request("orphan", &digest, false);
    request.wait_request_s = 2;
    let job_id = s.deploy_with(&token, request).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;

    // The only host dies for good: the replacement finds no machine within
    // wait_request_s, and the job ends with a reason instead of waiting forever.
    agent.kill().await?;
    let events = s
        .watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;
    assert_eq!(events.last().unwrap().status(), JobStatus::Canceled);
    let job = s.get_job(&token, &job_id).await?;
    assert!(job.reason.contains("no pool agent"), "{}", job.reason);
    assert!(job
        .instances
        .iter()
        .all(|i| i.substatus() == InstanceSubstatus::Terminated));
    wait_pool(&s, &token, (0, 0)).await?;
    Ok(())
}

//! Complete of every job at once, each watched until its last event (the
//! job ended and its instances settled), then until moto shows every
//! instance terminated (asked of moto itself: those calls are not counted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aibro_proto::v1 as pb;
use aibro_tests::ec2::{call, Ec2World};
use aibro_tests::Scheduler;
use anyhow::{bail, Result};
use tokio::task::JoinSet;

use super::{Deploys, Ec2Args};

pub struct Completed {
    /// First Complete sent → moto shows no instance that is not terminated.
    pub wall: Duration,
    /// Jobs whose Complete or watch failed, and why.
    pub failed: Vec<String>,
    /// Instances moto has, all terminated.
    pub terminated: usize,
}

/// Completes every job that has an id (failed deploys too, to clean up).
pub async fn complete_all(
    s: &Arc<Scheduler>,
    world: &Ec2World,
    token: &str,
    deploys: &Deploys,
    args: &Ec2Args,
) -> Result<Completed> {
    let deadline = args.deadline();
    let start = Instant::now();
    let ids = deploys.ok.iter().map(|d| d.job_id.clone());
    let ids = ids.chain(deploys.failed.iter().filter_map(|f| f.job_id.clone()));
    let mut set = JoinSet::new();
    for job_id in ids {
        let (s, token) = (s.clone(), token.to_string());
        set.spawn(async move {
            let done = complete_one(&s, &token, &job_id, deadline).await;
            done.map_err(|e| format!("{job_id}: {e:#}"))
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failed.push(why),
            Err(e) => failed.push(format!("the Complete's task failed: {e}")),
        }
    }
    let terminated = all_terminated(world, deadline).await?;
    Ok(Completed {
        wall: start.elapsed(),
        failed,
        terminated,
    })
}

async fn complete_one(s: &Scheduler, token: &str, job_id: &str, deadline: Instant) -> Result<()> {
    let request = pb::CompleteRequest {
        job_id: job_id.into(),
        model_name: String::new(),
    };
    s.inference(Some(token)).await?.complete(request).await?;
    let mut stream = super::watch(s, token, job_id).await?;
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => bail!("not settled by the deadline"),
            Ok(event) => match event? {
                Some(e) if e.last => return Ok(()),
                Some(_) => {}
                None => bail!("WatchJob ended before the last event"),
            },
        }
    }
}

/// Waits until moto shows every instance terminated; how many there are.
async fn all_terminated(world: &Ec2World, deadline: Instant) -> Result<usize> {
    loop {
        let states = instance_states(world).await?;
        let live = states.iter().filter(|(_, s)| s != "terminated").count();
        if live == 0 {
            return Ok(states.len());
        }
        if Instant::now() > deadline {
            bail!("{live} of {} instances are not terminated", states.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every instance moto has (this world's only), and its state, from moto
/// itself: the proxy neither counts nor delays these calls.
pub async fn instance_states(world: &Ec2World) -> Result<Vec<(String, String)>> {
    let reply = call(world.moto_url(), "DescribeInstances", &[]).await?;
    if reply.status != 200 {
        bail!("moto: DescribeInstances: {}", reply.body);
    }
    let ids = reply.texts(&["instancesSet", "item", "instanceId"])?;
    let states = reply.texts(&["instancesSet", "item", "instanceState", "name"])?;
    Ok(ids.into_iter().zip(states).collect())
}

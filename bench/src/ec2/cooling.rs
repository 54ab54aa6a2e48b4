//! With `--cooling`: every job's cooling instance gets no requests, cools
//! down, and is stopped (StopInstances, then the scheduler waits for EC2 to
//! say `stopped` through the shared DescribeInstances of its fleet). This
//! waits until every cooling instance is CLOSED/STOPPED in its job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aibro_proto::v1::{InstanceStatus, InstanceSubstatus};
use aibro_tests::Scheduler;
use anyhow::{bail, Result};
use tokio::task::JoinSet;

use super::{Deploys, Ec2Args};

pub struct Cooled {
    /// All DEPLOYED → the last cooling instance stopped.
    pub wall: Duration,
    pub stopped: usize,
    /// Jobs whose cooling instance did not stop, and why.
    pub failed: Vec<String>,
}

/// Waits until the cooling instance of every deployed job has stopped.
pub async fn wait_stopped(
    s: &Arc<Scheduler>,
    token: &str,
    deploys: &Deploys,
    args: &Ec2Args,
) -> Cooled {
    let deadline = args.deadline();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for d in &deploys.ok {
        let (s, token) = (s.clone(), token.to_string());
        let (job_id, standby) = (d.job_id.clone(), d.standby.clone());
        set.spawn(async move {
            let stopped = cooling_stopped(&s, &token, &job_id, &standby, deadline).await;
            stopped.map_err(|e| format!("{job_id}: {e:#}"))
        });
    }
    let (mut stopped, mut failed) = (0, Vec::new());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => stopped += 1,
            Ok(Err(why)) => failed.push(why),
            Err(e) => failed.push(format!("the watch's task failed: {e}")),
        }
    }
    Cooled {
        wall: start.elapsed(),
        stopped,
        failed,
    }
}

/// Watches the job until its instance other than the standby (its cooling
/// one) is CLOSED/STOPPED.
async fn cooling_stopped(
    s: &Scheduler,
    token: &str,
    job_id: &str,
    standby: &str,
    deadline: Instant,
) -> Result<()> {
    let mut stream = super::watch(s, token, job_id).await?;
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut last = String::from("no event of a cooling instance");
    loop {
        let e = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => bail!("not stopped by the deadline; last: {last}"),
            Ok(event) => match event? {
                Some(e) => e,
                None => bail!("WatchJob ended; last: {last}"),
            },
        };
        if e.instance_id.is_empty() || e.instance_id == standby {
            continue;
        }
        let at = (e.instance_status(), e.instance_substatus());
        if at == (InstanceStatus::Closed, InstanceSubstatus::Stopped) {
            return Ok(());
        }
        last = format!("{:?}/{:?} {}", at.0, at.1, e.phase);
    }
}

//! N concurrent Deploys, one standby each, each watched (its own WatchJob
//! stream) until DEPLOYED, or until it ends otherwise or the deadline passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{deploy_request, Scheduler};
use tokio::task::JoinSet;

use super::Ec2Args;

/// A deploy that reached DEPLOYED.
pub struct Deployed {
    pub job_id: String,
    /// Deploy sent → the bench's WatchJob has DEPLOYED.
    pub took: Duration,
    /// The job's timeline phases (REQUESTING_SERVER, CONNECTING_SERVER,
    /// DEPLOYING_MODEL), by name, as the scheduler timed them.
    pub phases: Vec<(String, Duration)>,
    /// The standby's instance id and machine id (the spot type or the
    /// `.od` one).
    pub standby: String,
    pub machine_id: String,
}

/// A deploy that did not, and why.
pub struct Failed {
    pub model: String,
    pub job_id: Option<String>,
    pub reason: String,
}

pub struct Deploys {
    pub ok: Vec<Deployed>,
    pub failed: Vec<Failed>,
    /// First Deploy sent → the last DEPLOYED seen.
    pub wall: Duration,
}

impl Deploys {
    /// The spread of one phase over the deploys that have it.
    pub fn phase(&self, name: &str) -> Vec<Duration> {
        self.ok
            .iter()
            .filter_map(|d| d.phases.iter().find(|(n, _)| n == name).map(|(_, t)| *t))
            .collect()
    }
}

/// Fires every deploy at once and waits for all of them.
pub async fn deploy_all(s: &Arc<Scheduler>, token: &str, digest: &str, args: &Ec2Args) -> Deploys {
    let deadline = args.deadline();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..args.deploys {
        let (s, token, digest) = (s.clone(), token.to_string(), digest.to_string());
        let args = args.clone();
        let model = format!("ec2-{i:03}");
        set.spawn(async move { deploy_one(&s, &token, &digest, &args, model, deadline).await });
    }
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(d)) => ok.push(d),
            Ok(Err(f)) => failed.push(f),
            Err(e) => failed.push(Failed {
                model: "?".into(),
                job_id: None,
                reason: format!("the deploy's task failed: {e}"),
            }),
        }
    }
    let wall = ok
        .iter()
        .map(|d| d.took)
        .max()
        .unwrap_or_else(|| start.elapsed());
    failed.sort_by(|a, b| a.model.cmp(&b.model));
    Deploys { ok, failed, wall }
}

async fn deploy_one(
    s: &Scheduler,
    token: &str,
    digest: &str,
    args: &Ec2Args,
    model: String,
    deadline: Instant,
) -> Result<Deployed, Failed> {
    let sent = Instant::now();
    let mut request = deploy_request(&model, digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: args.machine.clone(),
        cooling: args.cooling.clone().unwrap_or_default(),
    });
    request.cool_down_period_s = args.cool_down_s;
    let job_id = match s.deploy_with(token, request).await {
        Ok(id) => id,
        Err(e) => {
            let reason = format!("Deploy refused: {e:#}");
            return Err(Failed {
                model,
                job_id: None,
                reason,
            });
        }
    };
    let fail = |why: String, job: Option<pb::Job>| {
        let reason = match job.map(|j| j.reason).filter(|r| !r.is_empty()) {
            Some(reason) => format!("{why}: {reason}"),
            None => why,
        };
        Failed {
            model: model.clone(),
            job_id: Some(job_id.clone()),
            reason,
        }
    };
    if let Err(why) = until_deployed(s, token, &job_id, deadline).await {
        return Err(fail(why, s.get_job(token, &job_id).await.ok()));
    }
    let took = sent.elapsed();
    let looked = async {
        let timeline = s.timeline(token, &job_id).await?;
        let job = s.get_job(token, &job_id).await?;
        anyhow::Ok((timeline, job))
    };
    let (timeline, job) = looked.await.map_err(|e| fail(format!("{e:#}"), None))?;
    let phases = timeline
        .phases
        .iter()
        .map(|p| (p.name.clone(), Duration::from_millis(p.duration_ms)))
        .collect();
    let standby = job
        .instances
        .iter()
        .find(|i| i.role() == pb::InstanceRole::Standby)
        .cloned()
        .unwrap_or_default();
    Ok(Deployed {
        job_id,
        took,
        phases,
        standby: standby.instance_id,
        machine_id: standby.machine_id,
    })
}

/// Watches the job until it is DEPLOYED; else says how far it got.
async fn until_deployed(
    s: &Scheduler,
    token: &str,
    job_id: &str,
    deadline: Instant,
) -> Result<(), String> {
    let request = pb::WatchJobRequest {
        job_id: job_id.into(),
    };
    let watch = async { anyhow::Ok(s.jobs(Some(token)).await?.watch_job(request).await?) };
    let mut stream = watch
        .await
        .map_err(|e| format!("WatchJob: {e:#}"))?
        .into_inner();
    let mut last = (JobStatus::Unspecified, pb::JobSubstatus::Unspecified);
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return Err(format!("still {last:?} at the deadline")),
            Ok(Err(status)) => return Err(format!("WatchJob ended: {status}")),
            Ok(Ok(None)) => return Err(format!("WatchJob ended at {last:?}")),
            Ok(Ok(Some(event))) => event,
        };
        match event.status() {
            JobStatus::Deployed => return Ok(()),
            ended @ (JobStatus::Canceled | JobStatus::Completed) => {
                return Err(format!("ended {ended:?} from {last:?}"))
            }
            status => last = (status, event.substatus()),
        }
    }
}

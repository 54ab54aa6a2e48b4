//! Seeding the data dir before the scheduler starts: every user's token and
//! jobs, each job walked through its history with the store's checked
//! updates, as the control plane would have (same transitions, same
//! timeline marks), in a mix of ended and active jobs.

use std::collections::BTreeMap;
use std::path::Path;

use aibro_scheduler::auth::Auth;
use aibro_scheduler::records::{InstanceRecord, JobRecord};
use aibro_scheduler::records::{ProgressRecord, TimelineNote};
use aibro_scheduler::state::{self, InstanceEvent, JobEvent, JobKind, Role};
use aibro_scheduler::store::{now_ms, Store, StoreError};
use anyhow::{Context, Result};

use super::agents::{agent_id, hardware_record};
use super::{FleetArgs, MACHINE_ID, MACHINE_TYPE};

/// What a job's seeded history is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Walk {
    /// Inference: deployed, served, completed; its instance terminated.
    Completed,
    /// Training: trained with progress reports, returned its result, completed.
    Trained,
    /// Inference: canceled while gearing up (a Python traceback as reason).
    Failed,
    /// Canceled before any machine was had (no instance).
    Unplaced,
    /// Inference, DEPLOYED now: its standby EXECUTING on a pool agent.
    Deployed,
    /// Training, TRAINING now: the job whose changes the watchers follow.
    Training,
}

impl Walk {
    /// The ended part of the mix, by job index: 60% completed deployments,
    /// 20% completed training, 15% failed deployments, 5% never placed.
    fn ended(k: usize) -> Walk {
        match k % 20 {
            0..=11 => Walk::Completed,
            12..=15 => Walk::Trained,
            16..=18 => Walk::Failed,
            _ => Walk::Unplaced,
        }
    }

    fn kind(self) -> JobKind {
        match self {
            Walk::Trained | Walk::Training => JobKind::Training,
            _ => JobKind::Inference,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Walk::Completed => "COMPLETED deployments (instance TERMINATED)",
            Walk::Trained => "COMPLETED training jobs (trainer TERMINATED)",
            Walk::Failed => "CANCELED deployments (failed gearing up; TERMINATED)",
            Walk::Unplaced => "CANCELED, never placed (no instance)",
            Walk::Deployed => "DEPLOYED, standby EXECUTING on a pool agent",
            Walk::Training => "TRAINING, trainer EXECUTING on a pool agent (watched)",
        }
    }
}

/// The job whose changes the watchers follow, and the agent running it.
#[derive(Default)]
pub struct Watched {
    pub job_id: String,
    pub instance_id: String,
    pub agent: usize,
    pub user: usize,
    pub progress_seq: u64,
}

pub struct Seeded {
    /// Each user's token, by user index.
    pub tokens: Vec<String>,
    pub jobs_per_user: Vec<usize>,
    /// Per agent: the instance it runs (pool agents that run a seeded active job).
    pub runs: Vec<Option<String>>,
    pub watched: Watched,
    pub mix: BTreeMap<Walk, usize>,
    /// Timeline events written.
    pub events: u64,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// The job of user `u` at index `k` (of `n`), and the agent it runs on if active.
fn plan(args: &FleetArgs, u: usize, k: usize, n: usize) -> (Walk, Option<usize>) {
    let deployed_users = args.users.min(args.agents - 1);
    if u == 0 && k == n - 2 {
        (Walk::Training, Some(0))
    } else if k == n - 1 && u < deployed_users {
        (Walk::Deployed, Some(1 + u))
    } else {
        (Walk::ended(k), None)
    }
}

fn to_job(job: &mut JobRecord, event: JobEvent) -> Result<(), StoreError> {
    job.state = state::next_job(job.kind, job.state, event)?;
    Ok(())
}

fn to_inst(insts: &mut [InstanceRecord], event: InstanceEvent) -> Result<(), StoreError> {
    for inst in insts {
        inst.state = state::next_instance(inst.state, event)?;
    }
    Ok(())
}

const TRACEBACK: &str = "Traceback (most recent call last):\n  File \"predict.py\", line 3, in <module>\n    import torch\nModuleNotFoundError: No module named 'torch'";

type Change = Box<
    dyn Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<TimelineNote>, StoreError>
        + Send
        + Sync,
>;

/// One status step of the job's only instance, with an optional timeline mark.
fn step(
    inst: &str,
    job: Option<JobEvent>,
    instance: Option<InstanceEvent>,
    phase: &'static str,
) -> Change {
    let inst = inst.to_string();
    Box::new(move |j, insts| {
        if let Some(e) = job {
            to_job(j, e)?;
        }
        if let Some(e) = instance {
            to_inst(insts, e)?;
        }
        Ok(if phase.is_empty() {
            vec![]
        } else {
            vec![TimelineNote::phase(&inst, phase)]
        })
    })
}

/// The job ends (`Complete` or `Cancel`) and its instance is terminated.
fn end(event: JobEvent, reason: &'static str) -> Change {
    Box::new(move |job, insts| {
        to_job(job, event)?;
        job.reason = reason.to_string();
        to_inst(insts, InstanceEvent::Terminate)?;
        Ok(vec![])
    })
}

/// A job as seeded.
struct SeededJob {
    job: JobRecord,
    instance_id: String,
}

/// Creates job `k` of `owner` and walks it through its history with the
/// store's checked updates; `host` is the agent its instance is placed on.
async fn seed_job(
    store: &Store,
    owner: &str,
    k: usize,
    walk: Walk,
    host: usize,
    address: &str,
) -> Result<SeededJob> {
    let kind = walk.kind();
    let digest = format!("sha256:{:064x}", (k as u64) * 7919 + 1);
    let mut job = JobRecord::queued(new_id("job"), owner, kind, digest, now_ms());
    job.description = format!("fleet bench job {k}");
    job.wait_request_s = 600;
    if kind == JobKind::Inference {
        job.model_name = format!("model-{k:04}");
        job.standby = MACHINE_ID.into();
        job.cool_down_period_s = 600;
    } else {
        job.machine_ids = vec![MACHINE_ID.into()];
        job.args = [("epochs".to_string(), "20".to_string())].into();
    }
    let job_id = store.create_job(job).await?.job.id;
    let inst = if walk == Walk::Unplaced {
        String::new()
    } else {
        new_id("inst")
    };
    for change in history(walk, &inst, host, address) {
        store.update(&job_id, change).await?;
    }
    let job = store.job(&job_id)?.context("seeded job is gone")?;
    Ok(SeededJob {
        job,
        instance_id: inst,
    })
}

/// The status changes of a `walk`, in order, with instance `inst` (none when
/// unplaced) on agent `host`, as the control plane makes them (same
/// transitions, same timeline marks).
fn history(walk: Walk, inst: &str, host: usize, address: &str) -> Vec<Change> {
    if walk == Walk::Unplaced {
        return vec![unplaced()];
    }
    let mut changes = placed(walk, inst, host, address);
    match walk {
        Walk::Unplaced => {} // returned above
        Walk::Completed | Walk::Failed | Walk::Deployed => serving(walk, inst, &mut changes),
        Walk::Trained | Walk::Training => training(walk, inst, &mut changes),
    }
    if matches!(walk, Walk::Completed | Walk::Failed | Walk::Trained) {
        // The provider finished terminating it: the job's last event.
        changes.push(step(inst, None, Some(InstanceEvent::Closed), ""));
    }
    changes
}

/// Canceled while queuing: no machine could be had.
fn unplaced() -> Change {
    Box::new(|job, _| {
        to_job(job, JobEvent::Cancel)?;
        job.reason = format!(
            "no machine could be had: {MACHINE_ID}: no idle pool agent of type `{MACHINE_TYPE}` within 600 s"
        );
        Ok(vec![])
    })
}

/// Instance `inst` is launched for the job and its agent (`host`) connects.
fn placed(walk: Walk, inst: &str, host: usize, address: &str) -> Vec<Change> {
    let role = if walk.kind() == JobKind::Training {
        Role::Trainer
    } else {
        Role::Standby
    };
    let i = inst.to_string();
    let launched: Change = Box::new(move |job, insts| {
        to_job(job, JobEvent::InstanceLaunched)?;
        insts.push(InstanceRecord::launching(
            &i,
            &job.id,
            role,
            MACHINE_ID,
            now_ms(),
        ));
        job.instances.push(i.clone());
        Ok(vec![TimelineNote {
            message: format!("{MACHINE_ID} (on-demand, $4.10/h)"),
            ..TimelineNote::phase(&i, "instance requested")
        }])
    });
    let (i, a) = (inst.to_string(), address.to_string());
    let connected: Change = Box::new(move |_, insts| {
        let rec = &mut insts[0];
        rec.agent_address = a.clone();
        rec.hardware = Some(hardware_record(host));
        rec.host = agent_id(host);
        Ok(vec![TimelineNote::phase(&i, "agent connected")])
    });
    vec![launched, connected]
}

/// An inference job gears up, then fails (canceled with a traceback) or
/// loads and serves, completing if `walk` is [`Walk::Completed`].
fn serving(walk: Walk, inst: &str, changes: &mut Vec<Change>) {
    changes.push(step(
        inst,
        Some(JobEvent::GearingUp),
        None,
        "gearing up env",
    ));
    if walk == Walk::Failed {
        changes.push(end(JobEvent::Cancel, TRACEBACK));
        return;
    }
    let ready = Some(InstanceEvent::Ready);
    changes.push(step(inst, Some(JobEvent::Loading), None, "env geared up"));
    changes.push(step(inst, Some(JobEvent::Serving), ready, "model loaded"));
    if walk == Walk::Completed {
        changes.push(end(JobEvent::Complete, ""));
    }
}

/// A training job trains with three progress reports, then returns its
/// result and completes if `walk` is [`Walk::Trained`].
fn training(walk: Walk, inst: &str, changes: &mut Vec<Change>) {
    let ready = Some(InstanceEvent::Ready);
    changes.push(step(inst, Some(JobEvent::Loading), None, "env reused"));
    changes.push(step(inst, None, None, "ready to train"));
    changes.push(step(
        inst,
        Some(JobEvent::TrainingStarted),
        ready,
        "training",
    ));
    for seq in 1..=3u64 {
        let i = inst.to_string();
        changes.push(Box::new(move |job, _| {
            job.progress_seq = seq;
            let metrics = [("loss".to_string(), 1.0 / (seq as f64 + 1.0))].into();
            Ok(vec![TimelineNote {
                progress: Some(ProgressRecord {
                    epoch: seq as u32,
                    total_epochs: 20,
                    metrics,
                }),
                ..TimelineNote::phase(&i, "progress")
            }])
        }));
    }
    if walk == Walk::Trained {
        changes.push(step(inst, Some(JobEvent::Returning), None, "returning"));
        let i = inst.to_string();
        changes.push(Box::new(move |job, insts| {
            to_job(job, JobEvent::Complete)?;
            job.result_digest = format!("sha256:{:064x}", 42);
            job.result_size = 1 << 20;
            to_inst(insts, InstanceEvent::Terminate)?;
            Ok(vec![TimelineNote::phase(&i, "results returned")])
        }));
    }
}

/// Seeds every user's jobs (users concurrently, so the group commit batches)
/// and their tokens, then closes the store so the scheduler can open it.
pub async fn seed(db: &Path, args: &FleetArgs, address: &str) -> Result<Seeded> {
    let store = Store::open(db)?;
    let auth = Auth::open(store.clone()).await?;
    let mut tokens = Vec::new();
    for u in 0..args.users {
        tokens.push(auth.create_token(&format!("user-{u:03}")).await?);
    }
    drop(auth);
    let jobs_per_user: Vec<usize> = (0..args.users)
        .map(|u| args.jobs / args.users + usize::from(u < args.jobs % args.users))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (u, &n) in jobs_per_user.iter().enumerate() {
        let (store, args, address) = (store.clone(), args.clone(), address.to_string());
        set.spawn(async move {
            let owner = format!("user-{u:03}");
            let mut out = Vec::with_capacity(n);
            for k in 0..n {
                let (walk, runs_on) = plan(&args, u, k, n);
                let host = runs_on.unwrap_or((u * 7 + k) % args.agents);
                let job = seed_job(&store, &owner, k, walk, host, &address).await?;
                out.push((walk, runs_on, job));
            }
            anyhow::Ok((u, out))
        });
    }
    let mut seeded = Seeded {
        tokens,
        jobs_per_user,
        runs: vec![None; args.agents],
        watched: Watched::default(),
        mix: BTreeMap::new(),
        events: 0,
    };
    while let Some(done) = set.join_next().await {
        let (u, jobs) = done??;
        for (walk, runs_on, seeded_job) in jobs {
            let SeededJob { job, instance_id } = seeded_job;
            *seeded.mix.entry(walk).or_default() += 1;
            seeded.events += job.last_seq;
            if let Some(a) = runs_on {
                seeded.runs[a] = Some(instance_id.clone());
            }
            if walk == Walk::Training {
                seeded.watched = Watched {
                    job_id: job.id,
                    instance_id,
                    agent: runs_on.unwrap_or(0),
                    user: u,
                    progress_seq: job.progress_seq,
                };
            }
        }
    }
    store.close().await?;
    Ok(seeded)
}

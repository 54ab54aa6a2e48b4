//! Training jobs: Fit with machine-id fallback (each id is given
//! `wait_request_s` to be fulfilled), Train once the instance is ready, live
//! progress and log lines into the timeline, the returned outputs, and the
//! cooling period that holds the instance after the job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::User;
use crate::catalog::Machine;
use crate::error::{Error, Result};
use crate::records::{HandedOver, InstanceRecord, JobRecord, ProgressRecord, TimelineNote};
use crate::state::{
    self, InstanceEvent, InstanceState, JobEvent, JobKind, JobState, JobStatus, Role,
};
use crate::store::StoreError;

use super::jobs::wait_request_s;
use super::launch::LaunchError;
use super::{new_id, Control};

/// What a training run reports while it runs: a progress report from the
/// user's `aibro.report(...)`, or one line it printed.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingUpdate {
    pub job_id: String,
    /// Per job, from 1; what was applied already is dropped (agents re-send).
    pub seq: u64,
    pub kind: UpdateKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UpdateKind {
    Progress(ProgressRecord),
    LogLine(String),
}

/// A Fit request, out of its proto form.
#[derive(Debug, Clone, Default)]
pub struct FitSpec {
    pub artifact_digest: String,
    pub machine_ids: Vec<String>,
    pub cool_down_period_s: u32,
    pub wait_request_s: u32,
    pub description: String,
    pub args: BTreeMap<String, String>,
    /// User code gets no outbound network.
    pub isolate_network: bool,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Control {
    /// Validates a Fit, creates the job and starts requesting its machine.
    pub async fn fit(&self, user: &User, spec: FitSpec) -> Result<JobRecord> {
        if spec.machine_ids.is_empty() {
            return Err(Error::InvalidArgument(
                "machine_ids: give at least one machine id, tried in order (e.g. `local.small.od`)"
                    .into(),
            ));
        }
        for id in &spec.machine_ids {
            self.machines().servable("machine_ids", id)?;
        }
        if let Some(key) = spec.args.keys().find(|k| !is_identifier(k)) {
            return Err(Error::InvalidArgument(format!(
                "argument `{key}` is not a Python identifier; train() receives args as keyword arguments"
            )));
        }
        let artifact = self.check_artifact(user, &spec.artifact_digest)?;
        if !artifact.has_train {
            return Err(Error::InvalidArgument(format!(
                "artifact {} has no train.py at its root; a training repo needs train.py with train(output_dir, **args)",
                artifact.digest
            )));
        }
        let now = crate::clock::now_ms();
        let job = JobRecord {
            machine_ids: spec.machine_ids,
            cool_down_period_s: spec.cool_down_period_s,
            wait_request_s: wait_request_s(spec.wait_request_s),
            description: spec.description,
            args: spec.args,
            isolate_network: spec.isolate_network,
            ..JobRecord::queued(
                new_id("job"),
                &user.0,
                JobKind::Training,
                artifact.digest,
                now,
            )
        };
        let job = self.create_job(job).await?;
        crate::crash::point("fit.created");
        self.start_requesting_trainer(&job);
        Ok(job)
    }

    /// Starts requesting the job's machine ids, in order, in the background.
    pub(crate) fn start_requesting_trainer(&self, job: &JobRecord) {
        let machines: Vec<Machine> = job
            .machine_ids
            .iter()
            .filter_map(|id| self.catalog().resolve(id))
            .collect();
        let this = self.clone();
        let (job_id, wait) = (
            job.id.clone(),
            Duration::from_secs(job.wait_request_s.into()),
        );
        self.spawn(async move { this.request_trainer(&job_id, machines, wait).await });
    }

    /// Tries each machine id in order until one is had; cancels the job with
    /// every id's reason when none is.
    #[tracing::instrument(skip(self, machines, wait))]
    async fn request_trainer(&self, job_id: &str, machines: Vec<Machine>, wait: Duration) {
        let mut tried = Vec::new();
        for machine in machines {
            if let Some(warm) = self.warm_trainer(job_id, &machine.id) {
                match self.take_over(job_id, &warm).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::info!(instance_id = %warm.id, error = %e, "warm instance not taken")
                    }
                }
            }
            match self.launch_trainer(job_id, &machine, wait).await {
                Ok(()) | Err(LaunchError::Abandoned) => return,
                Err(LaunchError::Machine(e)) => {
                    tracing::info!(machine = %machine.id, "falling back: {e}");
                    tried.push(format!("{}: {e}", machine.id));
                }
            }
        }
        let reason = format!("no machine could be had; tried {}", tried.join("; "));
        self.cancel(job_id, reason).await;
    }

    /// Requests one machine id for the job's trainer and launches it.
    async fn launch_trainer(
        &self,
        job_id: &str,
        machine: &Machine,
        wait: Duration,
    ) -> Result<(), LaunchError> {
        let instance_id = new_id("inst");
        self.machines().spot_request(machine)?;
        self.machines().acquire(&instance_id, machine, wait).await?;
        self.launch_instance(job_id, Role::Trainer, machine, &instance_id)
            .await
    }

    /// A cooling trainer of the same owner on `machine_id`, ready for reuse.
    fn warm_trainer(&self, job_id: &str, machine_id: &str) -> Option<InstanceRecord> {
        let store = self.store();
        let owner = store.job(job_id).ok()??.owner;
        let jobs = store.jobs_of(&owner).ok()?;
        jobs.iter()
            .rev()
            .filter(|j| j.kind == JobKind::Training && j.state.is_ended())
            .filter_map(|j| store.instances_of(j).ok())
            .flatten()
            .find(|i| i.state == InstanceState::COOLING && i.machine_id == machine_id)
    }

    /// Hands a cooling trainer to `job_id` in one transaction over both jobs:
    /// the new job skips requesting and connecting (and gearing up, when its
    /// requirements are the same), and the agent gets the new job at once.
    #[tracing::instrument(skip(self, warm), fields(instance_id = %warm.id))]
    async fn take_over(&self, job_id: &str, warm: &InstanceRecord) -> Result<()> {
        let link = self.links().get(&warm.id).ok_or_else(|| {
            Error::Unavailable(format!("instance {} has no agent connected", warm.id))
        })?;
        let mut moved = warm.clone();
        moved.job_id = job_id.to_string();
        moved.state =
            state::next_instance(warm.state, InstanceEvent::Reassign).map_err(StoreError::from)?;
        moved.running_ms = 0;
        moved.running_since_ms = None;
        moved.ready = false;
        let handed = HandedOver {
            instance_id: warm.id.clone(),
            machine_id: warm.machine_id.clone(),
            to_job: job_id.to_string(),
            running_ms: crate::ledger::running_ms(warm, crate::clock::now_ms()),
        };
        let from = |job: &mut JobRecord, insts: &mut Vec<InstanceRecord>| {
            let inst = insts
                .iter_mut()
                .find(|i| i.id == moved.id && i.state == InstanceState::COOLING)
                .ok_or_else(|| {
                    StoreError::Stale(format!("instance {} is no longer cooling", moved.id))
                })?;
            *inst = moved.clone();
            job.handed_over.push(handed.clone());
            Ok(vec![TimelineNote {
                message: format!("to job {job_id}"),
                ..TimelineNote::phase(&moved.id, "instance handed over")
            }])
        };
        let to = |job: &mut JobRecord, insts: &mut Vec<InstanceRecord>| {
            if job.state != JobState::QUEUED {
                return Err(StoreError::Stale("the job is no longer requesting".into()));
            }
            job.state = state::next_job(job.kind, job.state, JobEvent::InstanceLaunched)?;
            job.instances.push(moved.id.clone());
            insts.push(moved.clone());
            Ok(vec![TimelineNote {
                message: format!("from job {}", warm.job_id),
                ..TimelineNote::phase(&moved.id, "instance reused")
            }])
        };
        let (_, new) = self
            .store()
            .update_two((&warm.job_id, from), (job_id, to))
            .await?;
        self.prepare(&new.job, &warm.id, link);
        Ok(())
    }

    /// A progress report or a log line from the user's train().
    pub async fn training_update(&self, instance_id: &str, update: TrainingUpdate) -> Result<()> {
        let inst = self.live_instance(instance_id)?;
        self.store()
            .update(&inst.job_id, |job, _| {
                let stale = job.id != update.job_id || update.seq <= job.progress_seq;
                if stale || job.state.is_ended() {
                    return Ok(vec![]);
                }
                job.progress_seq = update.seq;
                let note = match &update.kind {
                    UpdateKind::Progress(progress) => TimelineNote {
                        progress: Some(progress.clone()),
                        ..TimelineNote::phase(instance_id, "progress")
                    },
                    UpdateKind::LogLine(line) => TimelineNote {
                        message: line.clone(),
                        ..TimelineNote::phase(instance_id, "log")
                    },
                };
                Ok(vec![note])
            })
            .await?;
        Ok(())
    }

    /// The outputs are uploaded: the job completes; its instance cools for
    /// `cool_down_period_s` (ready for reuse) or is terminated.
    pub(crate) async fn returned(
        &self,
        inst: &InstanceRecord,
        digest: String,
        size: u64,
    ) -> Result<()> {
        let id = inst.id.clone();
        let committed = self
            .store()
            .update(&inst.job_id, |job, insts| {
                if job.state.status != JobStatus::Training {
                    return Err(StoreError::Stale("the job is not training".into()));
                }
                job.state = state::next_job(job.kind, job.state, JobEvent::Complete)?;
                job.result_digest = digest.clone();
                job.result_size = size;
                let cool = job.cool_down_period_s > 0;
                for inst in insts.iter_mut().filter(|i| !i.state.is_closed()) {
                    let event = if cool && inst.id == id {
                        InstanceEvent::Idle
                    } else {
                        InstanceEvent::Terminate
                    };
                    inst.state = state::next_instance(inst.state, event)?;
                }
                Ok(vec![TimelineNote::phase(&id, "results returned")])
            })
            .await?;
        crate::crash::point("train.returned");
        for inst in committed.instances {
            match inst.state {
                InstanceState::TERMINATING => self.start_close(inst.id),
                InstanceState::COOLING => {
                    self.cool_then_terminate(inst, committed.job.cool_down_period_s)
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Terminates a cooling trainer once its period is over.
    pub(crate) fn cool_then_terminate(&self, inst: InstanceRecord, cool_down_s: u32) {
        let this = self.clone();
        self.spawn(async move {
            let until = inst.updated_ms + u64::from(cool_down_s) * 1000;
            let left = until.saturating_sub(crate::clock::now_ms());
            tokio::time::sleep(Duration::from_millis(left)).await;
            let Ok(Some(now)) = this.store().instance(&inst.id) else {
                return;
            };
            if now.state != InstanceState::COOLING || now.job_id != inst.job_id {
                return;
            }
            let over = Some("cooling period over");
            if this
                .move_instance(&inst, InstanceEvent::Terminate, over)
                .await
                .is_ok()
            {
                this.close(&inst.id).await;
            }
        });
    }

    /// The owner of a job that may upload its results now (TRAINING).
    pub fn returning_job_owner(&self, job_id: &str) -> Result<User> {
        let job = self
            .store()
            .job(job_id)?
            .ok_or_else(|| Error::NotFound(format!("job {job_id} not found")))?;
        if job.state.status != JobStatus::Training {
            return Err(Error::FailedPrecondition(format!(
                "job {job_id} is not training"
            )));
        }
        Ok(User(job.owner))
    }

    /// Where a completed training job's outputs are stored.
    pub fn result_path(&self, user: &User, job_id: &str) -> Result<PathBuf> {
        let job = self.find_job(user, job_id, "")?;
        if job.kind != JobKind::Training {
            return Err(Error::FailedPrecondition(format!(
                "job {job_id} is not a training job"
            )));
        }
        if job.result_digest.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "job {job_id} has no results: it is {}; results are ready once it is COMPLETED",
                job.state.substatus.name()
            )));
        }
        self.existing_blob(&job.result_digest).ok_or_else(|| {
            Error::Internal(format!(
                "the result {} is missing from storage",
                job.result_digest
            ))
        })
    }
}

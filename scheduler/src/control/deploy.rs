//! Inference jobs from the user's side: validate and create a deployment
//! (or dry-run it), complete it, and manage its client ids.

use std::collections::BTreeSet;

use crate::auth::User;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::records::{BatchSettings, JobRecord};
use crate::state::{JobEvent, JobKind, Role};
use crate::store::StoreError;

use super::jobs::wait_request_s;
use super::{new_id, Control};
pub use aibro_repo::DryRunOutcome;

const DEFAULT_COOL_DOWN_S: u32 = 600;
const MAX_NAME_LEN: usize = 64;
const MAX_BATCH_SIZE: u32 = 1024;
const MAX_BATCH_WAIT_MS: u32 = 10_000;

/// A deploy request, already out of its proto form.
#[derive(Debug, Clone, Default)]
pub struct DeploySpec {
    pub model_name: String,
    pub standby: String,
    pub cooling: String,
    pub artifact_digest: String,
    /// Run the repo once on its sample input instead of deploying it.
    pub dryrun: bool,
    /// User code gets no outbound network.
    pub isolate_network: bool,
    pub cool_down_period_s: u32,
    pub client_ids: Vec<String>,
    pub description: String,
    pub wait_request_s: u32,
    /// 0: the default.
    pub max_batch_size: u32,
    /// None: the default.
    pub max_batch_wait_ms: Option<u32>,
}

/// What a Deploy made.
#[derive(Debug)]
pub enum Deployed {
    /// The job, launching its instances.
    Job(Box<JobRecord>),
    /// A dry run's outcome (its job is over).
    DryRun(DryRunOutcome),
}

/// The spec's batching with the defaults applied, within the limits.
fn batching(spec: &DeploySpec) -> Result<BatchSettings> {
    let default = BatchSettings::default();
    let b = BatchSettings {
        max_batch_size: match spec.max_batch_size {
            0 => default.max_batch_size,
            n => n,
        },
        max_wait_ms: spec.max_batch_wait_ms.unwrap_or(default.max_wait_ms),
    };
    if b.max_batch_size > MAX_BATCH_SIZE {
        return Err(Error::InvalidArgument(format!(
            "batching.max_batch_size {} is over the limit of {MAX_BATCH_SIZE}",
            b.max_batch_size
        )));
    }
    if b.max_wait_ms > MAX_BATCH_WAIT_MS {
        return Err(Error::InvalidArgument(format!(
            "batching.max_wait_ms {} is over the limit of {MAX_BATCH_WAIT_MS} ms",
            b.max_wait_ms
        )));
    }
    Ok(b)
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "model_name `{name}` is invalid: use 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// Client ids must be non-empty and unique.
fn check_clients<'a>(ids: impl IntoIterator<Item = &'a String>) -> Result<()> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if id.trim().is_empty() {
            return Err(Error::InvalidArgument("client ids may not be empty".into()));
        }
        if !seen.insert(id) {
            return Err(Error::InvalidArgument(format!(
                "client id `{id}` is listed twice; client ids must be unique"
            )));
        }
    }
    Ok(())
}

impl Control {
    /// Validates a deploy; creates the job and starts launching its standby
    /// (or, for a dry run, runs the repo once on an instance of the standby's
    /// type and answers with the outcome).
    pub async fn deploy(&self, user: &User, spec: DeploySpec) -> Result<Deployed> {
        check_name(&spec.model_name)?;
        if spec.standby.is_empty() {
            return Err(Error::InvalidArgument(if spec.cooling.is_empty() {
                "machine_config.standby is required (an on-demand machine id such as `local.small.od`)".into()
            } else {
                "machine_config has only a cooling instance; a standby instance is mandatory".into()
            }));
        }
        let standby = self
            .machines()
            .deployable("machine_config.standby", &spec.standby)?;
        let cooling = if spec.cooling.is_empty() {
            None
        } else {
            Some(
                self.machines()
                    .deployable("machine_config.cooling", &spec.cooling)?,
            )
        };
        check_clients(&spec.client_ids)?;
        let batching = batching(&spec)?;
        let artifact = self.check_artifact(user, &spec.artifact_digest)?;
        if !artifact.has_predict {
            return Err(Error::InvalidArgument(format!(
                "artifact {} has no predict.py at its root; a model repo needs predict.py with load_model() and run()",
                artifact.digest
            )));
        }
        let job = JobRecord {
            model_name: spec.model_name,
            standby: standby.id.clone(),
            cooling: cooling.as_ref().map(|m| m.id.clone()),
            cool_down_period_s: match spec.cool_down_period_s {
                0 => DEFAULT_COOL_DOWN_S,
                s => s,
            },
            wait_request_s: wait_request_s(spec.wait_request_s),
            client_ids: spec.client_ids,
            description: spec.description,
            batching,
            isolate_network: spec.isolate_network,
            dryrun: spec.dryrun,
            ..JobRecord::queued(
                new_id("job"),
                &user.0,
                JobKind::Inference,
                artifact.digest,
                now_ms(),
            )
        };
        if job.dryrun {
            return Ok(Deployed::DryRun(self.dry_run(job, standby).await?));
        }
        let job = self.create_job(job).await?;
        crate::crash::point("deploy.created");
        self.open_route(&job);
        let launches = std::iter::once((Role::Standby, standby))
            .chain(cooling.map(|c| (Role::Cooling, c)))
            .collect();
        self.start_launch(&job, launches);
        Ok(Deployed::Job(Box::new(job)))
    }

    /// Ends the job at once: it stops serving and every instance is terminated.
    pub async fn complete(&self, user: &User, job_id: &str, model_name: &str) -> Result<JobRecord> {
        let job = self.find_job(user, job_id, model_name)?;
        if job.kind != JobKind::Inference {
            return Err(Error::FailedPrecondition(format!(
                "job {} is a training job; it completes by itself",
                job.id
            )));
        }
        if job.state.is_ended() {
            return Err(Error::FailedPrecondition(format!(
                "job {} has already ended ({:?})",
                job.id, job.state.status
            )));
        }
        self.end_job(&job.id, JobEvent::Complete, String::new())
            .await
    }

    /// Adds and removes client ids; a duplicate in `add` refuses the whole update.
    pub async fn update_clients(
        &self,
        user: &User,
        job_id: &str,
        model_name: &str,
        add: Vec<String>,
        remove: Vec<String>,
        be_public: bool,
    ) -> Result<JobRecord> {
        let job = self.find_job(user, job_id, model_name)?;
        check_clients(&add)?;
        let committed = self
            .store()
            .update(&job.id, |job, _| {
                if job.state.is_ended() {
                    return Err(StoreError::Refused(format!(
                        "job {} has ended; its client ids no longer matter",
                        job.id
                    )));
                }
                if let Some(dup) = add.iter().find(|c| job.client_ids.contains(c)) {
                    return Err(StoreError::Invalid(format!(
                        "client id `{dup}` is already listed; nothing was changed"
                    )));
                }
                if be_public {
                    job.client_ids.clear();
                } else {
                    job.client_ids.retain(|c| !remove.contains(c));
                    job.client_ids.extend(add.iter().cloned());
                }
                Ok(vec![])
            })
            .await?;
        let job = committed.job;
        self.router()
            .set_clients(&job.owner, &job.model_name, &job.client_ids);
        Ok(job)
    }
}

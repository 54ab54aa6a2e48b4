//! The jobs this agent serves: Prepare (fetch + unpack the artifact, gear up the
//! environment, start the worker pool, reporting each phase), Predict routing to the
//! job's pool, and Stop. A job's files live under `<dir>/jobs/<job_id>/`; the
//! unpacked repo is reused when the agent (or its instance) restarts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aibro_proto::v1::{AgentPhase, FetchArtifactRequest, JobKind, PhaseReport};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::archive::{self, ArchiveError, Limits};
use crate::config::Args;
use crate::env::{self, EnvError};
use crate::pool::{Pool, PoolError};
use crate::reporter::{Gateway, Metrics, Reports};
use crate::worker::Output;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeError {
    #[error("job_id is empty")]
    NoJobId,
    #[error("training jobs are not supported by this agent yet")]
    TrainingUnsupported,
    #[error("this agent has no job `{0}`; send Prepare first")]
    UnknownJob(String),
    #[error("job `{0}` is still being prepared; retry when it reports SERVING")]
    NotReady(String),
    #[error("job `{job}` failed to prepare: {error}")]
    JobFailed { job: String, error: String },
    #[error("cannot fetch artifact `{digest}` from the scheduler: {status}")]
    Fetch {
        digest: String,
        status: tonic::Status,
    },
    #[error("artifact `{digest}` arrived with digest `{got}`; the download is corrupt")]
    DigestMismatch { digest: String, got: String },
    #[error("invalid model repo archive: {0}")]
    Archive(#[from] ArchiveError),
    #[error("the repo has no predict.py at its root")]
    NoPredict,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gearing up the Python environment failed: {0}")]
    Env(#[from] EnvError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

enum JobState {
    Preparing(CancellationToken),
    Serving(Arc<Pool>),
    Failed(String),
}

pub(crate) struct Runtime {
    args: Args,
    script: PathBuf,
    gateway: Gateway,
    reports: Reports,
    cancel: CancellationToken,
    jobs: Mutex<HashMap<String, JobState>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Runtime {
    pub(crate) fn new(
        args: Args,
        script: PathBuf,
        gateway: Gateway,
        reports: Reports,
        cancel: CancellationToken,
    ) -> Runtime {
        Runtime {
            args,
            script,
            gateway,
            reports,
            cancel,
            jobs: Mutex::default(),
        }
    }

    fn jobs_dir(&self) -> PathBuf {
        self.args.dir.join("jobs")
    }

    fn report(&self, job_id: &str, phase: AgentPhase, message: &str) {
        self.reports.send(PhaseReport {
            job_id: job_id.to_string(),
            phase: phase.into(),
            message: message.to_string(),
            ..PhaseReport::default()
        });
    }

    /// Starts preparing `job_id` in the background; idempotent while it prepares or
    /// serves (a repeated Prepare of a serving job re-reports SERVING).
    pub(crate) fn prepare(
        self: &Arc<Self>,
        job_id: String,
        digest: String,
        kind: JobKind,
    ) -> Result<(), RuntimeError> {
        if job_id.is_empty() {
            return Err(RuntimeError::NoJobId);
        }
        if kind == JobKind::Training {
            return Err(RuntimeError::TrainingUnsupported);
        }
        let token = self.cancel.child_token();
        {
            let mut jobs = self.jobs.lock().expect("jobs");
            match jobs.get(&job_id) {
                Some(JobState::Preparing(_)) => return Ok(()),
                Some(JobState::Serving(_)) => {
                    self.report(&job_id, AgentPhase::Serving, "serving");
                    return Ok(());
                }
                Some(JobState::Failed(_)) | None => {}
            }
            jobs.insert(job_id.clone(), JobState::Preparing(token.clone()));
        }
        let this = self.clone();
        tokio::spawn(async move {
            let res = tokio::select! {
                _ = token.cancelled() => return,
                r = this.prepare_job(&job_id, &digest) => r,
            };
            if let Some(stale) = this.finish(&job_id, res) {
                stale.shutdown().await;
            }
        });
        Ok(())
    }

    /// Records the outcome of a preparation and reports it. Returns the pool when the
    /// job was stopped meanwhile (the caller ends it).
    fn finish(&self, job_id: &str, res: Result<Pool, RuntimeError>) -> Option<Pool> {
        let mut jobs = self.jobs.lock().expect("jobs");
        let current = matches!(jobs.get(job_id), Some(JobState::Preparing(t)) if !t.is_cancelled());
        match res {
            Ok(pool) if current => {
                jobs.insert(job_id.to_string(), JobState::Serving(Arc::new(pool)));
                drop(jobs);
                self.report(job_id, AgentPhase::Serving, "serving");
                None
            }
            Ok(pool) => Some(pool),
            Err(e) if current => {
                let (message, traceback) = failure_text(&e);
                jobs.insert(job_id.to_string(), JobState::Failed(message.clone()));
                drop(jobs);
                tracing::error!(job_id = %job_id, "prepare failed: {traceback}");
                self.reports.send(PhaseReport {
                    job_id: job_id.to_string(),
                    phase: AgentPhase::Failed.into(),
                    message,
                    traceback,
                    ..PhaseReport::default()
                });
                None
            }
            Err(_) => None,
        }
    }

    async fn prepare_job(&self, job_id: &str, digest: &str) -> Result<Pool, RuntimeError> {
        let job_dir = self.jobs_dir().join(job_id);
        let repo = job_dir.join("repo");
        let marker = job_dir.join("repo.complete");
        let envs = self.args.dir.join("envs");
        let have_repo = marker.exists();
        self.reports.send(PhaseReport {
            job_id: job_id.to_string(),
            phase: AgentPhase::GearingUpEnv.into(),
            message: if have_repo {
                "model repo already on disk; gearing up the environment".into()
            } else {
                "fetching the model repo and gearing up the environment".into()
            },
            ..PhaseReport::default()
        });
        if !have_repo {
            tokio::fs::create_dir_all(&job_dir)
                .await
                .map_err(io_err(&job_dir))?;
            let archive_path = job_dir.join("artifact.tar.gz");
            self.fetch(digest, &archive_path).await?;
            if repo.exists() {
                tokio::fs::remove_dir_all(&repo)
                    .await
                    .map_err(io_err(&repo))?;
            }
            let (a, r) = (archive_path.clone(), repo.clone());
            tokio::task::spawn_blocking(move || archive::unpack(&a, &r, &Limits::default()))
                .await
                .expect("unpack task")?;
            tokio::fs::write(&marker, digest)
                .await
                .map_err(io_err(&marker))?;
            let _ = tokio::fs::remove_file(&archive_path).await;
        }
        if !repo.join("predict.py").is_file() {
            return Err(RuntimeError::NoPredict);
        }
        let penv = env::gear_up(&self.args.python, &repo, &envs, &self.args.pip).await?;
        self.reports.send(PhaseReport {
            job_id: job_id.to_string(),
            phase: AgentPhase::ModelLoading.into(),
            message: "loading the model".into(),
            env_cached: penv.cached,
            ..PhaseReport::default()
        });
        let pool = Pool::start(
            &penv.python,
            &self.script,
            &repo,
            &job_dir.join("workers"),
            self.args.workers,
        )
        .await?;
        Ok(pool)
    }

    /// Streams the artifact into `path`, checking its sha256.
    async fn fetch(&self, digest: &str, path: &Path) -> Result<(), RuntimeError> {
        let ferr = |status| RuntimeError::Fetch {
            digest: digest.to_string(),
            status,
        };
        let mut stream = self
            .gateway
            .clone()
            .fetch_artifact(FetchArtifactRequest {
                digest: digest.to_string(),
            })
            .await
            .map_err(ferr)?
            .into_inner();
        let mut file = tokio::fs::File::create(path).await.map_err(io_err(path))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.message().await.map_err(ferr)? {
            hasher.update(&chunk.data);
            file.write_all(&chunk.data).await.map_err(io_err(path))?;
        }
        file.flush().await.map_err(io_err(path))?;
        if let Some(want) = digest.strip_prefix("sha256:") {
            let got = hex::encode(hasher.finalize());
            if !got.eq_ignore_ascii_case(want) {
                return Err(RuntimeError::DigestMismatch {
                    digest: digest.to_string(),
                    got: format!("sha256:{got}"),
                });
            }
        }
        Ok(())
    }

    /// Runs one request on the job's pool.
    pub(crate) async fn predict(
        &self,
        job_id: &str,
        payload: Vec<u8>,
        content_type: String,
    ) -> Result<Output, RuntimeError> {
        let pool = {
            let jobs = self.jobs.lock().expect("jobs");
            match jobs.get(job_id) {
                None => return Err(RuntimeError::UnknownJob(job_id.to_string())),
                Some(JobState::Preparing(_)) => {
                    return Err(RuntimeError::NotReady(job_id.to_string()))
                }
                Some(JobState::Failed(e)) => {
                    return Err(RuntimeError::JobFailed {
                        job: job_id.to_string(),
                        error: e.clone(),
                    })
                }
                Some(JobState::Serving(pool)) => pool.clone(),
            }
        };
        Ok(pool.call(payload, content_type).await?)
    }

    /// Ends every job's workers; `terminate` also removes the jobs' files.
    pub(crate) async fn stop(&self, terminate: bool) -> Result<(), RuntimeError> {
        let states: Vec<JobState> = {
            let mut jobs = self.jobs.lock().expect("jobs");
            jobs.drain().map(|(_, s)| s).collect()
        };
        for state in states {
            match state {
                JobState::Preparing(token) => token.cancel(),
                JobState::Serving(pool) => pool.shutdown().await,
                JobState::Failed(_) => {}
            }
        }
        if terminate {
            let dir = self.jobs_dir();
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(())
    }
}

impl Metrics for Runtime {
    fn in_flight(&self) -> u32 {
        self.pools().iter().map(|p| p.in_flight()).sum()
    }

    fn workers_alive(&self) -> u32 {
        self.pools().iter().map(|p| p.alive()).sum()
    }
}

impl Runtime {
    fn pools(&self) -> Vec<Arc<Pool>> {
        self.jobs
            .lock()
            .expect("jobs")
            .values()
            .filter_map(|s| match s {
                JobState::Serving(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }
}

/// (short message, traceback or full error) for a FAILED report.
fn failure_text(e: &RuntimeError) -> (String, String) {
    match e {
        RuntimeError::Pool(PoolError::Start(tb)) => (
            "predict.py failed to import or load_model() raised".to_string(),
            tb.clone(),
        ),
        RuntimeError::Env(_) => (
            "gearing up the Python environment failed".to_string(),
            e.to_string(),
        ),
        other => (other.to_string(), other.to_string()),
    }
}

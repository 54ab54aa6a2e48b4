//! The jobs this agent runs: Prepare (fetch + unpack the artifact, gear up the
//! environment, then for inference start the worker pool; reporting each phase),
//! Predict routing to the job's pool, Train (run train(), stream its progress,
//! upload its outputs), and Stop. A job's files live under `<dir>/jobs/<job_id>/`;
//! the unpacked repo is reused when the agent (or its instance) restarts or the job
//! is prepared again after a Stop that kept the files, and the environments under
//! `<dir>/envs/` are shared by jobs with the same requirements. Reports are queued
//! for the instance the agent ran as when Prepare or Train was called.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aibro_proto::v1::{AgentPhase, ArtifactRef, JobKind, PhaseReport};
use aibro_repo::manifest::{PREDICT_PY, TRAIN_PY};
use aibro_repo::DryRunOutcome;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Args;
use crate::environment;
use crate::environment::fetch::{self, FetchError};
use crate::environment::venv::{self, EnvError, PythonEnv};
use crate::link::gateway::Gateway;
use crate::link::identity::Identity;
use crate::link::reporter::{Metrics, ReportQueue, Reports};
use crate::sandbox::{Network, Sandbox};
use crate::scripts::Scripts;
use crate::serving::worker::{Output, WorkerError};
use crate::serving::worker_pool::{BatchPolicy, WorkerPool, WorkerPoolError, WorkerPoolSpec};
use crate::training::results::{self, ResultError};
use crate::training::trainer::{self, TrainError, TrainSpec};

#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error("job_id is empty")]
    NoJobId,
    #[error("this pool agent is idle (it runs no instance); Assign it an instance first")]
    Unassigned,
    #[error("this agent has no job `{0}`; send Prepare first")]
    UnknownJob(String),
    #[error("job `{0}` is still being prepared; retry when it reports SERVING")]
    NotReady(String),
    #[error("job `{job}` failed to prepare: {error}")]
    JobFailed { job: String, error: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("the repo has no predict.py at its root")]
    NoPredict,
    #[error("the repo has no train.py at its root; a training repo needs train.py defining train(output_dir, **args)")]
    NoTrain,
    #[error("job `{0}` was prepared for inference; Train needs a job prepared as TRAINING")]
    NotTraining(String),
    #[error("job `{0}` is a training job; it serves no Predict")]
    NotServing(String),
    #[error("job `{0}` is still being prepared; send Train after it reports SERVING")]
    TrainNotReady(String),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Results(#[from] ResultError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gearing up the Python environment failed: {0}")]
    Env(#[from] EnvError),
    #[error(transparent)]
    Pool(#[from] WorkerPoolError),
}

/// Where a job this agent has been given stands.
enum LocalJob {
    Preparing(CancellationToken),
    /// An inference job serving Predict.
    Serving(Arc<WorkerPool>),
    /// A prepared training job, ready for Train.
    Ready(Arc<TrainJob>),
    /// Train is running (training, or uploading the outputs).
    Training(CancellationToken),
    /// Training ended: its final report (RETURNED or FAILED), re-sent on a
    /// repeated Train.
    Trained(PhaseReport),
    Failed(String),
}

/// A prepared training job.
pub(crate) struct TrainJob {
    python: PathBuf,
    repo: PathBuf,
    job_dir: PathBuf,
    network: Network,
}

/// How Prepare wants a job run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobOptions {
    pub kind: JobKind,
    pub batching: BatchPolicy,
    /// The network of its serving or training processes.
    pub network: Network,
}

/// What a successful preparation leaves.
enum Prepared {
    Pool(WorkerPool),
    Training(Arc<TrainJob>),
}

/// What the agent's jobs share.
pub(crate) struct JobsConfig {
    pub args: Args,
    pub scripts: Scripts,
    pub gateway: Gateway,
    pub queue: ReportQueue,
    pub identity: Arc<Identity>,
    /// This agent's GPUs: spread over a job's workers, all of them for training.
    pub gpus: Vec<u32>,
    pub cancel: CancellationToken,
    /// What every process of a user's repo runs in.
    pub sandbox: Arc<Sandbox>,
    /// What the worker pools record for `/metrics`.
    pub serving: crate::metrics::ServingMetrics,
}

pub(crate) struct Jobs {
    config: JobsConfig,
    jobs: Mutex<HashMap<String, LocalJob>>,
    /// The running Prepare and Train tasks (Stop waits for them, and so for the
    /// processes they started).
    tasks: TaskTracker,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JobError + '_ {
    move |source| JobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Jobs {
    pub(crate) fn new(config: JobsConfig) -> Jobs {
        Jobs {
            config,
            jobs: Mutex::default(),
            tasks: TaskTracker::new(),
        }
    }

    fn jobs_dir(&self) -> PathBuf {
        self.config.args.dir.join("jobs")
    }

    /// Reports for the instance this agent runs as now; an idle pool agent takes
    /// no work.
    fn reports(&self) -> Result<Reports, JobError> {
        let instance = self.config.identity.instance();
        if instance.is_empty() {
            return Err(JobError::Unassigned);
        }
        Ok(self.config.queue.of(&instance))
    }

    /// Runs the repo of artifact `digest` once on its sample input in a
    /// directory of its own, removed afterwards: nothing of it stays.
    pub(crate) async fn dry_run(
        &self,
        job_id: &str,
        digest: &str,
        network: Network,
    ) -> Result<DryRunOutcome, JobError> {
        if job_id.is_empty() {
            return Err(JobError::NoJobId);
        }
        self.reports()?;
        let work = self.jobs_dir().join(format!("dryrun-{job_id}"));
        remove_dir_if_present(&work).await?;
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(io_err(&work))?;
        let archive = work.join("artifact.tar.gz");
        let outcome = match fetch::archive(&self.config.gateway, digest, &archive).await {
            Ok(()) => {
                let (sandbox, pip) = (&self.config.sandbox, &self.config.args.pip);
                environment::dry_run::dry_run(sandbox, &work, &archive, pip, network).await
            }
            Err(e) => DryRunOutcome::failed(e.to_string()),
        };
        remove_dir_if_present(&work).await?;
        Ok(outcome)
    }

    /// Starts preparing `job_id` in the background; idempotent while it prepares or
    /// is prepared (a repeated Prepare of a serving or ready job re-reports SERVING).
    pub(crate) fn prepare(
        self: &Arc<Self>,
        job_id: String,
        digest: String,
        options: JobOptions,
    ) -> Result<(), JobError> {
        if job_id.is_empty() {
            return Err(JobError::NoJobId);
        }
        let reports = self.reports()?;
        let token = self.config.cancel.child_token();
        {
            let mut jobs = self.jobs.lock().expect("jobs");
            match jobs.get(&job_id) {
                Some(LocalJob::Preparing(_) | LocalJob::Training(_) | LocalJob::Trained(_)) => {
                    return Ok(())
                }
                Some(job @ (LocalJob::Serving(_) | LocalJob::Ready(_))) => {
                    let text = ready_text(matches!(job, LocalJob::Ready(_)));
                    drop(jobs);
                    reports.phase(&job_id, AgentPhase::Serving, text);
                    return Ok(());
                }
                Some(LocalJob::Failed(_)) | None => {}
            }
            jobs.insert(job_id.clone(), LocalJob::Preparing(token.clone()));
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let res = this
                .prepare_job(&reports, &job_id, &digest, options, &token)
                .await;
            if let Some(stale) = this.finish(&reports, &job_id, res) {
                stale.shutdown().await;
            }
        });
        Ok(())
    }

    /// Records the outcome of a preparation and reports it. Returns the pool when the
    /// job was stopped meanwhile (the caller ends it).
    fn finish(
        &self,
        reports: &Reports,
        job_id: &str,
        res: Result<Prepared, JobError>,
    ) -> Option<WorkerPool> {
        let mut jobs = self.jobs.lock().expect("jobs");
        let current = matches!(jobs.get(job_id), Some(LocalJob::Preparing(t)) if !t.is_cancelled());
        match res {
            Ok(prepared) if current => {
                let (job, training) = match prepared {
                    Prepared::Pool(pool) => (LocalJob::Serving(Arc::new(pool)), false),
                    Prepared::Training(job) => (LocalJob::Ready(job), true),
                };
                jobs.insert(job_id.to_string(), job);
                drop(jobs);
                reports.phase(job_id, AgentPhase::Serving, ready_text(training));
                None
            }
            Ok(Prepared::Pool(pool)) => Some(pool),
            Ok(Prepared::Training(_)) => None,
            Err(e) if current => {
                let (message, traceback) = failure_text(&e);
                jobs.insert(job_id.to_string(), LocalJob::Failed(message.clone()));
                drop(jobs);
                tracing::error!(job_id = %job_id, "prepare failed: {traceback}");
                reports.send(PhaseReport {
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

    /// Fetches and unpacks the repo, gears up its environment (GEARING_UP_ENV only
    /// when no ready one exists, then MODEL_LOADING) and, for inference, starts the
    /// worker pool. Cancelling `token` stops it; workers already started are ended
    /// (and waited for) before it returns.
    async fn prepare_job(
        &self,
        reports: &Reports,
        job_id: &str,
        digest: &str,
        options: JobOptions,
        token: &CancellationToken,
    ) -> Result<Prepared, JobError> {
        let training = options.kind == JobKind::Training;
        let job_dir = self.jobs_dir().join(job_id);
        let (repo, penv) = tokio::select! {
            _ = token.cancelled() => return Err(WorkerPoolError::Stopped.into()),
            r = self.set_up(reports, job_id, &job_dir, digest, training) => r?,
        };
        if training {
            return Ok(Prepared::Training(Arc::new(TrainJob {
                python: penv.python,
                repo,
                job_dir,
                network: options.network,
            })));
        }
        let spec = WorkerPoolSpec {
            python: &penv.python,
            script: &self.config.scripts.worker,
            repo: &repo,
            workers_dir: &job_dir.join("workers"),
            workers: self.config.args.workers,
            gpus: &self.config.gpus,
            batching: options.batching,
            home: &job_dir.join("home"),
            network: options.network,
            sandbox: &self.config.sandbox,
            metrics: &self.config.serving,
        };
        let pool = WorkerPool::start(spec, token.child_token()).await?;
        Ok(Prepared::Pool(pool))
    }

    /// The job's repo, unpacked and checked, and its environment, geared up;
    /// reports MODEL_LOADING when both are ready.
    async fn set_up(
        &self,
        reports: &Reports,
        job_id: &str,
        job_dir: &Path,
        digest: &str,
        training: bool,
    ) -> Result<(PathBuf, PythonEnv), JobError> {
        let repo = fetch::repo(&self.config.gateway, job_dir, digest).await?;
        if training {
            if !repo.join(TRAIN_PY).is_file() {
                return Err(JobError::NoTrain);
            }
        } else if !repo.join(PREDICT_PY).is_file() {
            return Err(JobError::NoPredict);
        }
        let penv = self.gear_up(reports, job_id, &repo).await?;
        reports.send(PhaseReport {
            job_id: job_id.to_string(),
            phase: AgentPhase::ModelLoading.into(),
            message: if training {
                "model repo and data unpacked".into()
            } else {
                "loading the model".into()
            },
            env_cached: penv.cached,
            ..PhaseReport::default()
        });
        Ok((repo, penv))
    }

    /// Reports GEARING_UP_ENV unless a ready environment exists, and gears up.
    async fn gear_up(
        &self,
        reports: &Reports,
        job_id: &str,
        repo: &Path,
    ) -> Result<PythonEnv, JobError> {
        let args = &self.config.args;
        let envs = args.dir.join("envs");
        if !venv::is_cached(repo, &envs) {
            reports.phase(
                job_id,
                AgentPhase::GearingUpEnv,
                "gearing up the Python environment",
            );
        }
        Ok(venv::gear_up(&self.config.sandbox, repo, &envs, &args.pip).await?)
    }

    /// Runs one request on the job's pool.
    pub(crate) async fn predict(
        &self,
        job_id: &str,
        payload: Vec<u8>,
        content_type: String,
    ) -> Result<Output, JobError> {
        let pool = {
            let jobs = self.jobs.lock().expect("jobs");
            match jobs.get(job_id) {
                None => return Err(JobError::UnknownJob(job_id.to_string())),
                Some(LocalJob::Preparing(_)) => return Err(JobError::NotReady(job_id.to_string())),
                Some(LocalJob::Failed(e)) => {
                    return Err(JobError::JobFailed {
                        job: job_id.to_string(),
                        error: e.clone(),
                    })
                }
                Some(LocalJob::Serving(pool)) => pool.clone(),
                Some(LocalJob::Ready(_) | LocalJob::Training(_) | LocalJob::Trained(_)) => {
                    return Err(JobError::NotServing(job_id.to_string()))
                }
            }
        };
        Ok(pool.call(payload, content_type).await?)
    }

    /// Starts `train(output_dir, **args)` of a prepared training job in the
    /// background: TRAINING, Progress reports, RETURNING, then RETURNED or FAILED.
    /// A repeated Train while it runs does nothing; once it has ended, it re-sends
    /// the final report.
    pub(crate) fn train(
        self: &Arc<Self>,
        job_id: String,
        args: HashMap<String, String>,
    ) -> Result<(), JobError> {
        if job_id.is_empty() {
            return Err(JobError::NoJobId);
        }
        let reports = self.reports()?;
        let token = self.config.cancel.child_token();
        let job = {
            let mut jobs = self.jobs.lock().expect("jobs");
            let job = match jobs.get(&job_id) {
                None => return Err(JobError::UnknownJob(job_id)),
                Some(LocalJob::Preparing(_)) => return Err(JobError::TrainNotReady(job_id)),
                Some(LocalJob::Serving(_)) => return Err(JobError::NotTraining(job_id)),
                Some(LocalJob::Failed(e)) => {
                    return Err(JobError::JobFailed {
                        job: job_id,
                        error: e.clone(),
                    })
                }
                Some(LocalJob::Training(_)) => return Ok(()),
                Some(LocalJob::Trained(last)) => {
                    let last = last.clone();
                    drop(jobs);
                    reports.send(last);
                    return Ok(());
                }
                Some(LocalJob::Ready(job)) => job.clone(),
            };
            jobs.insert(job_id.clone(), LocalJob::Training(token.clone()));
            job
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let Some(last) = this.train_job(&reports, &job_id, &job, &args, &token).await else {
                return;
            };
            let mut jobs = this.jobs.lock().expect("jobs");
            if matches!(jobs.get(&job_id), Some(LocalJob::Training(t)) if !t.is_cancelled()) {
                jobs.insert(job_id, LocalJob::Trained(last.clone()));
                drop(jobs);
                reports.send(last);
            }
        });
        Ok(())
    }

    /// Runs one training job to its final report (None when stopped).
    async fn train_job(
        &self,
        reports: &Reports,
        job_id: &str,
        job: &TrainJob,
        args: &HashMap<String, String>,
        token: &CancellationToken,
    ) -> Option<PhaseReport> {
        reports.phase(job_id, AgentPhase::Training, "training");
        match self
            .train_and_upload(reports, job_id, job, args, token)
            .await
        {
            Ok(result) => Some(PhaseReport {
                job_id: job_id.to_string(),
                phase: AgentPhase::Returned.into(),
                message: format!("training outputs uploaded ({} bytes)", result.size),
                result_digest: result.digest,
                result_size: result.size,
                ..PhaseReport::default()
            }),
            Err(JobError::Train(TrainError::Stopped)) => None,
            Err(e) => {
                let (message, traceback) = failure_text(&e);
                tracing::error!(job_id = %job_id, "training failed: {traceback}");
                Some(PhaseReport {
                    job_id: job_id.to_string(),
                    phase: AgentPhase::Failed.into(),
                    message,
                    traceback,
                    ..PhaseReport::default()
                })
            }
        }
    }

    /// Trains in a fresh output directory, then returns what train() wrote.
    async fn train_and_upload(
        &self,
        reports: &Reports,
        job_id: &str,
        job: &TrainJob,
        args: &HashMap<String, String>,
        token: &CancellationToken,
    ) -> Result<ArtifactRef, JobError> {
        let spec = self.train_spec(job_id, job, args).await?;
        trainer::run(&spec, reports, token).await?;
        if token.is_cancelled() {
            return Err(TrainError::Stopped.into());
        }
        reports.phase(
            job_id,
            AgentPhase::Returning,
            "uploading the training outputs",
        );
        let (output, dir) = (spec.output_dir, job.job_dir.clone());
        let packed = tokio::task::spawn_blocking(move || results::pack(&output, &dir))
            .await
            .expect("pack task")?;
        tokio::select! {
            _ = token.cancelled() => Err(TrainError::Stopped.into()),
            r = results::upload(&self.config.gateway, job_id, &packed) => Ok(r?),
        }
    }

    /// The training run of `job`: an empty output directory and the arguments
    /// written where trainer.py reads them.
    async fn train_spec(
        &self,
        job_id: &str,
        job: &TrainJob,
        args: &HashMap<String, String>,
    ) -> Result<TrainSpec, JobError> {
        let output = job.job_dir.join("output");
        remove_dir_if_present(&output).await?;
        tokio::fs::create_dir_all(&output)
            .await
            .map_err(io_err(&output))?;
        let args_file = job.job_dir.join("train-args.json");
        let json = serde_json::to_vec(args).expect("args as JSON");
        tokio::fs::write(&args_file, json)
            .await
            .map_err(io_err(&args_file))?;
        Ok(TrainSpec {
            job_id: job_id.to_string(),
            python: job.python.clone(),
            script: self.config.scripts.trainer.clone(),
            repo: job.repo.clone(),
            output_dir: output,
            args_file,
            gpus: self.config.gpus.clone(),
            home: job.job_dir.join("home"),
            network: job.network,
            sandbox: self.config.sandbox.clone(),
        })
    }

    /// Ends every job's workers and training processes, and waits for them to exit
    /// (their GPU memory is free then); `terminate` also removes the jobs' files.
    /// The environments (`envs/`) are kept for later jobs, and without `terminate`
    /// so are the unpacked repos, which a later Prepare of the same job reuses.
    pub(crate) async fn stop(&self, terminate: bool) -> Result<(), JobError> {
        let jobs: Vec<LocalJob> = {
            let mut jobs = self.jobs.lock().expect("jobs");
            jobs.drain().map(|(_, job)| job).collect()
        };
        for job in jobs {
            match job {
                LocalJob::Preparing(token) | LocalJob::Training(token) => token.cancel(),
                LocalJob::Serving(pool) => pool.shutdown().await,
                LocalJob::Ready(_) | LocalJob::Trained(_) | LocalJob::Failed(_) => {}
            }
        }
        // Workers still loading and training processes are ended (and waited
        // for) by their tasks.
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
        if terminate {
            remove_dir_if_present(&self.jobs_dir()).await?;
        }
        Ok(())
    }

    fn pools(&self) -> Vec<Arc<WorkerPool>> {
        self.jobs
            .lock()
            .expect("jobs")
            .values()
            .filter_map(|job| match job {
                LocalJob::Serving(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Metrics for Jobs {
    fn in_flight(&self) -> u32 {
        self.pools().iter().map(|p| p.in_flight()).sum()
    }

    fn workers_alive(&self) -> u32 {
        self.pools().iter().map(|p| p.alive()).sum()
    }

    fn queued(&self) -> u32 {
        self.pools().iter().map(|p| p.queued()).sum()
    }

    fn workers(&self) -> u32 {
        self.pools().iter().map(|p| p.size()).sum()
    }
}

async fn remove_dir_if_present(dir: &Path) -> Result<(), JobError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// What SERVING means for the job's kind.
fn ready_text(training: bool) -> &'static str {
    if training {
        "ready to train"
    } else {
        "serving"
    }
}

/// (short message, traceback or full error) for a FAILED report.
fn failure_text(e: &JobError) -> (String, String) {
    match e {
        JobError::Train(TrainError::Raised(tb)) => {
            let last = tb
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            (format!("train() failed: {last}"), tb.clone())
        }
        JobError::Train(e @ TrainError::Died { .. }) => (
            e.to_string().lines().next().unwrap_or_default().to_string(),
            e.to_string(),
        ),
        JobError::Results(
            ResultError::Pack(_) | ResultError::Upload(_) | ResultError::UploadMismatch { .. },
        ) => (
            "returning the training outputs failed".to_string(),
            e.to_string(),
        ),
        // The sandbox (or the launcher) refused: its reason is the message.
        JobError::Pool(WorkerPoolError::Start(e @ WorkerError::Spawn { .. })) => {
            (e.to_string(), e.to_string())
        }
        JobError::Pool(WorkerPoolError::Start(e)) => (
            "predict.py failed to import or load_model() raised".to_string(),
            e.to_string(),
        ),
        JobError::Env(_) => (
            "gearing up the Python environment failed".to_string(),
            e.to_string(),
        ),
        other => (other.to_string(), other.to_string()),
    }
}

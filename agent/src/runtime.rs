//! The jobs this agent runs: Prepare (fetch + unpack the artifact, gear up the
//! environment, then for inference start the worker pool; reporting each phase),
//! Predict routing to the job's pool, Train (run train(), stream its progress,
//! upload its outputs), and Stop. A job's files live under `<dir>/jobs/<job_id>/`;
//! the unpacked repo is reused when the agent (or its instance) restarts or the job
//! is prepared again after a Stop that kept the files, and the environments under
//! `<dir>/envs/` are shared by jobs with the same requirements. Reports are queued
//! for the instance the agent ran as when Prepare or Train was called.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aibro_proto::v1::{
    AgentPhase, ArtifactRef, FetchArtifactRequest, JobKind, PhaseReport, ResultChunk,
};
use aibro_repo::archive::{self, ArchiveError, Limits};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Args;
use crate::env::{self, EnvError, PythonEnv};
use crate::identity::Identity;
use crate::pool::{Batching, Pool, PoolError, PoolSpec};
use crate::reporter::{Gateway, Metrics, ReportQueue, Reports};
use crate::trainer::{self, TrainError, TrainSpec};
use crate::worker::Output;

/// Tries at fetching a repo or uploading outputs while the scheduler is unreachable.
const SCHEDULER_TRIES: u32 = 8;
/// Data bytes per `ResultChunk` of an uploaded result.
const UPLOAD_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeError {
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
    #[error("cannot pack the training outputs: {0}")]
    Pack(#[source] std::io::Error),
    #[error("uploading the training outputs to the scheduler failed: {0}")]
    Upload(tonic::Status),
    #[error("the scheduler stored the training outputs as `{got}` but `{sent}` was sent; the upload is corrupt")]
    UploadMismatch { sent: String, got: String },
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
    /// An inference job serving Predict.
    Serving(Arc<Pool>),
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
}

/// What a successful preparation leaves.
enum Prepared {
    Pool(Pool),
    Training(Arc<TrainJob>),
}

/// The embedded worker.py and trainer.py, written into the agent's dir.
pub(crate) struct Scripts {
    pub worker: PathBuf,
    pub trainer: PathBuf,
}

pub(crate) struct Runtime {
    args: Args,
    scripts: Scripts,
    gateway: Gateway,
    queue: ReportQueue,
    identity: Arc<Identity>,
    /// This agent's GPUs: spread over a job's workers, all of them for training.
    gpus: Vec<u32>,
    cancel: CancellationToken,
    jobs: Mutex<HashMap<String, JobState>>,
    /// The running Prepare and Train tasks (Stop waits for them, and so for the
    /// processes they started).
    tasks: TaskTracker,
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
        scripts: Scripts,
        gateway: Gateway,
        queue: ReportQueue,
        identity: Arc<Identity>,
        gpus: Vec<u32>,
        cancel: CancellationToken,
    ) -> Runtime {
        Runtime {
            args,
            scripts,
            gateway,
            queue,
            identity,
            gpus,
            cancel,
            jobs: Mutex::default(),
            tasks: TaskTracker::new(),
        }
    }

    fn jobs_dir(&self) -> PathBuf {
        self.args.dir.join("jobs")
    }

    /// Reports for the instance this agent runs as now; an idle pool agent takes
    /// no work.
    fn reports(&self) -> Result<Reports, RuntimeError> {
        let instance = self.identity.instance();
        if instance.is_empty() {
            return Err(RuntimeError::Unassigned);
        }
        Ok(self.queue.of(&instance))
    }

    /// Starts preparing `job_id` in the background; idempotent while it prepares or
    /// is prepared (a repeated Prepare of a serving or ready job re-reports SERVING).
    pub(crate) fn prepare(
        self: &Arc<Self>,
        job_id: String,
        digest: String,
        kind: JobKind,
        batching: Batching,
    ) -> Result<(), RuntimeError> {
        if job_id.is_empty() {
            return Err(RuntimeError::NoJobId);
        }
        let reports = self.reports()?;
        let training = kind == JobKind::Training;
        let token = self.cancel.child_token();
        {
            let mut jobs = self.jobs.lock().expect("jobs");
            match jobs.get(&job_id) {
                Some(JobState::Preparing(_) | JobState::Training(_) | JobState::Trained(_)) => {
                    return Ok(())
                }
                Some(state @ (JobState::Serving(_) | JobState::Ready(_))) => {
                    let text = ready_text(matches!(state, JobState::Ready(_)));
                    drop(jobs);
                    reports.phase(&job_id, AgentPhase::Serving, text);
                    return Ok(());
                }
                Some(JobState::Failed(_)) | None => {}
            }
            jobs.insert(job_id.clone(), JobState::Preparing(token.clone()));
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let res = this
                .prepare_job(&reports, &job_id, &digest, training, batching, &token)
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
        res: Result<Prepared, RuntimeError>,
    ) -> Option<Pool> {
        let mut jobs = self.jobs.lock().expect("jobs");
        let current = matches!(jobs.get(job_id), Some(JobState::Preparing(t)) if !t.is_cancelled());
        match res {
            Ok(prepared) if current => {
                let (state, training) = match prepared {
                    Prepared::Pool(pool) => (JobState::Serving(Arc::new(pool)), false),
                    Prepared::Training(job) => (JobState::Ready(job), true),
                };
                jobs.insert(job_id.to_string(), state);
                drop(jobs);
                reports.phase(job_id, AgentPhase::Serving, ready_text(training));
                None
            }
            Ok(Prepared::Pool(pool)) => Some(pool),
            Ok(Prepared::Training(_)) => None,
            Err(e) if current => {
                let (message, traceback) = failure_text(&e);
                jobs.insert(job_id.to_string(), JobState::Failed(message.clone()));
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
        training: bool,
        batching: Batching,
        token: &CancellationToken,
    ) -> Result<Prepared, RuntimeError> {
        let job_dir = self.jobs_dir().join(job_id);
        let (repo, penv) = tokio::select! {
            _ = token.cancelled() => return Err(PoolError::Stopped.into()),
            r = self.set_up(reports, job_id, &job_dir, digest, training) => r?,
        };
        if training {
            return Ok(Prepared::Training(Arc::new(TrainJob {
                python: penv.python,
                repo,
                job_dir,
            })));
        }
        let spec = PoolSpec {
            python: &penv.python,
            script: &self.scripts.worker,
            repo: &repo,
            workers_dir: &job_dir.join("workers"),
            workers: self.args.workers,
            gpus: &self.gpus,
            batching,
        };
        let pool = Pool::start(spec, token.child_token()).await?;
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
    ) -> Result<(PathBuf, PythonEnv), RuntimeError> {
        let repo = self.fetch_repo(job_dir, digest).await?;
        if training {
            if !repo.join("train.py").is_file() {
                return Err(RuntimeError::NoTrain);
            }
        } else if !repo.join("predict.py").is_file() {
            return Err(RuntimeError::NoPredict);
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

    /// The unpacked repo of the job: fetched and unpacked unless a complete one of
    /// the same artifact is already on disk.
    async fn fetch_repo(&self, job_dir: &Path, digest: &str) -> Result<PathBuf, RuntimeError> {
        let repo = job_dir.join("repo");
        let marker = job_dir.join("repo.complete");
        if tokio::fs::read_to_string(&marker).await.ok().as_deref() == Some(digest) {
            tracing::info!(job_dir = %job_dir.display(), "reusing the unpacked repo");
            return Ok(repo);
        }
        tokio::fs::create_dir_all(job_dir)
            .await
            .map_err(io_err(job_dir))?;
        let archive_path = job_dir.join("artifact.tar.gz");
        retrying("fetching the repo", || self.fetch(digest, &archive_path)).await?;
        match tokio::fs::remove_file(&marker).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&marker)(e)),
        }
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
        Ok(repo)
    }

    /// Reports GEARING_UP_ENV unless a ready environment exists, and gears up.
    async fn gear_up(
        &self,
        reports: &Reports,
        job_id: &str,
        repo: &Path,
    ) -> Result<PythonEnv, RuntimeError> {
        let envs = self.args.dir.join("envs");
        if !env::is_cached(repo, &envs) {
            reports.phase(
                job_id,
                AgentPhase::GearingUpEnv,
                "gearing up the Python environment",
            );
        }
        Ok(env::gear_up(&self.args.python, repo, &envs, &self.args.pip).await?)
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
                Some(JobState::Ready(_) | JobState::Training(_) | JobState::Trained(_)) => {
                    return Err(RuntimeError::NotServing(job_id.to_string()))
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
    ) -> Result<(), RuntimeError> {
        if job_id.is_empty() {
            return Err(RuntimeError::NoJobId);
        }
        let reports = self.reports()?;
        let token = self.cancel.child_token();
        let job = {
            let mut jobs = self.jobs.lock().expect("jobs");
            let job = match jobs.get(&job_id) {
                None => return Err(RuntimeError::UnknownJob(job_id)),
                Some(JobState::Preparing(_)) => return Err(RuntimeError::TrainNotReady(job_id)),
                Some(JobState::Serving(_)) => return Err(RuntimeError::NotTraining(job_id)),
                Some(JobState::Failed(e)) => {
                    return Err(RuntimeError::JobFailed {
                        job: job_id,
                        error: e.clone(),
                    })
                }
                Some(JobState::Training(_)) => return Ok(()),
                Some(JobState::Trained(last)) => {
                    let last = last.clone();
                    drop(jobs);
                    reports.send(last);
                    return Ok(());
                }
                Some(JobState::Ready(job)) => job.clone(),
            };
            jobs.insert(job_id.clone(), JobState::Training(token.clone()));
            job
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let Some(last) = this.train_job(&reports, &job_id, &job, &args, &token).await else {
                return;
            };
            let mut jobs = this.jobs.lock().expect("jobs");
            if matches!(jobs.get(&job_id), Some(JobState::Training(t)) if !t.is_cancelled()) {
                jobs.insert(job_id, JobState::Trained(last.clone()));
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
            Err(RuntimeError::Train(TrainError::Stopped)) => None,
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

    async fn train_and_upload(
        &self,
        reports: &Reports,
        job_id: &str,
        job: &TrainJob,
        args: &HashMap<String, String>,
        token: &CancellationToken,
    ) -> Result<ArtifactRef, RuntimeError> {
        let output = job.job_dir.join("output");
        match tokio::fs::remove_dir_all(&output).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&output)(e)),
        }
        tokio::fs::create_dir_all(&output)
            .await
            .map_err(io_err(&output))?;
        let args_file = job.job_dir.join("train-args.json");
        let json = serde_json::to_vec(args).expect("args as JSON");
        tokio::fs::write(&args_file, json)
            .await
            .map_err(io_err(&args_file))?;
        let spec = TrainSpec {
            job_id: job_id.to_string(),
            python: job.python.clone(),
            script: self.scripts.trainer.clone(),
            repo: job.repo.clone(),
            output_dir: output.clone(),
            args_file,
            gpus: self.gpus.clone(),
        };
        trainer::run(&spec, reports, token).await?;
        if token.is_cancelled() {
            return Err(TrainError::Stopped.into());
        }
        reports.phase(
            job_id,
            AgentPhase::Returning,
            "uploading the training outputs",
        );
        let dir = job.job_dir.clone();
        let (packed, sent) = tokio::task::spawn_blocking(move || pack(&output, &dir))
            .await
            .expect("pack task")
            .map_err(RuntimeError::Pack)?;
        let stored = tokio::select! {
            _ = token.cancelled() => return Err(TrainError::Stopped.into()),
            r = retrying("uploading the outputs", || self.upload(job_id, packed.path())) => r?,
        };
        if stored.digest != sent.digest || stored.size != sent.size {
            return Err(RuntimeError::UploadMismatch {
                sent: format!("{} ({} bytes)", sent.digest, sent.size),
                got: format!("{} ({} bytes)", stored.digest, stored.size),
            });
        }
        Ok(stored)
    }

    /// Streams the file at `path` to the scheduler in `ResultChunk`s.
    async fn upload(&self, job_id: &str, path: &Path) -> Result<ArtifactRef, RuntimeError> {
        let file = tokio::fs::File::open(path).await.map_err(io_err(path))?;
        let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
        let job = job_id.to_string();
        let errs = read_error.clone();
        let chunks = futures::stream::unfold(Some(file), move |file| {
            let job = job.clone();
            let errs = errs.clone();
            async move {
                let mut file = file?;
                let mut data = vec![0; UPLOAD_CHUNK];
                let mut n = 0;
                while n < UPLOAD_CHUNK {
                    match file.read(&mut data[n..]).await {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => {
                            *errs.lock().expect("upload error") = Some(e);
                            return None;
                        }
                    }
                }
                if n == 0 {
                    return None;
                }
                data.truncate(n);
                let next = (n == UPLOAD_CHUNK).then_some(file);
                Some((ResultChunk { job_id: job, data }, next))
            }
        });
        let res = self.gateway.clone().upload_result(chunks).await;
        if let Some(e) = read_error.lock().expect("upload error").take() {
            return Err(io_err(path)(e));
        }
        Ok(res.map_err(RuntimeError::Upload)?.into_inner())
    }

    /// Ends every job's workers and training processes, and waits for them to exit
    /// (their GPU memory is free then); `terminate` also removes the jobs' files.
    /// The environments (`envs/`) are kept for later jobs, and without `terminate`
    /// so are the unpacked repos, which a later Prepare of the same job reuses.
    pub(crate) async fn stop(&self, terminate: bool) -> Result<(), RuntimeError> {
        let states: Vec<JobState> = {
            let mut jobs = self.jobs.lock().expect("jobs");
            jobs.drain().map(|(_, s)| s).collect()
        };
        for state in states {
            match state {
                JobState::Preparing(token) | JobState::Training(token) => token.cancel(),
                JobState::Serving(pool) => pool.shutdown().await,
                JobState::Ready(_) | JobState::Trained(_) | JobState::Failed(_) => {}
            }
        }
        // Workers still loading and training processes are ended (and waited
        // for) by their tasks.
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
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

impl RuntimeError {
    /// The scheduler could not be reached (it may be restarting): worth another try.
    fn is_transient(&self) -> bool {
        let status = match self {
            RuntimeError::Upload(status) | RuntimeError::Fetch { status, .. } => status,
            _ => return false,
        };
        matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
        )
    }
}

/// Runs `attempt` again, with backoff, while it fails to reach the scheduler
/// (e.g. while it restarts); `SCHEDULER_TRIES` tries in all.
async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, RuntimeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RuntimeError>>,
{
    let mut backoff = std::time::Duration::from_millis(200);
    for _ in 1..SCHEDULER_TRIES {
        match attempt().await {
            Err(e) if e.is_transient() => {
                tracing::warn!("{what} failed, retrying in {backoff:?}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
            other => return other,
        }
    }
    attempt().await
}

impl Metrics for Runtime {
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

/// What SERVING means for the job's kind.
fn ready_text(training: bool) -> &'static str {
    if training {
        "ready to train"
    } else {
        "serving"
    }
}

/// Packs `output` into a temporary file in `dir`; returns it with its address.
fn pack(output: &Path, dir: &Path) -> std::io::Result<(tempfile::NamedTempFile, ArtifactRef)> {
    struct Hashing<W> {
        inner: W,
        hasher: Sha256,
        size: u64,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let mut file = tempfile::Builder::new()
        .prefix(".result-")
        .suffix(".tar.gz")
        .tempfile_in(dir)?;
    let r = {
        let mut w = Hashing {
            inner: std::io::BufWriter::new(file.as_file_mut()),
            hasher: Sha256::new(),
            size: 0,
        };
        archive::pack_dir(output, &mut w)?;
        w.flush()?;
        ArtifactRef {
            digest: format!("sha256:{}", hex::encode(w.hasher.finalize())),
            size: w.size,
        }
    };
    Ok((file, r))
}

/// (short message, traceback or full error) for a FAILED report.
fn failure_text(e: &RuntimeError) -> (String, String) {
    match e {
        RuntimeError::Train(TrainError::Raised(tb)) => {
            let last = tb
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            (format!("train() failed: {last}"), tb.clone())
        }
        RuntimeError::Train(e @ TrainError::Died { .. }) => (
            e.to_string().lines().next().unwrap_or_default().to_string(),
            e.to_string(),
        ),
        RuntimeError::Upload(_) | RuntimeError::UploadMismatch { .. } | RuntimeError::Pack(_) => (
            "returning the training outputs failed".to_string(),
            e.to_string(),
        ),
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

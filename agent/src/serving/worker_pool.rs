//! A pool of N persistent workers serving one bounded request queue. Each worker
//! has its own directory (and `data/` copy) and handles one request at a time, so
//! legacy `run(model)` requests never race. A worker that dies is restarted in the
//! background; the request that hit it fails with a retryable error. The agent's
//! GPUs are spread over the workers (see [`spread`]). When predict.py defines
//! `run_batch`, a free worker takes up to [`BatchPolicy::max_size`] queued requests at
//! once, waiting up to [`BatchPolicy::max_wait`] after the first, for one call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::ServingMetrics;
use crate::sandbox::{Network, Sandbox};
use crate::serving::worker::{Output, Worker, WorkerError, WorkerSpec};

pub(crate) const QUEUE_CAPACITY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerPoolError {
    #[error("agent overloaded: {QUEUE_CAPACITY} requests are already queued; retry later")]
    Overloaded,
    #[error("the worker serving this request died; the request was not completed and can be retried ({0})")]
    WorkerDied(String),
    #[error("the model is being unloaded; retry on another instance")]
    Stopped,
    /// `run()` raised: the Python traceback.
    #[error("run() raised:\n{0}")]
    RunRaised(String),
    #[error("{0}")]
    BadInput(String),
    /// A worker could not be started (the traceback or error).
    #[error("{0}")]
    Start(#[source] WorkerError),
    #[error("cannot prepare the worker directory `{path}`: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WorkerPoolError {
    /// The outcome label of a prediction that failed with it.
    fn outcome(&self) -> &'static str {
        match self {
            WorkerPoolError::Overloaded => "overloaded",
            WorkerPoolError::WorkerDied(_) => "worker_died",
            WorkerPoolError::Stopped => "stopped",
            WorkerPoolError::RunRaised(_) => "user_error",
            WorkerPoolError::BadInput(_) => "bad_input",
            WorkerPoolError::Start(_) | WorkerPoolError::Dir { .. } => "internal",
        }
    }
}

/// Dynamic batching of the requests a worker takes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchPolicy {
    /// Most requests per run_batch call; 1 turns batching off.
    pub max_size: usize,
    /// How long a batch waits for more requests after its first.
    pub max_wait: Duration,
}

impl BatchPolicy {
    pub(crate) const OFF: BatchPolicy = BatchPolicy {
        max_size: 1,
        max_wait: Duration::ZERO,
    };
}

/// What a pool runs: the interpreter and worker script, the repo, where the
/// workers' directories go, how many, on which GPUs, and how they batch.
pub(crate) struct WorkerPoolSpec<'a> {
    pub python: &'a Path,
    pub script: &'a Path,
    pub repo: &'a Path,
    pub workers_dir: &'a Path,
    pub workers: usize,
    pub gpus: &'a [u32],
    pub batching: BatchPolicy,
    /// The HOME of its workers.
    pub home: &'a Path,
    pub network: Network,
    pub sandbox: &'a Arc<Sandbox>,
    /// Where its predictions, batches and restarts are counted.
    pub metrics: &'a ServingMetrics,
}

/// A queued call, counted as queued until a worker takes it.
struct Request {
    call: Call,
    _waiting: Waiting,
}

impl Request {
    /// Taken by a worker: no longer counted as queued.
    fn taken(self) -> Call {
        self.call
    }
}

struct Call {
    payload: Vec<u8>,
    content_type: String,
    reply: oneshot::Sender<Result<Output, WorkerPoolError>>,
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicU32,
    /// Fired whenever a request is answered or abandoned.
    done: tokio::sync::Notify,
    queued: AtomicU32,
    alive: AtomicU32,
    pids: std::sync::Mutex<Vec<u32>>,
    metrics: ServingMetrics,
}

pub(crate) struct WorkerPool {
    tx: mpsc::Sender<Request>,
    counters: Arc<Counters>,
    /// Workers the pool keeps running.
    size: u32,
    cancel: CancellationToken,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Decrements `in_flight` when a request is answered or abandoned.
struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.done.notify_waiters();
    }
}

/// Counts a request as queued until a worker takes it (or it is dropped unserved).
struct Waiting(Arc<Counters>);

impl Waiting {
    fn new(counters: &Arc<Counters>) -> Waiting {
        counters.queued.fetch_add(1, Ordering::Relaxed);
        Waiting(counters.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The GPUs of each of `workers` workers: with at least as many GPUs as workers,
/// worker i gets every GPU at a position j of `gpus` with j % workers == i; with
/// fewer, worker i shares the GPU at position i % G. Empty without GPUs.
fn spread(gpus: &[u32], workers: usize) -> Vec<Vec<u32>> {
    (0..workers)
        .map(|i| match gpus.len() {
            0 => Vec::new(),
            g if g >= workers => gpus.iter().skip(i).step_by(workers).copied().collect(),
            g => vec![gpus[i % g]],
        })
        .collect()
}

impl WorkerPool {
    /// Prepares the worker directories under `workers_dir` from `repo`, starts the
    /// workers with their share of `gpus` and waits until every one has loaded the
    /// model. Fails with the first load error (the other workers are ended), or with
    /// [`WorkerPoolError::Stopped`] once `cancel` is cancelled, after every worker started
    /// so far has exited. `cancel` then ends the pool.
    pub(crate) async fn start(
        spec: WorkerPoolSpec<'_>,
        cancel: CancellationToken,
    ) -> Result<WorkerPool, WorkerPoolError> {
        let n = spec.workers.max(1);
        let threads = crate::hardware::threads_per_worker(n);
        let mut specs = Vec::with_capacity(n);
        for (index, gpus) in spread(spec.gpus, n).into_iter().enumerate() {
            let dir = spec.workers_dir.join(index.to_string());
            crate::serving::worker::prepare_dir(spec.repo, &dir).map_err(|source| {
                WorkerPoolError::Dir {
                    path: dir.clone(),
                    source,
                }
            })?;
            specs.push(WorkerSpec {
                python: spec.python.to_path_buf(),
                script: spec.script.to_path_buf(),
                dir,
                index,
                gpus,
                threads,
                repo: spec.repo.to_path_buf(),
                home: spec.home.to_path_buf(),
                network: spec.network,
                sandbox: spec.sandbox.clone(),
            });
        }
        let started =
            futures::future::join_all(specs.iter().map(|s| Worker::start(s, &cancel))).await;
        let mut workers = Vec::with_capacity(n);
        let mut first_err = None;
        for r in started {
            match r {
                Ok(w) => workers.push(w),
                Err(e) if first_err.is_none() => first_err = Some(e),
                Err(_) => {}
            }
        }
        if let Some(e) = first_err {
            for w in workers {
                w.shutdown().await;
            }
            if cancel.is_cancelled() {
                return Err(WorkerPoolError::Stopped);
            }
            return Err(WorkerPoolError::Start(e));
        }

        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let inbox = Arc::new(Mutex::new(Inbox { rx, next: None }));
        let counters = Arc::new(Counters {
            pids: std::sync::Mutex::new(vec![0; n]),
            metrics: spec.metrics.clone(),
            ..Counters::default()
        });
        let tasks = specs
            .into_iter()
            .zip(workers)
            .map(|(worker, w)| {
                let queue = Queue {
                    inbox: inbox.clone(),
                    batching: spec.batching,
                };
                tokio::spawn(keep_worker_running(
                    worker,
                    w,
                    queue,
                    counters.clone(),
                    cancel.clone(),
                ))
            })
            .collect();
        Ok(WorkerPool {
            tx,
            counters,
            size: n as u32,
            cancel,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// Queues one request and waits for its answer, which is counted.
    pub(crate) async fn call(
        &self,
        payload: Vec<u8>,
        content_type: String,
    ) -> Result<Output, WorkerPoolError> {
        let started = std::time::Instant::now();
        let answer = self.queue_and_wait(payload, content_type).await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.counters.metrics.answered(outcome, started.elapsed());
        answer
    }

    async fn queue_and_wait(
        &self,
        payload: Vec<u8>,
        content_type: String,
    ) -> Result<Output, WorkerPoolError> {
        let (reply, rx) = oneshot::channel();
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(self.counters.clone());
        self.tx
            .try_send(Request {
                call: Call {
                    payload,
                    content_type,
                    reply,
                },
                _waiting: Waiting::new(&self.counters),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WorkerPoolError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => WorkerPoolError::Stopped,
            })?;
        rx.await.map_err(|_| WorkerPoolError::Stopped)?
    }

    /// Requests queued or running.
    pub(crate) fn in_flight(&self) -> u32 {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Requests waiting for a free worker.
    pub(crate) fn queued(&self) -> u32 {
        self.counters.queued.load(Ordering::Relaxed)
    }

    /// Workers that have loaded the model and are serving.
    pub(crate) fn alive(&self) -> u32 {
        self.counters.alive.load(Ordering::Relaxed)
    }

    /// Workers the pool keeps running (some may be restarting).
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// Process ids of the current workers (0 while one restarts).
    #[cfg(test)]
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.counters.pids.lock().expect("pids").clone()
    }

    /// Ends every worker; queued requests fail with [`WorkerPoolError::Stopped`].
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks"));
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Most payload bytes in one run_batch call (a frame to a worker carries at
/// most 4 GiB); a request that would pass it starts the next batch.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// The queued requests, and one taken but left for the next batch.
struct Inbox {
    rx: mpsc::Receiver<Request>,
    next: Option<Request>,
}

/// The pool's request queue, shared by its workers, and how they batch from it.
struct Queue {
    inbox: Arc<Mutex<Inbox>>,
    batching: BatchPolicy,
}

impl Queue {
    /// Whether `worker` gets batches: batching is on and it has run_batch.
    fn batches(&self, worker: &Worker) -> bool {
        worker.run_batch && self.batching.max_size > 1
    }

    /// The next request, and for a batch up to `max_size - 1` more (and
    /// [`MAX_BATCH_BYTES`] of payloads): those queued, then, while other
    /// requests are in flight (so more are likely to come), those that arrive
    /// within `max_wait` of the first. A lone request is not held back: the
    /// wait ends when the others are answered. `None` once the pool has ended.
    /// Taken requests are no longer counted as queued.
    async fn take(&self, batch: bool, counters: &Counters) -> Option<Vec<Call>> {
        let mut inbox = self.inbox.lock().await;
        let first = match inbox.next.take() {
            Some(req) => req,
            None => inbox.rx.recv().await?,
        };
        let max = if batch { self.batching.max_size } else { 1 };
        let deadline = tokio::time::Instant::now() + self.batching.max_wait;
        let mut bytes = first.call.payload.len();
        let mut batch = vec![first.taken()];
        while batch.len() < max {
            // Registered before the check, so that no answer is missed.
            let answered = counters.done.notified();
            let req = match inbox.rx.try_recv() {
                Ok(req) => req,
                Err(_) if counters.in_flight.load(Ordering::Relaxed) as usize <= batch.len() => {
                    break
                }
                Err(_) => tokio::select! {
                    req = inbox.rx.recv() => match req {
                        Some(req) => req,
                        None => break,
                    },
                    _ = answered => continue,
                    _ = tokio::time::sleep_until(deadline) => break,
                },
            };
            if bytes + req.call.payload.len() > MAX_BATCH_BYTES {
                inbox.next = Some(req);
                break;
            }
            bytes += req.call.payload.len();
            batch.push(req.taken());
        }
        Some(batch)
    }
}

/// Serves requests with one worker while it lives, and restarts it when it dies.
async fn keep_worker_running(
    spec: WorkerSpec,
    first: Worker,
    queue: Queue,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut worker = match current.take() {
            Some(w) => w,
            None => {
                match Worker::start(&spec, &cancel).await {
                    Err(_) if cancel.is_cancelled() => return,
                    Ok(w) => {
                        tracing::info!(worker = spec.index, "worker restarted");
                        counters.metrics.restarted();
                        backoff = Duration::from_millis(200);
                        w
                    }
                    Err(e) => {
                        tracing::error!(worker = spec.index, "worker restart failed: {e}");
                        // With no worker left, queued requests would wait for nothing.
                        if counters.alive.load(Ordering::Relaxed) == 0 {
                            fail_queued(&queue.inbox, &e.to_string()).await;
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
        };
        counters.pids.lock().expect("pids")[spec.index] = worker.pid().unwrap_or(0);
        counters.alive.fetch_add(1, Ordering::Relaxed);
        let end = serve(&mut worker, &queue, &counters, &cancel).await;
        counters.alive.fetch_sub(1, Ordering::Relaxed);
        counters.pids.lock().expect("pids")[spec.index] = 0;
        worker.shutdown().await;
        if end == ServeEnd::Stopped {
            return;
        }
        tracing::warn!(worker = spec.index, "worker died; restarting it");
    }
}

async fn fail_queued(inbox: &Mutex<Inbox>, why: &str) {
    let mut inbox = inbox.lock().await;
    while let Some(req) = inbox.next.take().or_else(|| inbox.rx.try_recv().ok()) {
        let _ = req.call.reply.send(Err(WorkerPoolError::WorkerDied(format!(
            "no worker could be restarted: {why}"
        ))));
    }
}

/// Why a worker stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServeEnd {
    /// It died: it is restarted.
    Died,
    /// The pool ended.
    Stopped,
}

/// Serves requests until the worker dies or the pool is cancelled.
async fn serve(
    worker: &mut Worker,
    queue: &Queue,
    counters: &Counters,
    cancel: &CancellationToken,
) -> ServeEnd {
    let batches = queue.batches(worker);
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return ServeEnd::Stopped,
            batch = queue.take(batches, counters) => batch,
        };
        let Some(batch) = batch else {
            return ServeEnd::Stopped;
        };
        // Those whose caller gave up while they were queued are dropped.
        let batch: Vec<Call> = batch.into_iter().filter(|c| !c.reply.is_closed()).collect();
        if batch.is_empty() {
            continue;
        }
        let _busy = counters.metrics.call(batch.len());
        // Stop must not wait for a long run(): the worker is killed right after.
        let res = tokio::select! {
            _ = cancel.cancelled() => {
                for req in batch {
                    let _ = req.reply.send(Err(WorkerPoolError::Stopped));
                }
                return ServeEnd::Stopped;
            }
            res = run(worker, &batch, batches) => res,
        };
        match res {
            Ok(outcomes) => {
                for (req, out) in batch.into_iter().zip(outcomes) {
                    let _ = req.reply.send(out.map_err(answer));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for req in batch {
                    let _ = req
                        .reply
                        .send(Err(WorkerPoolError::WorkerDied(why.clone())));
                }
                return ServeEnd::Died;
            }
        }
    }
}

/// The requests as one run_batch() call, or one request as a run() call.
async fn run(
    worker: &mut Worker,
    batch: &[Call],
    batches: bool,
) -> Result<Vec<Result<Output, WorkerError>>, WorkerError> {
    match batch {
        [one] if !batches => match worker.call(&one.payload, &one.content_type, false).await {
            Ok(out) => Ok(vec![Ok(out)]),
            Err(e @ (WorkerError::UserError(_) | WorkerError::BadInput(_))) => Ok(vec![Err(e)]),
            Err(e) => Err(e),
        },
        _ => {
            let items: Vec<_> = batch
                .iter()
                .map(|r| (r.payload.as_slice(), r.content_type.as_str()))
                .collect();
            worker.call_batch(&items).await
        }
    }
}

/// What the caller gets for a request the worker answered with an error.
fn answer(e: WorkerError) -> WorkerPoolError {
    match e {
        WorkerError::UserError(tb) => WorkerPoolError::RunRaised(tb),
        WorkerError::BadInput(m) => WorkerPoolError::BadInput(m),
        e => WorkerPoolError::WorkerDied(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pool_for(
        predict: &str,
        data: &[(&str, &str)],
        n: usize,
    ) -> (tempfile::TempDir, WorkerPool) {
        batching_pool_for(predict, data, n, BatchPolicy::OFF).await
    }

    async fn batching_pool_for(
        predict: &str,
        data: &[(&str, &str)],
        n: usize,
        batching: BatchPolicy,
    ) -> (tempfile::TempDir, WorkerPool) {
        let (tmp, spec) = crate::serving::worker::tests::repo(predict, data);
        let repo = tmp.path().join("repo");
        let pool = WorkerPool::start(
            WorkerPoolSpec {
                python: &spec.python,
                script: &spec.script,
                repo: &repo,
                workers_dir: &tmp.path().join("w"),
                workers: n,
                gpus: &[],
                batching,
                home: &spec.home,
                network: spec.network,
                sandbox: &spec.sandbox,
                metrics: &ServingMetrics::default(),
            },
            CancellationToken::new(),
        )
        .await
        .unwrap();
        (tmp, pool)
    }

    #[test]
    fn spreads_gpus_over_workers() {
        // At least as many GPUs as workers: round robin, every GPU used.
        assert_eq!(spread(&[0, 1], 2), [vec![0], vec![1]]);
        assert_eq!(
            spread(&[0, 1, 2, 3, 4, 5, 6, 7], 3),
            [vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]
        );
        // Positions in the agent's list, not GPU indices.
        assert_eq!(spread(&[4, 5, 6, 7], 2), [vec![4, 6], vec![5, 7]]);
        assert_eq!(spread(&[3], 1), [vec![3]]);
        // Fewer GPUs than workers: shared in turn.
        assert_eq!(spread(&[0, 1], 5), [[0], [1], [0], [1], [0]]);
        assert_eq!(spread(&[6], 3), [[6], [6], [6]]);
        // No GPUs: nothing to give.
        assert_eq!(spread(&[], 2), [Vec::<u32>::new(), Vec::new()]);
    }

    /// Requests beyond the free workers are counted as queued until one takes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_queued_requests() {
        let (t, pool) = pool_for(
            "import os, time\n\
             def load_model():\n    return None\n\
             def run(model, data):\n    \
             open(data['started'], 'w').close()\n    \
             while not os.path.exists(data['release']):\n        time.sleep(0.01)\n    \
             return data['i']\n",
            &[],
            1,
        )
        .await;
        assert_eq!((pool.size(), pool.queued()), (1, 0));
        let pool = Arc::new(pool);
        let release = t.path().join("release");
        let call = |i: u32| {
            let pool = pool.clone();
            let started = t.path().join(format!("started-{i}"));
            let body = serde_json::json!({ "i": i, "started": started, "release": release });
            tokio::spawn(async move {
                pool.call(serde_json::to_vec(&body).unwrap(), String::new())
                    .await
            })
        };
        let first = call(0);
        wait_for("the first request to run", || {
            t.path().join("started-0").exists()
        })
        .await;
        let rest = [call(1), call(2)];
        wait_for("two queued requests", || pool.queued() == 2).await;
        assert_eq!(pool.in_flight(), 3);
        std::fs::write(&release, "").unwrap();
        for c in std::iter::once(first).chain(rest) {
            c.await.unwrap().unwrap();
        }
        assert_eq!((pool.queued(), pool.in_flight()), (0, 0));
        pool.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_legacy_requests_do_not_race() {
        let (_t, pool) = pool_for(
            "import json, time\n\
             def load_model():\n    return None\n\
             def run(model):\n    \
             with open('data/x.json') as f:\n        first = json.load(f)\n    \
             time.sleep(0.01)\n    \
             with open('data/x.json') as f:\n        second = json.load(f)\n    \
             return [first, second]\n",
            &[("x.json", "{}")],
            2,
        )
        .await;
        let pool = Arc::new(pool);
        let calls = (0..20).map(|i| {
            let pool = pool.clone();
            async move {
                let body = format!(r#"{{"i": {i}}}"#);
                let out = pool
                    .call(body.into_bytes(), "application/json".into())
                    .await
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
                (i, v)
            }
        });
        for (i, v) in futures::future::join_all(calls).await {
            let want = serde_json::json!({ "i": i });
            assert_eq!(v, serde_json::json!([want, want]), "request {i}");
        }
        assert_eq!(pool.in_flight(), 0);
        assert_eq!(pool.alive(), 2);
        pool.shutdown().await;
        assert_eq!(pool.alive(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_worker_gives_unavailable_and_recovers() {
        let (t, pool) = pool_for(
            "import os, time\n\
             def load_model():\n    return None\n\
             def run(model, data):\n    \
             if 'hang' in data:\n        \
             open(data['hang'], 'w').write(str(os.getpid()))\n        time.sleep(3600)\n    \
             return {'pid': os.getpid()}\n",
            &[],
            1,
        )
        .await;
        let pool = Arc::new(pool);
        let marker = t.path().join("hanging");
        let body = serde_json::to_vec(&serde_json::json!({ "hang": marker })).unwrap();
        let p = pool.clone();
        let hung = tokio::spawn(async move { p.call(body, "application/json".into()).await });
        wait_for("the request to reach run()", || marker.exists()).await;
        // The agent's pid of the worker (bwrap's, in a sandbox).
        let pid = pool.pids()[0] as i32;
        assert_eq!(pool.in_flight(), 1);
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let err = hung.await.unwrap().unwrap_err();
        assert!(matches!(err, WorkerPoolError::WorkerDied(_)), "{err}");
        assert!(err.to_string().contains("can be retried"), "{err}");
        // The next request waits for the restarted worker.
        let out = pool.call(b"{}".to_vec(), String::new()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert!(v["pid"].is_u64(), "{v}");
        assert_ne!(pool.pids(), [pid as u32]);
        assert_eq!(pool.alive(), 1);
        pool.shutdown().await;
    }

    /// Stop does not wait for a run() in progress, and its caller is told.
    #[tokio::test]
    async fn shutdown_does_not_wait_for_a_long_run() {
        let (_t, pool) = pool_for(
            "import time\ndef load_model():\n    return None\ndef run(model, data):\n    time.sleep(3600)\n",
            &[],
            1,
        )
        .await;
        let pool = std::sync::Arc::new(pool);
        let call = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(b"1".to_vec(), String::new()).await })
        };
        while pool.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(std::time::Duration::from_secs(30), pool.shutdown())
            .await
            .expect("shutdown returns while run() sleeps");
        assert!(call.await.unwrap().is_err());
    }

    /// Bytes that are not UTF-8 on the user's output do not break the worker.
    #[tokio::test]
    async fn undecodable_output_keeps_the_worker_serving() {
        let (_t, pool) = pool_for(
            "import sys\ndef load_model():\n    return None\ndef run(model, data):\n    sys.stderr.buffer.write(b'\\xff\\xfe bad\\n')\n    sys.stderr.flush()\n    print('still printing')\n    return data\n",
            &[],
            1,
        )
        .await;
        for i in 0..3 {
            let out = pool
                .call(format!("{i}").into_bytes(), String::new())
                .await
                .unwrap();
            assert_eq!(out.body, format!("{i}").into_bytes());
        }
        pool.shutdown().await;
    }

    #[tokio::test]
    async fn run_raised_and_load_failure() {
        let (_t, pool) = pool_for(
            "def load_model():\n    return None\ndef run(model, data):\n    raise KeyError('nope')\n",
            &[],
            1,
        )
        .await;
        let e = pool.call(b"1".to_vec(), String::new()).await.unwrap_err();
        assert!(e.to_string().starts_with("run() raised:"), "{e}");
        assert!(e.to_string().contains("KeyError: 'nope'"), "{e}");
        pool.shutdown().await;

        let (tmp, spec) =
            crate::serving::worker::tests::repo("import nonexistent_module_xyz\n", &[]);
        let err = WorkerPool::start(
            WorkerPoolSpec {
                python: &spec.python,
                script: &spec.script,
                repo: &tmp.path().join("repo"),
                workers_dir: &tmp.path().join("w"),
                workers: 2,
                gpus: &[],
                batching: BatchPolicy::OFF,
                home: &spec.home,
                network: spec.network,
                sandbox: &spec.sandbox,
                metrics: &ServingMetrics::default(),
            },
            CancellationToken::new(),
        )
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("ModuleNotFoundError"), "{err}");
    }

    /// Stopped while load_model() runs: the loading workers have exited on return.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_start_ends_the_loading_workers() {
        let (tmp, spec) = crate::serving::worker::tests::repo(
            "import os, time\n\
             def load_model():\n    \
             import fcntl\n    \
             lock = open('held', 'w')\n    fcntl.flock(lock, fcntl.LOCK_EX)\n    \
             lock.write('x'); lock.flush()\n    \
             time.sleep(600)\n\
             def run(model, data):\n    return data\n",
            &[],
        );
        let workers = tmp.path().join("w");
        let cancel = CancellationToken::new();
        let start = {
            let (python, script, repo) = (spec.python, spec.script, tmp.path().join("repo"));
            let (home, sandbox) = (spec.home, spec.sandbox);
            let (workers, cancel) = (workers.clone(), cancel.clone());
            tokio::spawn(async move {
                let spec = WorkerPoolSpec {
                    python: &python,
                    script: &script,
                    repo: &repo,
                    workers_dir: &workers,
                    workers: 2,
                    gpus: &[],
                    batching: BatchPolicy::OFF,
                    home: &home,
                    network: Network::Outbound,
                    sandbox: &sandbox,
                    metrics: &ServingMetrics::default(),
                };
                WorkerPool::start(spec, cancel).await
            })
        };
        let held = [workers.join("0/held"), workers.join("1/held")];
        wait_for("both workers to load", || {
            held.iter()
                .all(|p| std::fs::read_to_string(p).is_ok_and(|s| !s.is_empty()))
        })
        .await;
        cancel.cancel();
        let err = start.await.unwrap().err().unwrap();
        assert!(matches!(err, WorkerPoolError::Stopped), "{err}");
        // A worker's lock is free only once it has exited (pids of a sandbox's
        // namespace mean nothing here).
        for p in held {
            let f = std::fs::File::open(&p).unwrap();
            // SAFETY: flock on an open fd.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            assert_eq!(rc, 0, "the worker holding {} survived", p.display());
        }
    }

    /// run_batch echoes each item with its batch's size; `{"hold": dir}` makes
    /// it create `dir/started` and wait for `dir/release` first.
    const BATCHING_MODEL: &str = "import os, time\n\
         def load_model():\n    return None\n\
         def run(model, data):\n    return {'item': data, 'batch': 0}\n\
         def run_batch(model, items):\n    \
         for i in items:\n        \
         if isinstance(i, dict) and 'hold' in i:\n            \
         open(os.path.join(i['hold'], 'started'), 'w').close()\n            \
         while not os.path.exists(os.path.join(i['hold'], 'release')):\n                \
         time.sleep(0.01)\n    \
         if 'boom' in items:\n        raise ValueError('boom in a batch')\n    \
         if 'short' in items:\n        return []\n    \
         if 'dict' in items:\n        return {i: 1 for i in range(len(items))}\n    \
         return [{'item': i, 'batch': len(items)} for i in items]\n";

    fn spawn_call(
        pool: &Arc<WorkerPool>,
        body: String,
    ) -> JoinHandle<Result<Output, WorkerPoolError>> {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.call(body.into_bytes(), "application/json".into())
                .await
        })
    }

    async fn answer_of(
        call: JoinHandle<Result<Output, WorkerPoolError>>,
    ) -> Result<serde_json::Value, WorkerPoolError> {
        call.await
            .unwrap()
            .map(|o| serde_json::from_slice(&o.body).unwrap())
    }

    /// A request that keeps a worker busy inside run_batch until released.
    struct Held {
        dir: tempfile::TempDir,
        call: JoinHandle<Result<Output, WorkerPoolError>>,
    }

    impl Held {
        /// Sends it (its files go in a new directory under `dir`) and waits
        /// until a worker runs it.
        async fn start(pool: &Arc<WorkerPool>, dir: &std::path::Path) -> Held {
            let dir = tempfile::tempdir_in(dir).unwrap();
            let call = spawn_call(pool, serde_json::json!({ "hold": dir.path() }).to_string());
            wait_for("a worker to be busy", || {
                dir.path().join("started").exists()
            })
            .await;
            Held { dir, call }
        }

        /// Lets it finish and waits for its answer.
        async fn release(self) {
            std::fs::write(self.dir.path().join("release"), "").unwrap();
            answer_of(self.call).await.unwrap();
        }
    }

    /// With one of the pool's two workers held, sends `body` and waits until
    /// the other worker has taken it.
    async fn taken_by_the_other_worker(
        pool: &Arc<WorkerPool>,
        body: &str,
    ) -> JoinHandle<Result<Output, WorkerPoolError>> {
        let call = spawn_call(pool, body.into());
        wait_for("the other worker to take it", || {
            pool.in_flight() == 2 && pool.queued() == 0
        })
        .await;
        call
    }

    /// Queues `bodies` in order while the pool's one worker is held busy, then
    /// frees it; their answers, in order.
    async fn while_busy(
        pool: &Arc<WorkerPool>,
        dir: &std::path::Path,
        bodies: &[&str],
    ) -> Vec<Result<serde_json::Value, WorkerPoolError>> {
        let held = Held::start(pool, dir).await;
        // One at a time, so that they queue in order.
        let mut calls = Vec::new();
        for b in bodies {
            calls.push(spawn_call(pool, b.to_string()));
            wait_for("the request to queue", || {
                pool.queued() as usize == calls.len()
            })
            .await;
        }
        held.release().await;
        let mut out = Vec::new();
        for c in calls {
            out.push(answer_of(c).await);
        }
        out
    }

    /// Queued requests become one run_batch call; each caller gets its own
    /// item's output, and an item that is not JSON fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_queued_requests_into_one_call() {
        let batching = BatchPolicy {
            max_size: 4,
            max_wait: Duration::from_millis(50),
        };
        let (t, pool) = batching_pool_for(BATCHING_MODEL, &[], 1, batching).await;
        let pool = Arc::new(pool);
        let out = while_busy(&pool, t.path(), &["1", "2", "{not json", "3", "4", "5"]).await;
        for (i, want) in [(0, 1), (1, 2), (3, 3)] {
            let v = out[i].as_ref().unwrap();
            assert_eq!(v["item"], want, "{v}");
            assert_eq!(v["batch"], 3, "one call for the three valid items: {v}");
        }
        assert!(
            matches!(&out[2], Err(WorkerPoolError::BadInput(m)) if m.contains("not valid JSON")),
            "{:?}",
            out[2].as_ref().err()
        );
        // At most max_size per call: the rest make the next batch.
        for v in &out[4..] {
            assert_eq!(v.as_ref().unwrap()["batch"], 2, "{v:?}");
        }
        // A lone request is not held back for max_wait, and run_batch answers it.
        let lone = answer_of(spawn_call(&pool, "7".into())).await.unwrap();
        assert_eq!(lone["batch"], 1);

        // run_batch raising fails every item of its batch with the traceback;
        // a wrong number of results too, with what was wrong.
        for (bodies, want) in [
            (["\"boom\"", "4"], "ValueError: boom in a batch"),
            (
                ["\"short\"", "5"],
                "run_batch() returned 0 results for 2 items",
            ),
        ] {
            for r in while_busy(&pool, t.path(), &bodies).await {
                assert!(
                    matches!(&r, Err(WorkerPoolError::RunRaised(tb)) if tb.contains(want)),
                    "{r:?}"
                );
            }
        }
        assert_eq!(pool.in_flight(), 0);
        pool.shutdown().await;
    }

    /// While other requests are in flight, a worker waits up to max_wait for
    /// more before it calls run_batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waits_for_more_while_others_are_in_flight() {
        // Full at two, so the batch goes as soon as the second request joins.
        let batching = BatchPolicy {
            max_size: 2,
            max_wait: Duration::from_secs(600),
        };
        let (t, pool) = batching_pool_for(BATCHING_MODEL, &[], 2, batching).await;
        let pool = Arc::new(pool);
        let held = Held::start(&pool, t.path()).await;
        // With the held request in flight, the other worker waits for more.
        let first = taken_by_the_other_worker(&pool, "1").await;
        let second = spawn_call(&pool, "2".into());
        for (call, want) in [(first, 1), (second, 2)] {
            let v = tokio::time::timeout(Duration::from_secs(30), answer_of(call))
                .await
                .expect("the two requests were not batched")
                .unwrap();
            assert_eq!(
                (v["item"].clone(), v["batch"].clone()),
                (want.into(), 2.into())
            );
        }
        held.release().await;
        pool.shutdown().await;
    }

    /// With batching off, or a model without run_batch, every request is a run() call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_batching_each_request_is_a_run_call() {
        let (_t, pool) = batching_pool_for(BATCHING_MODEL, &[], 1, BatchPolicy::OFF).await;
        let pool = Arc::new(pool);
        let calls: Vec<_> = ["1", "2", "3"].map(|b| spawn_call(&pool, b.into())).into();
        for c in calls {
            assert_eq!(answer_of(c).await.unwrap()["batch"], 0);
        }
        pool.shutdown().await;
        let batching = BatchPolicy {
            max_size: 8,
            max_wait: Duration::from_millis(50),
        };
        let run_only =
            "def load_model():\n    return None\ndef run(model, data):\n    return {'batch': 0}\n";
        let (_t, pool) = batching_pool_for(run_only, &[], 1, batching).await;
        let pool = Arc::new(pool);
        let calls: Vec<_> = ["1", "2", "3"].map(|b| spawn_call(&pool, b.into())).into();
        for c in calls {
            assert_eq!(answer_of(c).await.unwrap()["batch"], 0);
        }
        pool.shutdown().await;
    }

    /// Workers side by side share the cores between their numeric libraries' pools.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_share_the_cores_between_their_thread_pools() {
        let (_t, pool) = pool_for(
            "import os\ndef load_model():\n    return None\n\
             def run(model, data):\n    \
             return [os.environ.get(v) for v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')]\n",
            &[],
            2,
        )
        .await;
        let out = pool.call(b"null".to_vec(), String::new()).await.unwrap();
        let seen: Vec<Option<String>> = serde_json::from_slice(&out.body).unwrap();
        let share = crate::hardware::threads_per_worker(2).to_string();
        for (var, got) in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]
            .iter()
            .zip(seen)
        {
            // A value the agent itself was given wins.
            let want = std::env::var(var).unwrap_or_else(|_| share.clone());
            assert_eq!(got.as_deref(), Some(want.as_str()), "{var}");
        }
        pool.shutdown().await;
    }

    /// A worker waiting for more stops waiting once the other requests in
    /// flight are answered: a request left alone goes at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_ends_when_the_others_are_answered() {
        let batching = BatchPolicy {
            max_size: 8,
            max_wait: Duration::from_secs(600),
        };
        let (t, pool) = batching_pool_for(BATCHING_MODEL, &[], 2, batching).await;
        let pool = Arc::new(pool);
        let held = Held::start(&pool, t.path()).await;
        let lone = taken_by_the_other_worker(&pool, "1").await;
        held.release().await;
        let v = tokio::time::timeout(Duration::from_secs(30), answer_of(lone))
            .await
            .expect("the lone request waited for max_wait")
            .unwrap();
        assert_eq!(v["batch"], 1);
        pool.shutdown().await;
    }
}

//! One persistent Python worker process running the embedded `worker.py`: it imports
//! the repo's predict.py, calls `load_model()` once and serves `run()` calls, and
//! `run_batch()` calls when predict.py defines it, over a framed stdin/stdout
//! protocol (u32 BE header length, JSON header, u32 BE body length, body). The
//! user's stdout/stderr are forwarded to tracing, line by line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::launcher::{self, Input, OutputTail, ProcessSpec, SpawnError};
use crate::sandbox::{Network, Sandbox};

/// The worker script, written next to the agent's data on start.
pub(crate) const WORKER_PY: &str = include_str!("worker.py");

const MAX_HEADER: u32 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    #[error("cannot start the Python worker `{python}`: {source}")]
    Spawn {
        python: String,
        #[source]
        source: SpawnError,
    },
    /// predict.py failed to import, or `load_model()` raised (the Python traceback).
    #[error("{0}")]
    LoadFailed(String),
    /// `run()` raised, or its result could not be converted (the Python traceback).
    #[error("{0}")]
    UserError(String),
    /// The request could not be decoded (e.g. invalid JSON).
    #[error("{0}")]
    BadInput(String),
    /// The process exited or crashed; `stderr` holds its last lines.
    #[error("the Python worker died{}", if .stderr.is_empty() { String::new() } else { format!("; its last output:\n{}", .stderr) })]
    Died { stderr: String },
    #[error("the Python worker broke the protocol: {0}")]
    Protocol(String),
    #[error("the Python worker was stopped while it loaded the model")]
    Stopped,
}

/// What `run()` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Output {
    pub body: Vec<u8>,
    pub content_type: String,
}

/// How to start a worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSpec {
    /// The Python interpreter (a venv's bin/python or the configured one).
    pub python: PathBuf,
    /// Where the embedded worker.py has been written.
    pub script: PathBuf,
    /// The worker's own directory (its cwd), see [`prepare_dir`].
    pub dir: PathBuf,
    /// Index within its pool, for logs.
    pub index: usize,
    /// The GPUs it may use (`CUDA_VISIBLE_DEVICES`); none: the environment as is.
    pub gpus: Vec<u32>,
    /// Threads its numeric libraries may use (`OMP_NUM_THREADS` and the like).
    pub threads: usize,
    /// The unpacked repo its directory links to (read-only).
    pub repo: PathBuf,
    /// Its HOME (shared by the job's processes).
    pub home: PathBuf,
    pub network: Network,
    pub sandbox: Arc<Sandbox>,
}

#[derive(Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    content_type: String,
    #[serde(default)]
    traceback: String,
    #[serde(default)]
    error: String,
    /// The ready frame: predict.py defines run_batch.
    #[serde(default)]
    run_batch: bool,
    /// A batch's outcomes, one per item.
    #[serde(default)]
    items: Vec<Reply>,
    /// A batch item's output length in the reply body.
    #[serde(default)]
    len: usize,
}

impl Reply {
    /// One request's outcome, with its output; `batch_traceback` is what an
    /// item failed by its batch's run_batch call gets.
    fn outcome(self, body: Vec<u8>, batch_traceback: &str) -> Result<Output, WorkerError> {
        if self.ok {
            return Ok(Output {
                body,
                content_type: self.content_type,
            });
        }
        match self.kind.as_str() {
            "input" => Err(WorkerError::BadInput(self.error)),
            "batch" => Err(WorkerError::UserError(batch_traceback.to_string())),
            _ => Err(WorkerError::UserError(self.traceback)),
        }
    }
}

pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    tail: Arc<OutputTail>,
    stderr_task: Option<JoinHandle<()>>,
    index: usize,
    /// predict.py defines run_batch: [`Worker::call_batch`] may be used.
    pub(crate) run_batch: bool,
}

/// Creates `dir` as a worker directory for `repo`: a symlink to every top-level
/// entry of the repo except `data/`, which is copied, so each worker has its own.
pub(crate) fn prepare_dir(repo: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let repo = std::path::absolute(repo)?;
    for entry in std::fs::read_dir(&repo)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "data" && entry.path().is_dir() {
            copy_dir(&entry.path(), &dir.join("data"))?;
        } else {
            std::os::unix::fs::symlink(entry.path(), dir.join(&name))?;
        }
    }
    Ok(())
}

/// Recursive copy; symlinks are copied as symlinks.
fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if ty.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

impl Worker {
    /// Starts the process and waits until `load_model()` has returned. When that
    /// fails, or `cancel` is cancelled first ([`WorkerError::Stopped`]), the process
    /// has exited by the time this returns.
    ///
    /// Must be called from a long-lived thread (a tokio worker thread, not
    /// `spawn_blocking`): the child gets SIGKILL when the spawning thread ends.
    pub(crate) async fn start(
        spec: &WorkerSpec,
        cancel: &CancellationToken,
    ) -> Result<Worker, WorkerError> {
        let mut process =
            ProcessSpec::python_script(&spec.python, &spec.script, &spec.dir, &spec.home);
        process.readable.push(spec.repo.clone());
        let process = ProcessSpec {
            gpus: spec.gpus.clone(),
            threads: Some(spec.threads),
            stdin: Input::Piped,
            network: spec.network,
            ..process
        };
        let started = std::time::Instant::now();
        let mut child = launcher::spawn(&spec.sandbox, &process)
            .await
            .map_err(|source| WorkerError::Spawn {
                python: spec.python.display().to_string(),
                source,
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = Arc::new(OutputTail::default());
        let stderr_task = forward_stderr(stderr, spec.index, tail.clone());
        let mut w = Worker {
            child,
            stdin,
            stdout,
            tail,
            stderr_task: Some(stderr_task),
            index: spec.index,
            run_batch: false,
        };
        let ready = tokio::select! {
            r = w.read_frame() => r,
            _ = cancel.cancelled() => Err(WorkerError::Stopped),
        };
        let err = match ready {
            Ok((reply, _)) if reply.ok => {
                tracing::debug!(worker = w.index, pid = ?w.pid(), ready_ms = started.elapsed().as_millis(),
                    sandbox = spec.sandbox.level.name(), "worker loaded the model");
                w.run_batch = reply.run_batch;
                return Ok(w);
            }
            Ok((reply, _)) => WorkerError::LoadFailed(reply.traceback),
            Err(e) => e,
        };
        w.shutdown().await;
        Err(err)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Runs one request. Not cancel-safe: dropping the future mid-call leaves the
    /// protocol out of step, so callers must not drop it (the pool never does).
    pub(crate) async fn call(
        &mut self,
        payload: &[u8],
        content_type: &str,
        use_data_dir: bool,
    ) -> Result<Output, WorkerError> {
        let header = serde_json::json!({
            "content_type": content_type,
            "use_data_dir": use_data_dir,
        });
        self.write_frame(&header, payload).await?;
        let (reply, body) = self.read_frame().await?;
        reply.outcome(body, "")
    }

    /// Runs one `run_batch()` call over `items` (payload, content type); each
    /// item gets its own outcome, in order. The outer error: the worker died
    /// or broke the protocol. Not cancel-safe, like [`Worker::call`].
    pub(crate) async fn call_batch(
        &mut self,
        items: &[(&[u8], &str)],
    ) -> Result<Vec<Result<Output, WorkerError>>, WorkerError> {
        let header = serde_json::json!({
            "items": items
                .iter()
                .map(|(payload, ct)| serde_json::json!({"content_type": ct, "len": payload.len()}))
                .collect::<Vec<_>>(),
        });
        let mut body = Vec::with_capacity(items.iter().map(|(p, _)| p.len()).sum());
        for (payload, _) in items {
            body.extend_from_slice(payload);
        }
        self.write_frame(&header, &body).await?;
        let (reply, mut body) = self.read_frame().await?;
        if reply.items.len() != items.len() {
            return Err(WorkerError::Protocol(format!(
                "{} outcomes for a batch of {}",
                reply.items.len(),
                items.len()
            )));
        }
        let lens: usize = reply.items.iter().filter(|r| r.ok).map(|r| r.len).sum();
        if lens != body.len() {
            return Err(WorkerError::Protocol(format!(
                "batch outputs of {lens} bytes in a body of {}",
                body.len()
            )));
        }
        let mut outcomes = Vec::with_capacity(items.len());
        for item in reply.items.into_iter().rev() {
            let out = if item.ok {
                body.split_off(body.len() - item.len)
            } else {
                Vec::new()
            };
            outcomes.push(item.outcome(out, &reply.traceback));
        }
        outcomes.reverse();
        Ok(outcomes)
    }

    /// Ends the worker: closes its input (it exits on EOF), then kills it.
    pub(crate) async fn shutdown(mut self) {
        drop(self.stdin);
        launcher::kill_group(&mut self.child);
        let _ = self.child.wait().await;
        tracing::debug!(worker = self.index, "worker ended");
    }

    async fn write_frame(
        &mut self,
        header: &serde_json::Value,
        body: &[u8],
    ) -> Result<(), WorkerError> {
        let h = serde_json::to_vec(header).expect("json header");
        let blen = u32::try_from(body.len())
            .map_err(|_| WorkerError::BadInput("the payload is larger than 4 GiB".into()))?;
        let mut buf = Vec::with_capacity(8 + h.len());
        buf.extend_from_slice(&(h.len() as u32).to_be_bytes());
        buf.extend_from_slice(&h);
        buf.extend_from_slice(&blen.to_be_bytes());
        let res = async {
            self.stdin.write_all(&buf).await?;
            self.stdin.write_all(body).await?;
            self.stdin.flush().await
        }
        .await;
        match res {
            Ok(()) => Ok(()),
            Err(_) => Err(self.died().await),
        }
    }

    /// The next reply. The process ending also ends the wait: a process
    /// forked by the user's code may hold the pipe open after the worker died.
    async fn read_frame(&mut self) -> Result<(Reply, Vec<u8>), WorkerError> {
        let read = tokio::select! {
            biased;
            read = read_frame(&mut self.stdout) => read,
            _ = self.child.wait() => Err(None),
        };
        match read {
            Ok(frame) => Ok(frame),
            Err(Some(e)) => Err(e),
            Err(None) => Err(self.died().await),
        }
    }

    /// Waits for the process to end (its stdout is closed) and reports its tail.
    async fn died(&mut self) -> WorkerError {
        let status = self.child.wait().await.ok();
        // Let the stderr forwarder drain what the process wrote last (bounded: a
        // grandchild could keep the pipe open).
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), task).await;
        }
        let mut stderr = self.tail.text();
        if let Some(s) = status {
            if !stderr.is_empty() {
                stderr.push('\n');
            }
            stderr.push_str(&format!("(worker {} exited: {s})", self.index));
        }
        WorkerError::Died { stderr }
    }
}

/// Logs the worker's stderr (where worker.py also sends the user's stdout) line by
/// line, keeping the last lines in `tail`.
fn forward_stderr(stderr: ChildStderr, index: usize, tail: Arc<OutputTail>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Bytes, not UTF-8 lines: one undecodable byte must not end the
        // reader (the user's prints would then fail with a broken pipe).
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            tracing::info!(worker = index, "{line}");
            tail.push(line);
        }
    })
}

/// One reply frame; `Err(None)` when the pipe ended (the worker died).
async fn read_frame<R: AsyncReadExt + Unpin>(
    stdout: &mut R,
) -> Result<(Reply, Vec<u8>), Option<WorkerError>> {
    let hlen = stdout.read_u32().await.map_err(|_| None)?;
    if hlen > MAX_HEADER {
        return Err(Some(WorkerError::Protocol(format!(
            "header of {hlen} bytes"
        ))));
    }
    let mut header = vec![0; hlen as usize];
    stdout.read_exact(&mut header).await.map_err(|_| None)?;
    let blen = stdout.read_u32().await.map_err(|_| None)?;
    let mut body = vec![0; blen as usize];
    stdout.read_exact(&mut body).await.map_err(|_| None)?;
    let reply: Reply = serde_json::from_slice(&header)
        .map_err(|e| Some(WorkerError::Protocol(format!("bad header: {e}"))))?;
    Ok((reply, body))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A repo dir with the given predict.py and data files, plus a worker spec for it.
    pub(crate) fn repo(predict: &str, data: &[(&str, &str)]) -> (tempfile::TempDir, WorkerSpec) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(repo.join("data")).unwrap();
        std::fs::write(repo.join("predict.py"), predict).unwrap();
        for (name, body) in data {
            std::fs::write(repo.join("data").join(name), body).unwrap();
        }
        let script = crate::scripts::install_worker(tmp.path()).unwrap();
        let dir = tmp.path().join("workers/0");
        prepare_dir(&repo, &dir).unwrap();
        let sandbox = crate::sandbox::tests::default_sandbox();
        let spec = WorkerSpec {
            python: sandbox.python.executable.clone(),
            script,
            dir,
            index: 0,
            gpus: Vec::new(),
            threads: 1,
            repo,
            // HOME: the whole temp dir, where the tests exchange files with it.
            home: tmp.path().to_path_buf(),
            network: Network::Outbound,
            sandbox,
        };
        (tmp, spec)
    }

    async fn json_call(w: &mut Worker, body: &str) -> serde_json::Value {
        let out = w
            .call(body.as_bytes(), "application/json", false)
            .await
            .unwrap();
        assert_eq!(out.content_type, "application/json");
        serde_json::from_slice(&out.body).unwrap()
    }

    #[tokio::test]
    async fn two_arg_run_with_prints() {
        let (_t, spec) = repo(
            "import sys\nprint('loading')\n\
             def load_model():\n    print('in load'); return {'k': 2}\n\
             def run(model, data):\n    print('hello from run', data)\n    \
             sys.stdout.write('raw write\\n')\n    return {'got': data, 'k': model['k'], 't': (1, 2)}\n",
            &[],
        );
        let mut w = Worker::start(&spec, &CancellationToken::new())
            .await
            .unwrap();
        let v = json_call(&mut w, r#"{"a": [1, 2]}"#).await;
        assert_eq!(
            v,
            serde_json::json!({"got": {"a": [1, 2]}, "k": 2, "t": [1, 2]})
        );
        let v = json_call(&mut w, "3").await;
        assert_eq!(v["got"], 3);
        // Raw bytes in, raw bytes out.
        w.shutdown().await;
    }

    #[tokio::test]
    async fn gets_its_gpus_through_cuda_visible_devices() {
        let (_t, mut spec) = repo(
            "import os\ndef load_model():\n    return None\n\
             def run(model, data):\n    return os.environ.get('CUDA_VISIBLE_DEVICES')\n",
            &[],
        );
        // Without GPUs the environment is left as it is.
        let mut w = Worker::start(&spec, &CancellationToken::new())
            .await
            .unwrap();
        let inherited = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        assert_eq!(json_call(&mut w, "{}").await, serde_json::json!(inherited));
        w.shutdown().await;
        spec.gpus = vec![2, 5];
        let mut w = Worker::start(&spec, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(json_call(&mut w, "{}").await, "2,5");
        w.shutdown().await;
    }

    #[tokio::test]
    async fn bytes_and_conversions() {
        let (_t, spec) = repo(
            "def load_model():\n    return None\n\
             def run(model, data):\n    \
             if isinstance(data, bytes):\n        return data[::-1]\n    \
             return {'set': {5}, 'tuple': (1, (2, 3)), 'nested': b'hi'}\n",
            &[],
        );
        let mut w = Worker::start(&spec, &CancellationToken::new())
            .await
            .unwrap();
        let out = w
            .call(b"\x00\x01abc", "application/octet-stream", false)
            .await
            .unwrap();
        assert_eq!(out.content_type, "application/octet-stream");
        assert_eq!(out.body, b"cba\x01\x00");
        let v = json_call(&mut w, "{}").await;
        assert_eq!(
            v,
            serde_json::json!({"set": [5], "tuple": [1, [2, 3]], "nested": "aGk="})
        );
        let e = w.call(b"{not json", "", false).await.unwrap_err();
        assert!(
            matches!(&e, WorkerError::BadInput(m) if m.contains("not valid JSON")),
            "{e}"
        );
        // The worker still serves after a bad request.
        assert_eq!(json_call(&mut w, "1").await["set"], serde_json::json!([5]));
    }

    #[tokio::test]
    async fn legacy_run_reads_its_data_dir() {
        let (_t, spec) = repo(
            "import json\n\
             def load_model():\n    return 'm'\n\
             def run(model):\n    print('legacy')\n    \
             with open('data/x.json') as f:\n        return {'model': model, 'x': json.load(f)}\n",
            &[("x.json", r#"{"sample": true}"#)],
        );
        let mut w = Worker::start(&spec, &CancellationToken::new())
            .await
            .unwrap();
        // With use_data_dir the shipped sample is used as is.
        let out = w.call(b"{}", "application/json", true).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["x"], serde_json::json!({"sample": true}));
        let v = json_call(&mut w, r#"{"req": 7}"#).await;
        assert_eq!(v, serde_json::json!({"model": "m", "x": {"req": 7}}));
        // The repo's own data/ is untouched.
        let shipped = spec.dir.join("../../repo/data/x.json");
        assert_eq!(
            std::fs::read_to_string(shipped).unwrap(),
            r#"{"sample": true}"#
        );
    }

    #[tokio::test]
    async fn syntax_error_gives_traceback() {
        let (_t, spec) = repo("def load_model(:\n    pass\n", &[]);
        let e = Worker::start(&spec, &CancellationToken::new())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&e, WorkerError::LoadFailed(tb) if tb.contains("SyntaxError")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn load_model_raising_gives_traceback() {
        let (_t, spec) = repo(
            "def load_model():\n    raise RuntimeError('weights missing')\ndef run(m, d):\n    pass\n",
            &[],
        );
        let e = Worker::start(&spec, &CancellationToken::new())
            .await
            .err()
            .unwrap();
        match e {
            WorkerError::LoadFailed(tb) => {
                assert!(tb.contains("Traceback"), "{tb}");
                assert!(tb.contains("RuntimeError: weights missing"), "{tb}");
                assert!(tb.contains("load_model"), "{tb}");
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn missing_run_is_reported() {
        let (_t, spec) = repo("def load_model():\n    return 1\n", &[]);
        let e = Worker::start(&spec, &CancellationToken::new())
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not define run()"), "{e}");
    }

    #[tokio::test]
    async fn run_raising_gives_traceback() {
        let (_t, spec) = repo(
            "def load_model():\n    return 1\ndef run(m, d):\n    raise ValueError('bad input ' + str(d))\n",
            &[],
        );
        let mut w = Worker::start(&spec, &CancellationToken::new())
            .await
            .unwrap();
        let e = w.call(b"5", "application/json", false).await.unwrap_err();
        match e {
            WorkerError::UserError(tb) => assert!(tb.contains("ValueError: bad input 5"), "{tb}"),
            other => panic!("{other}"),
        }
        // Still alive afterwards.
        let e = w.call(b"6", "application/json", false).await.unwrap_err();
        assert!(e.to_string().contains("bad input 6"));
    }

    #[tokio::test]
    async fn exit_in_load_is_died() {
        let (_t, spec) = repo(
            "import os, sys\nprint('about to exit', file=sys.stderr)\nos._exit(3)\n",
            &[],
        );
        let e = Worker::start(&spec, &CancellationToken::new())
            .await
            .err()
            .unwrap();
        assert!(matches!(&e, WorkerError::Died { .. }), "{e}");
        assert!(e.to_string().contains("exit status: 3"), "{e}");
    }
}

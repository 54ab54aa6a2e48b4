//! One training run: the embedded `trainer.py` in the job's environment, with the
//! repo as cwd. It imports the repo's train.py, provides `import aibro` and calls
//! `train(output_dir, **args)`. `aibro.report(...)` and the run's outcome arrive as
//! JSON lines on a dedicated pipe (fd [`PROGRESS_FD`] in the child); every line the
//! user's code prints on stdout or stderr becomes a log line. Both become
//! `Progress` reports, numbered per job in the order the agent read them.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aibro_proto::v1::Progress;
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::launcher::{self, OutputTail, PassFd, ProcessSpec, SpawnError};
use crate::link::reporter::Reports;
use crate::sandbox::{Network, Sandbox};

/// The trainer script, written next to the agent's data on start.
pub(crate) const TRAINER_PY: &str = include_str!("trainer.py");

/// The protocol pipe's fd number in the training process.
const PROGRESS_FD: i32 = 3;
/// Longer log lines are split (a progress bar without newlines stays bounded).
const MAX_LOG_LINE: usize = 16 << 10;
/// Longer protocol lines are dropped.
const MAX_PROTOCOL_LINE: usize = 4 << 20;
/// After the process exits, how long its output may take to drain (a child process
/// of the user's code could hold the pipes open forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum TrainError {
    #[error("cannot start the training process `{python}`: {source}")]
    Spawn {
        python: String,
        #[source]
        source: SpawnError,
    },
    /// train.py failed to import, has no train(), or train() raised: the traceback.
    #[error("{0}")]
    Raised(String),
    /// The process ended without reporting an outcome (killed, os._exit, crash).
    #[error("the training process exited ({status}) before train() returned{}", if .stderr.is_empty() { String::new() } else { format!("; its last output:\n{}", .stderr) })]
    Died { status: String, stderr: String },
    /// Stop ended the run.
    #[error("training was stopped")]
    Stopped,
}

/// How to run one training job.
#[derive(Debug, Clone)]
pub(crate) struct TrainSpec {
    pub job_id: String,
    /// The job environment's interpreter.
    pub python: PathBuf,
    /// Where the embedded trainer.py has been written.
    pub script: PathBuf,
    /// The unpacked repo (the process's cwd).
    pub repo: PathBuf,
    /// The fresh, empty directory train() writes into.
    pub output_dir: PathBuf,
    /// JSON object of the str→str arguments.
    pub args_file: PathBuf,
    /// The GPUs it may use: all of the agent's.
    pub gpus: Vec<u32>,
    /// Its HOME.
    pub home: PathBuf,
    pub network: Network,
    pub sandbox: Arc<Sandbox>,
}

/// One line of the protocol pipe.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Message {
    Progress {
        #[serde(default)]
        epoch: u32,
        #[serde(default)]
        total_epochs: u32,
        #[serde(default)]
        metrics: HashMap<String, Metric>,
    },
    Done,
    Error {
        #[serde(default)]
        traceback: String,
    },
}

/// A metric value: a JSON number, or one of the strings trainer.py sends for
/// non-finite values.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub(crate) struct Metric(pub f64);

/// A metric value that is not a number.
#[derive(Debug, thiserror::Error)]
#[error("metric value {0} is not a number")]
pub(crate) struct NotANumber(serde_json::Value);

impl TryFrom<serde_json::Value> for Metric {
    type Error = NotANumber;

    fn try_from(v: serde_json::Value) -> Result<Metric, NotANumber> {
        match &v {
            serde_json::Value::Number(n) => n.as_f64().map(Metric),
            serde_json::Value::String(s) => match s.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                _ => None,
            }
            .map(Metric),
            _ => None,
        }
        .ok_or(NotANumber(v))
    }
}

/// A protocol line that is no message (its start, for the log).
#[derive(Debug, thiserror::Error)]
#[error("bad trainer message ({source}): {start}")]
pub(crate) struct BadMessage {
    source: serde_json::Error,
    start: String,
}

/// Parses one protocol line.
pub(crate) fn parse_line(line: &[u8]) -> Result<Message, BadMessage> {
    serde_json::from_slice(line).map_err(|source| BadMessage {
        source,
        start: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
    })
}

/// How train() ended, as the trainer reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TrainOutcome {
    Returned,
    /// The traceback.
    Raised(String),
}

/// A printed line as a terminal would show it: carriage returns (progress bars)
/// keep only the last non-empty segment.
pub(crate) fn display_line(raw: &[u8]) -> String {
    let seg = raw
        .split(|&b| b == b'\r')
        .rev()
        .find(|s| !s.is_empty())
        .unwrap_or(&[]);
    String::from_utf8_lossy(seg).into_owned()
}

/// What [`read_line`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// A whole line (or the last bytes before EOF).
    Line,
    /// The first `max` bytes of a longer line; the rest follows.
    Cut,
}

/// Reads one line (without its `\n`) into `buf`, at most `max` bytes: a longer
/// line comes back in pieces. Ok(None) at EOF.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<Piece>> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok((!buf.is_empty()).then_some(Piece::Line));
        }
        let take = avail.len().min(max - buf.len());
        if let Some(i) = avail[..take].iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&avail[..i]);
            r.consume(i + 1);
            return Ok(Some(Piece::Line));
        }
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if buf.len() >= max {
            return Ok(Some(Piece::Cut));
        }
    }
}

/// Numbers and queues the job's Progress reports.
struct Emitter {
    job_id: String,
    reports: Reports,
    seq: Mutex<u64>,
    cancel: CancellationToken,
}

impl Emitter {
    fn emit(&self, mut p: Progress) {
        if self.cancel.is_cancelled() {
            return;
        }
        // Numbered and queued under one lock: seq order is queue order.
        let mut seq = self.seq.lock().expect("seq lock");
        *seq += 1;
        p.seq = *seq;
        p.job_id = self.job_id.clone();
        self.reports.progress(p);
    }
}

/// Forwards the lines of one output stream as log-line Progress reports.
fn forward_log(
    stream: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    emitter: Arc<Emitter>,
    tail: Option<Arc<OutputTail>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        while let Ok(Some(_)) = read_line(&mut r, &mut buf, MAX_LOG_LINE).await {
            let line = display_line(&buf);
            tracing::info!(job_id = %emitter.job_id, stream = name, "{line}");
            if let Some(t) = &tail {
                t.push(line.clone());
            }
            emitter.emit(Progress {
                log_line: line,
                stream: name.to_string(),
                ..Progress::default()
            });
        }
    })
}

/// Reads the protocol pipe: progress becomes reports; returns the last outcome
/// (done or error) the trainer sent, if any.
fn read_protocol(pipe: pipe::Receiver, emitter: Arc<Emitter>) -> JoinHandle<Option<TrainOutcome>> {
    tokio::spawn(async move {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        let mut outcome = None;
        let mut skipping = false;
        while let Ok(Some(piece)) = read_line(&mut r, &mut buf, MAX_PROTOCOL_LINE).await {
            // Keep reading whatever comes: a process blocked on a full pipe never ends.
            if skipping || piece == Piece::Cut {
                skipping = piece == Piece::Cut;
                tracing::warn!(job_id = %emitter.job_id, "dropping an oversized trainer message");
                continue;
            }
            match parse_line(&buf) {
                Ok(Message::Progress {
                    epoch,
                    total_epochs,
                    metrics,
                }) => emitter.emit(Progress {
                    epoch,
                    total_epochs,
                    metrics: metrics.into_iter().map(|(k, v)| (k, v.0)).collect(),
                    ..Progress::default()
                }),
                Ok(Message::Done) => outcome = Some(TrainOutcome::Returned),
                Ok(Message::Error { traceback }) => outcome = Some(TrainOutcome::Raised(traceback)),
                Err(e) => tracing::warn!(job_id = %emitter.job_id, "{e}"),
            }
        }
        outcome
    })
}

/// Aborts the reader tasks when a run ends early.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// The tasks that read a training process's output and protocol pipe.
struct Readers {
    stdout: JoinHandle<()>,
    stderr: JoinHandle<()>,
    protocol: JoinHandle<Option<TrainOutcome>>,
    /// The last lines of its stderr.
    tail: Arc<OutputTail>,
    _abort: AbortOnDrop,
}

impl Readers {
    fn start(child: &mut Child, pipe: pipe::Receiver, emitter: Arc<Emitter>) -> Readers {
        let tail = Arc::new(OutputTail::default());
        let stdout = forward_log(
            child.stdout.take().expect("piped stdout"),
            "stdout",
            emitter.clone(),
            None,
        );
        let stderr = forward_log(
            child.stderr.take().expect("piped stderr"),
            "stderr",
            emitter.clone(),
            Some(tail.clone()),
        );
        let protocol = read_protocol(pipe, emitter);
        let abort = AbortOnDrop(vec![
            stdout.abort_handle(),
            stderr.abort_handle(),
            protocol.abort_handle(),
        ]);
        Readers {
            stdout,
            stderr,
            protocol,
            tail,
            _abort: abort,
        }
    }

    /// After the process exited: the outcome it reported first (the protocol
    /// pipe is not inherited across exec, so it ends with the process even where
    /// a child of the user's code keeps stdout/stderr open), then what it
    /// printed, best effort, before it is reported.
    async fn finish(self, job_id: &str) -> (Option<TrainOutcome>, Arc<OutputTail>) {
        let Readers {
            stdout,
            stderr,
            protocol,
            tail,
            _abort,
        } = self;
        let outcome = match tokio::time::timeout(DRAIN_TIMEOUT, protocol).await {
            Ok(outcome) => outcome.ok().flatten(),
            Err(_) => {
                tracing::warn!(job_id = %job_id, "the training process's result did not arrive after it exited");
                None
            }
        };
        let printed = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let _ = stdout.await;
            let _ = stderr.await;
        });
        if printed.await.is_err() {
            tracing::warn!(job_id = %job_id, "the training output did not end after it exited (a child process holds it?)");
        }
        (outcome, tail)
    }
}

/// Starts trainer.py with the protocol pipe's write end as [`PROGRESS_FD`];
/// returns the process and the pipe's read end.
async fn start(spec: &TrainSpec) -> Result<(Child, pipe::Receiver), TrainError> {
    let spawn_err = |source| TrainError::Spawn {
        python: spec.python.display().to_string(),
        source,
    };
    let io_err = |source| {
        spawn_err(SpawnError::Io {
            program: spec.python.display().to_string(),
            source,
        })
    };
    let (reader, writer) = std::io::pipe().map_err(io_err)?;
    let mut process =
        ProcessSpec::python_script(&spec.python, &spec.script, &spec.repo, &spec.home)
            .arg(&spec.output_dir)
            .arg(&spec.args_file);
    process.readable.push(spec.args_file.clone());
    process.writable.push(spec.output_dir.clone());
    process.network = spec.network;
    process
        .env
        .push(("AIBRO_PROGRESS_FD", PROGRESS_FD.to_string()));
    process.gpus = spec.gpus.clone();
    process.pass_fd = Some(PassFd {
        fd: writer.as_raw_fd(),
        as_fd: PROGRESS_FD,
    });
    let child = launcher::spawn(&spec.sandbox, &process)
        .await
        .map_err(spawn_err)?;
    // Only the child may hold the write end, or the pipe never reaches EOF.
    drop(writer);
    let pipe = pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(io_err)?;
    Ok((child, pipe))
}

/// Runs `train(output_dir, **args)` to completion, queueing Progress reports
/// (seq from 1). Ok when train() returned. Cancelling `cancel` kills the process
/// (and waits for it) and gives [`TrainError::Stopped`]; no report follows then.
///
/// Must be called from a long-lived thread (a tokio worker thread, not
/// `spawn_blocking`): the child gets SIGKILL when the spawning thread ends.
pub(crate) async fn run(
    spec: &TrainSpec,
    reports: &Reports,
    cancel: &CancellationToken,
) -> Result<(), TrainError> {
    let (mut child, pipe) = start(spec).await?;
    let emitter = Arc::new(Emitter {
        job_id: spec.job_id.clone(),
        reports: reports.clone(),
        seq: Mutex::new(0),
        cancel: cancel.clone(),
    });
    let readers = Readers::start(&mut child, pipe, emitter);
    tracing::info!(job_id = %spec.job_id, pid = ?child.id(), "training started");
    let status = tokio::select! {
        s = child.wait() => s,
        _ = cancel.cancelled() => {
            launcher::kill_group(&mut child);
            let _ = child.wait().await;
            tracing::info!(job_id = %spec.job_id, "training stopped");
            return Err(TrainError::Stopped);
        }
    };
    let status = status
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    let (outcome, tail) = readers.finish(&spec.job_id).await;
    tracing::info!(job_id = %spec.job_id, %status, "training process ended");
    match outcome {
        Some(TrainOutcome::Returned) => Ok(()),
        Some(TrainOutcome::Raised(traceback)) => Err(TrainError::Raised(traceback)),
        None => Err(TrainError::Died {
            status,
            stderr: tail.text(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::reporter::ReportQueue;
    use aibro_proto::v1::report_request::Body;

    #[test]
    fn parses_protocol_lines() {
        let m = parse_line(
            br#"{"type": "progress", "epoch": 3, "total_epochs": 20, "metrics": {"loss": 0.25, "n": 7, "bad": "NaN", "up": "Infinity", "down": "-Infinity"}}"#,
        )
        .unwrap();
        let Message::Progress {
            epoch,
            total_epochs,
            metrics,
        } = m
        else {
            panic!("{m:?}")
        };
        assert_eq!((epoch, total_epochs), (3, 20));
        assert_eq!(metrics["loss"], Metric(0.25));
        assert_eq!(metrics["n"], Metric(7.0));
        assert!(metrics["bad"].0.is_nan());
        assert_eq!(metrics["up"].0, f64::INFINITY);
        assert_eq!(metrics["down"].0, f64::NEG_INFINITY);
        // Everything but the type is optional.
        assert_eq!(
            parse_line(br#"{"type": "progress"}"#).unwrap(),
            Message::Progress {
                epoch: 0,
                total_epochs: 0,
                metrics: HashMap::new()
            }
        );
        assert_eq!(parse_line(br#"{"type":"done"}"#).unwrap(), Message::Done);
        assert_eq!(
            parse_line(br#"{"type":"error","traceback":"Traceback\nValueError: x\n"}"#).unwrap(),
            Message::Error {
                traceback: "Traceback\nValueError: x\n".into()
            }
        );
        for bad in [
            &br#"{"type":"progress","metrics":{"loss":"high"}}"#[..],
            br#"{"type":"progress","epoch":-1}"#,
            br#"{"type":"what"}"#,
            b"not json",
        ] {
            assert!(parse_line(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn display_line_keeps_what_a_terminal_shows() {
        assert_eq!(display_line(b"epoch 1"), "epoch 1");
        assert_eq!(display_line(b" 10%\r 50%\r100%"), "100%");
        assert_eq!(display_line(b"done\r"), "done");
        assert_eq!(display_line(b"caf\xc3\xa9 \xff"), "café \u{fffd}");
        assert_eq!(display_line(b""), "");
    }

    #[tokio::test]
    async fn read_line_splits_and_bounds() {
        let data: &[u8] = b"one\ntwo\r\n\nlong-line-here\nlast";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(piece) = read_line(&mut r, &mut buf, 8).await.unwrap() {
            got.push((
                String::from_utf8(buf.clone()).unwrap(),
                piece == Piece::Line,
            ));
        }
        let want = [
            ("one", true),
            ("two\r", true),
            ("", true),
            ("long-lin", false),
            ("e-here", true),
            ("last", true),
        ];
        let want: Vec<_> = want.iter().map(|(s, c)| (s.to_string(), *c)).collect();
        assert_eq!(got, want);
    }

    type Trained = (
        Result<(), TrainError>,
        Vec<Progress>,
        tempfile::TempDir,
        PathBuf,
    );

    /// Runs trainer.py on a repo with the given train.py; returns the outcome and
    /// the Progress reports queued.
    async fn train(train_py: &str, args: &str) -> Trained {
        train_on(train_py, args, &[]).await
    }

    /// [`train`] with the agent's GPUs.
    async fn train_on(train_py: &str, args: &str, gpus: &[u32]) -> Trained {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        let out = tmp.path().join("output");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(repo.join("train.py"), train_py).unwrap();
        let script = tmp.path().join("trainer.py");
        std::fs::write(&script, TRAINER_PY).unwrap();
        let args_file = tmp.path().join("args.json");
        std::fs::write(&args_file, args).unwrap();
        let spec = TrainSpec {
            job_id: "t".into(),
            script,
            repo,
            output_dir: out.clone(),
            args_file,
            gpus: gpus.to_vec(),
            ..test_spec(tmp.path())
        };
        let (queue, mut rx) = ReportQueue::channel();
        let res = run(&spec, &queue.of("i"), &CancellationToken::new()).await;
        drop(queue);
        let mut progress = Vec::new();
        while let Some(q) = rx.recv().await {
            assert_eq!(&*q.instance_id, "i");
            match q.body {
                Body::Progress(p) => progress.push(p),
                other => panic!("{other:?}"),
            }
        }
        (res, progress, tmp, out)
    }

    #[tokio::test]
    async fn reports_progress_logs_and_outputs() {
        let (res, progress, _t, out) = train(
            "import sys, aibro\n\
             def train(output_dir, epochs='3', name='x'):\n    \
             print('args', epochs, name)\n    \
             for e in range(1, int(epochs) + 1):\n        \
             aibro.report(epoch=e, total_epochs=int(epochs), loss=1.0 / e, acc=e)\n    \
             print('to stderr', file=sys.stderr)\n    \
             aibro.report(note=float('nan'))\n    \
             open(output_dir + '/model.txt', 'w').write(name)\n",
            r#"{"epochs": "2", "name": "m"}"#,
        )
        .await;
        res.unwrap();
        assert_eq!(std::fs::read_to_string(out.join("model.txt")).unwrap(), "m");
        let seqs: Vec<u64> = progress.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, (1..=progress.len() as u64).collect::<Vec<_>>());
        assert!(progress.iter().all(|p| p.job_id == "t"));
        let epochs: Vec<(u32, u32)> = progress
            .iter()
            .filter(|p| p.epoch > 0)
            .map(|p| (p.epoch, p.total_epochs))
            .collect();
        assert_eq!(epochs, [(1, 2), (2, 2)]);
        let e2 = progress.iter().find(|p| p.epoch == 2).unwrap();
        assert_eq!(e2.metrics["loss"], 0.5);
        assert_eq!(e2.metrics["acc"], 2.0);
        let logs: Vec<(&str, &str)> = progress
            .iter()
            .filter(|p| !p.stream.is_empty())
            .map(|p| (p.stream.as_str(), p.log_line.as_str()))
            .collect();
        assert!(logs.contains(&("stdout", "args 2 m")), "{logs:?}");
        assert!(logs.contains(&("stderr", "to stderr")), "{logs:?}");
        assert!(progress
            .iter()
            .any(|p| p.metrics.get("note").is_some_and(|v| v.is_nan())));
    }

    #[tokio::test]
    async fn gets_all_the_agents_gpus() {
        let py = "import os\ndef train(output_dir):\n    \
                  open(output_dir + '/cuda', 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '-'))\n";
        let (res, _, _t, out) = train_on(py, "{}", &[1, 3, 4]).await;
        res.unwrap();
        assert_eq!(std::fs::read_to_string(out.join("cuda")).unwrap(), "1,3,4");
        let (res, _, _t, out) = train(py, "{}").await;
        res.unwrap();
        let inherited = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or("-".into());
        assert_eq!(
            std::fs::read_to_string(out.join("cuda")).unwrap(),
            inherited
        );
    }

    #[tokio::test]
    async fn failures_carry_the_traceback() {
        let (res, ..) = train(
            "def train(output_dir, **args):\n    raise ValueError('diverged ' + args['lr'])\n",
            r#"{"lr": "9"}"#,
        )
        .await;
        match res {
            Err(TrainError::Raised(tb)) => {
                assert!(tb.contains("Traceback"), "{tb}");
                assert!(tb.contains("ValueError: diverged 9"), "{tb}");
            }
            other => panic!("{other:?}"),
        }
        let (res, ..) = train("def train(:\n", "{}").await;
        assert!(
            matches!(&res, Err(TrainError::Raised(tb)) if tb.contains("SyntaxError")),
            "{res:?}"
        );
        let (res, ..) = train("x = 1\n", "{}").await;
        assert!(
            matches!(&res, Err(TrainError::Raised(tb)) if tb.contains("does not define train(output_dir, **args)")),
            "{res:?}"
        );
        // An unexpected argument is the user's error too.
        let (res, ..) = train("def train(output_dir):\n    pass\n", r#"{"lr": "1"}"#).await;
        assert!(
            matches!(&res, Err(TrainError::Raised(tb)) if tb.contains("TypeError")),
            "{res:?}"
        );
        let (res, ..) = train(
            "import aibro\ndef train(output_dir):\n    aibro.report(loss='high')\n",
            "{}",
        )
        .await;
        assert!(
            matches!(&res, Err(TrainError::Raised(tb)) if tb.contains("metric 'loss' must be a number")),
            "{res:?}"
        );
        let (res, ..) = train(
            "import os, sys\ndef train(output_dir):\n    print('bye', file=sys.stderr)\n    os._exit(4)\n",
            "{}",
        )
        .await;
        match res {
            Err(e @ TrainError::Died { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("exit status: 4"), "{msg}");
                assert!(msg.contains("bye"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // sys.exit(0) in train() counts as returning.
        let (res, ..) = train(
            "import sys\ndef train(output_dir):\n    sys.exit(0)\n",
            "{}",
        )
        .await;
        res.unwrap();
    }

    #[tokio::test]
    async fn cancel_kills_the_process() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(
            repo.join("train.py"),
            "import fcntl, os, time\ndef train(output_dir):\n    \
             lock = open(os.path.join(output_dir, 'held'), 'w')\n    \
             fcntl.flock(lock, fcntl.LOCK_EX)\n    print('started')\n    time.sleep(600)\n",
        )
        .unwrap();
        let script = tmp.path().join("trainer.py");
        std::fs::write(&script, TRAINER_PY).unwrap();
        let args_file = tmp.path().join("args.json");
        std::fs::write(&args_file, "{}").unwrap();
        let spec = TrainSpec {
            script,
            repo,
            args_file,
            ..test_spec(tmp.path())
        };
        let (queue, mut rx) = ReportQueue::channel();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let run = tokio::spawn(async move { run(&spec, &queue.of("i"), &c).await });
        // The first log line means train() is running.
        match rx.recv().await.unwrap().body {
            Body::Progress(p) => assert_eq!(p.log_line, "started"),
            other => panic!("{other:?}"),
        }
        cancel.cancel();
        let res = run.await.unwrap();
        assert!(matches!(res, Err(TrainError::Stopped)), "{res:?}");
        // Its lock is free only once it has exited (pids of a sandbox's
        // namespace mean nothing here).
        let held = std::fs::File::open(tmp.path().join("held")).unwrap();
        // SAFETY: flock on an open fd.
        let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "the training process survived");
    }

    /// A training run in `dir` (its output dir) at the machine's sandbox.
    fn test_spec(dir: &std::path::Path) -> TrainSpec {
        let sandbox = crate::sandbox::tests::default_sandbox();
        TrainSpec {
            job_id: "t".into(),
            python: sandbox.python.executable.clone(),
            script: dir.join("trainer.py"),
            repo: dir.join("repo"),
            output_dir: dir.to_path_buf(),
            args_file: dir.join("args.json"),
            gpus: Vec::new(),
            home: dir.join("home"),
            network: Network::Outbound,
            sandbox,
        }
    }
}

//! Dry run of a model repo archive on the local machine (`Deploy{dryrun: true}`):
//! unpack, gear up, start one worker (`load_model()`), run one request on the sample
//! in `data/`, and return the result or the Python traceback. `aibro-agent dry-run`
//! runs it and prints the outcome as one JSON line. Everything of the repo runs
//! in the sandbox, the worker with outbound network or none (`isolate_network`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aibro_repo::archive::{self, ArchiveError, Limits};
use aibro_repo::{DryRunOutcome, PipOptions};
use tokio_util::sync::CancellationToken;

use crate::config::DryRunArgs;
use crate::environment::venv::{self, EnvError};
use crate::sandbox::{Network, Sandbox, SandboxConfig, SandboxError};
use crate::scripts;
use crate::serving::worker::{self, Output, Worker, WorkerError, WorkerSpec};

/// Why a dry run failed (its traceback is this error's text).
#[derive(Debug, thiserror::Error)]
enum DryRunError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unpacking(#[source] tokio::task::JoinError),
    #[error("{0}")]
    Script(#[source] std::io::Error),
    #[error("invalid model repo archive: {0}")]
    Archive(#[source] ArchiveError),
    #[error("the repo has no predict.py at its root")]
    NoPredict,
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("run() raised:\n{0}")]
    RunRaised(String),
    #[error("run_batch() raised on the sample:\n{0}")]
    RunBatchRaised(String),
}

/// `aibro-agent dry-run`: dry-runs `args.archive` in `work_dir` (absolute) in
/// the sandbox of `args.sandbox`; fails when that sandbox is not available.
pub async fn dry_run_local(
    args: &DryRunArgs,
    work_dir: &Path,
) -> Result<DryRunOutcome, SandboxError> {
    let sandbox = Sandbox::new(&SandboxConfig {
        requested: args.sandbox,
        helper: None,
        python: &args.python,
        state_dir: &work_dir.join("sandbox"),
        blocked_hosts: &[],
        loopback_index: crate::sandbox::network::loopback_index(&args.pip),
    })?;
    sandbox.announce();
    let network = Network::of_job(args.isolate_network);
    Ok(dry_run(
        &Arc::new(sandbox),
        work_dir,
        &args.archive,
        &args.pip,
        network,
    )
    .await)
}

/// Dry-runs `archive` in `work_dir` (which should be fresh; virtualenvs are kept in
/// `work_dir/envs`), its worker with `network`. Dropping the future kills the worker.
pub(crate) async fn dry_run(
    sandbox: &Arc<Sandbox>,
    work_dir: &Path,
    archive: &Path,
    pip: &PipOptions,
    network: Network,
) -> DryRunOutcome {
    match run(sandbox, work_dir, archive, pip, network).await {
        Ok(out) => DryRunOutcome {
            ok: true,
            output: out.body,
            content_type: out.content_type,
            traceback: String::new(),
        },
        Err(e) => DryRunOutcome::failed(e.to_string()),
    }
}

async fn run(
    sandbox: &Arc<Sandbox>,
    work_dir: &Path,
    archive_path: &Path,
    pip: &PipOptions,
    network: Network,
) -> Result<Output, DryRunError> {
    let repo = unpack(archive_path, &work_dir.join("repo")).await?;
    let penv = venv::gear_up(sandbox, &repo, &work_dir.join("envs"), pip).await?;
    let script = scripts::install_worker(work_dir).map_err(DryRunError::Script)?;
    let dir = work_dir.join("workers").join("0");
    worker::prepare_dir(&repo, &dir).map_err(|source| DryRunError::Io {
        path: dir.clone(),
        source,
    })?;
    let spec = WorkerSpec {
        python: penv.python,
        script,
        dir,
        index: 0,
        gpus: Vec::new(),
        threads: crate::hardware::threads_per_worker(1),
        repo: repo.clone(),
        home: work_dir.join("home"),
        network,
        sandbox: sandbox.clone(),
    };
    let (payload, content_type) = sample(&repo.join("data"));
    let mut w = Worker::start(&spec, &CancellationToken::new()).await?;
    let res = call_sample(&mut w, &payload, content_type).await;
    w.shutdown().await;
    res
}

/// Unpacks the archive into `repo` (emptied first) and checks it can serve.
async fn unpack(archive_path: &Path, repo: &Path) -> Result<PathBuf, DryRunError> {
    if repo.exists() {
        std::fs::remove_dir_all(repo).map_err(|source| DryRunError::Io {
            path: repo.to_path_buf(),
            source,
        })?;
    }
    let (a, r) = (archive_path.to_path_buf(), repo.to_path_buf());
    let manifest = tokio::task::spawn_blocking(move || archive::unpack(&a, &r, &Limits::default()))
        .await
        .map_err(DryRunError::Unpacking)?
        .map_err(DryRunError::Archive)?;
    if !manifest.has_predict {
        return Err(DryRunError::NoPredict);
    }
    Ok(repo.to_path_buf())
}

/// Runs the sample through run(), and through run_batch() too where predict.py
/// defines it (a batched deployment calls it for every request).
async fn call_sample(
    w: &mut Worker,
    payload: &[u8],
    content_type: &str,
) -> Result<Output, DryRunError> {
    let res = w.call(payload, content_type, true).await;
    let batch = match res {
        Ok(_) if w.run_batch => Some(w.call_batch(&[(payload, content_type)]).await),
        _ => None,
    };
    match batch.map(|b| b.map(|mut outcomes| outcomes.pop())) {
        Some(Ok(Some(Err(WorkerError::UserError(tb))))) => {
            return Err(DryRunError::RunBatchRaised(tb))
        }
        Some(Ok(Some(Err(e)))) | Some(Err(e)) => return Err(e.into()),
        _ => {}
    }
    match res {
        Ok(out) => Ok(out),
        Err(WorkerError::UserError(tb)) => Err(DryRunError::RunRaised(tb)),
        Err(e) => Err(e.into()),
    }
}

/// The content of the single file in `data/` (JSON when it parses), else `{}`.
fn sample(data: &Path) -> (Vec<u8>, &'static str) {
    let files: Vec<_> = std::fs::read_dir(data)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    if let [only] = files.as_slice() {
        if let Ok(bytes) = std::fs::read(only) {
            if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() {
                return (bytes, "application/json");
            }
            return (bytes, "application/octet-stream");
        }
    }
    (b"{}".to_vec(), "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs a repo of `files` (path, content) and dry-runs it with python3.
    async fn dry_run_of(files: &[(&str, &str)]) -> DryRunOutcome {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        for (name, body) in files {
            let p = src.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let archive = tmp.path().join("repo.tar.gz");
        archive::pack_dir(&src, std::fs::File::create(&archive).unwrap()).unwrap();
        let work = tmp.path().join("work");
        let sandbox = crate::sandbox::tests::default_sandbox();
        dry_run(
            &sandbox,
            &work,
            &archive,
            &PipOptions::default(),
            Network::Outbound,
        )
        .await
    }

    #[tokio::test]
    async fn dry_run_ok_with_legacy_run() {
        let out = dry_run_of(&[
            (
                "predict.py",
                "import json\ndef load_model():\n    return 10\n\
                 def run(model):\n    print('printing is fine')\n    \
                 return {'sum': model + json.load(open('data/in.json'))['x']}\n",
            ),
            ("data/in.json", r#"{"x": 5}"#),
        ])
        .await;
        assert!(out.ok, "{}", out.traceback);
        assert_eq!(out.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
        assert_eq!(v, serde_json::json!({"sum": 15}));
    }

    #[tokio::test]
    async fn dry_run_ok_with_two_args_and_bytes_sample() {
        let out = dry_run_of(&[
            (
                "predict.py",
                "def load_model():\n    return None\ndef run(model, data):\n    return data.upper()\n",
            ),
            ("data/img.raw", "abc"),
        ]).await;
        assert!(out.ok, "{}", out.traceback);
        assert_eq!(out.content_type, "application/octet-stream");
        assert_eq!(out.output, b"ABC");
    }

    #[tokio::test]
    async fn dry_run_failures() {
        let out = dry_run_of(&[(
            "predict.py",
            "def load_model():\n    return None\ndef run(model, data):\n    return 1 / 0\n",
        )])
        .await;
        assert!(!out.ok);
        assert!(
            out.traceback.starts_with("run() raised:"),
            "{}",
            out.traceback
        );
        assert!(
            out.traceback.contains("ZeroDivisionError"),
            "{}",
            out.traceback
        );

        // A broken run_batch fails the dry run, though run() works.
        let out = dry_run_of(&[(
            "predict.py",
            "def load_model():\n    return None\ndef run(model, data):\n    return 1\n\
             def run_batch(model, items):\n    return 'not a list'\n",
        )])
        .await;
        assert!(!out.ok);
        assert!(
            out.traceback
                .starts_with("run_batch() raised on the sample:")
                && out.traceback.contains("returned a str"),
            "{}",
            out.traceback
        );

        let out = dry_run_of(&[("predict.py", "def load_model()\n    return None\n")]).await;
        assert!(!out.ok);
        assert!(out.traceback.contains("SyntaxError"), "{}", out.traceback);

        let out = dry_run_of(&[("model.py", "x = 1\n")]).await;
        assert!(out.traceback.contains("no predict.py"), "{}", out.traceback);
    }
}

//! Dry run of a model repo archive on the local machine (`Deploy{dryrun: true}`):
//! unpack, gear up, start one worker (`load_model()`), run one request on the sample
//! in `data/`, and return the result or the Python traceback.

use std::path::Path;

use aibro_repo::archive::{self, Limits};
use aibro_repo::PipOptions;
use tokio_util::sync::CancellationToken;

use crate::env;
use crate::worker::{self, Worker, WorkerError, WorkerSpec};

/// The result of a dry run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DryRunOutcome {
    /// load_model() and run() succeeded.
    pub ok: bool,
    /// What run() returned (JSON, or raw bytes).
    pub output: Vec<u8>,
    /// `application/json` or `application/octet-stream`.
    pub content_type: String,
    /// When not ok: the Python traceback, or what else went wrong.
    pub traceback: String,
}

impl DryRunOutcome {
    fn failed(traceback: impl Into<String>) -> DryRunOutcome {
        DryRunOutcome {
            traceback: traceback.into(),
            ..DryRunOutcome::default()
        }
    }
}

/// Dry-runs `archive` in `work_dir` (which should be fresh; virtualenvs are kept in
/// `work_dir/envs`). Dropping the future kills the worker.
pub async fn dry_run(
    python: &str,
    work_dir: &Path,
    archive: &Path,
    pip: &PipOptions,
) -> DryRunOutcome {
    match run(python, work_dir, archive, pip).await {
        Ok(outcome) => outcome,
        Err(text) => DryRunOutcome::failed(text),
    }
}

async fn run(
    python: &str,
    work_dir: &Path,
    archive_path: &Path,
    pip: &PipOptions,
) -> Result<DryRunOutcome, String> {
    let repo = work_dir.join("repo");
    if repo.exists() {
        std::fs::remove_dir_all(&repo).map_err(|e| format!("{}: {e}", repo.display()))?;
    }
    let (a, r) = (archive_path.to_path_buf(), repo.clone());
    let manifest = tokio::task::spawn_blocking(move || archive::unpack(&a, &r, &Limits::default()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("invalid model repo archive: {e}"))?;
    if !manifest.has_predict {
        return Err("the repo has no predict.py at its root".into());
    }
    let penv = env::gear_up(python, &repo, &work_dir.join("envs"), pip)
        .await
        .map_err(|e| e.to_string())?;
    let script = worker::install_script(work_dir).map_err(|e| e.to_string())?;
    let dir = work_dir.join("workers").join("0");
    worker::prepare_dir(&repo, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec = WorkerSpec {
        python: penv.python,
        script,
        dir,
        index: 0,
        gpus: Vec::new(),
        threads: crate::hardware::threads_per_worker(1),
    };
    let (payload, content_type) = sample(&repo.join("data"));
    let mut w = Worker::start(&spec, &CancellationToken::new())
        .await
        .map_err(|e| e.to_string())?;
    let res = w.call(&payload, content_type, true).await;
    // A batched deployment calls run_batch for every request: try it too.
    let batch = match res {
        Ok(_) if w.run_batch => Some(w.call_batch(&[(&payload, content_type)]).await),
        _ => None,
    };
    w.shutdown().await;
    match batch.map(|b| b.map(|mut outcomes| outcomes.pop())) {
        Some(Ok(Some(Err(WorkerError::UserError(tb))))) => {
            return Err(format!("run_batch() raised on the sample:\n{tb}"))
        }
        Some(Ok(Some(Err(e)))) | Some(Err(e)) => return Err(e.to_string()),
        _ => {}
    }
    match res {
        Ok(out) => Ok(DryRunOutcome {
            ok: true,
            output: out.body,
            content_type: out.content_type,
            traceback: String::new(),
        }),
        Err(WorkerError::UserError(tb)) => Err(format!("run() raised:\n{tb}")),
        Err(e) => Err(e.to_string()),
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
        dry_run("python3", &work, &archive, &PipOptions::default()).await
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

//! Gear-up: the Python environment a repo runs in. Without requirements the
//! configured interpreter is used as is; otherwise a virtualenv per requirements
//! file (keyed by the first 16 hex of its sha256) is created and pip-installed once,
//! then reused (a `.ready` marker is written last). Both run sandboxed with the
//! network of a build (the index reachable), the virtualenv writable, the repo
//! and local `--pip-find-links` directories readable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use aibro_repo::manifest::REQUIREMENTS_TXT;
use aibro_repo::PipOptions;
use sha2::{Digest, Sha256};

use crate::launcher::{self, ProcessSpec, SpawnError};
use crate::sandbox::{Network, Sandbox};

const OUTPUT_TAIL_BYTES: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvError {
    #[error("cannot read requirements.txt: {0}")]
    Requirements(#[source] std::io::Error),
    #[error("cannot prepare the environment directory `{path}`: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: SpawnError,
    },
    #[error("`{program}` failed: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{python} -m venv` failed ({status}):\n{output}")]
    Venv {
        python: String,
        status: String,
        output: String,
    },
    #[error("pip install -r requirements.txt failed ({status}); fix requirements.txt. pip said:\n{output}")]
    Pip { status: String, output: String },
}

/// The interpreter to run workers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PythonEnv {
    pub python: PathBuf,
    /// A previously built virtualenv was reused.
    pub cached: bool,
}

/// The venv directory `repo` needs under `envs_dir`, or None when it needs none.
pub(crate) fn venv_dir(repo: &Path, envs_dir: &Path) -> Result<Option<PathBuf>, EnvError> {
    let path = repo.join(REQUIREMENTS_TXT);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EnvError::Requirements(e)),
    };
    let has_reqs = String::from_utf8_lossy(&bytes).lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    });
    if !has_reqs {
        return Ok(None);
    }
    let digest = hex::encode(Sha256::digest(&bytes));
    Ok(Some(envs_dir.join(&digest[..16])))
}

/// A ready virtualenv for `repo` exists under `envs_dir`, so [`gear_up`] will
/// install nothing. A repo without requirements is never cached: it has no
/// virtualenv (gearing up is instant, but still a phase of its own).
pub(crate) fn is_cached(repo: &Path, envs_dir: &Path) -> bool {
    match venv_dir(repo, envs_dir) {
        Ok(Some(dir)) => dir.join(".ready").exists(),
        _ => false,
    }
}

/// Makes the environment for `repo` ready and returns its interpreter (the
/// sandbox's Python installation when the repo needs no virtualenv).
pub(crate) async fn gear_up(
    sandbox: &Sandbox,
    repo: &Path,
    envs_dir: &Path,
    pip: &PipOptions,
) -> Result<PythonEnv, EnvError> {
    let python = &sandbox.python.executable;
    let Some(dir) = venv_dir(repo, envs_dir)? else {
        return Ok(PythonEnv {
            python: python.clone(),
            cached: false,
        });
    };
    let venv_python = dir.join("bin/python");
    // One build per venv at a time within this process.
    let lock = lock_for(&dir);
    let _guard = lock.lock().await;
    if dir.join(".ready").exists() {
        return Ok(PythonEnv {
            python: venv_python,
            cached: true,
        });
    }
    let derr = |source| EnvError::Dir {
        path: dir.clone(),
        source,
    };
    if dir.exists() {
        tokio::fs::remove_dir_all(&dir).await.map_err(derr)?;
    }
    // Created empty: the sandbox binds it writable.
    tokio::fs::create_dir_all(&dir).await.map_err(derr)?;
    tracing::info!(venv = %dir.display(), "creating virtualenv");
    let home = dir.with_extension("home");
    let create = build(ProcessSpec::new(python, &home), &dir)
        .args(["-m", "venv"])
        .arg(&dir);
    let out = run(sandbox, &create).await?;
    if !out.status.success() {
        return Err(EnvError::Venv {
            python: python.display().to_string(),
            status: out.status.to_string(),
            output: tail(&out),
        });
    }
    let mut install = build(ProcessSpec::new(&venv_python, &home), &dir)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
        .arg(repo.join(REQUIREMENTS_TXT))
        .args(pip.install_args());
    install.cwd = Some(repo.to_path_buf());
    // The job's own copy: a local package in requirements.txt builds in place.
    install.writable.push(repo.to_path_buf());
    install.readable.extend(local_find_links(pip));
    tracing::info!(venv = %dir.display(), "pip install -r requirements.txt");
    let out = run(sandbox, &install).await?;
    if !out.status.success() {
        return Err(EnvError::Pip {
            status: out.status.to_string(),
            output: tail(&out),
        });
    }
    tokio::fs::write(dir.join(".ready"), b"")
        .await
        .map_err(derr)?;
    Ok(PythonEnv {
        python: venv_python,
        cached: false,
    })
}

fn lock_for(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .expect("env locks")
        .entry(dir.to_path_buf())
        .or_default()
        .clone()
}

/// `spec` as a build step of the virtualenv `dir`.
fn build(mut spec: ProcessSpec, dir: &Path) -> ProcessSpec {
    spec.writable.push(dir.to_path_buf());
    spec.network = Network::Build;
    spec
}

/// The `--pip-find-links` that are directories of this host.
fn local_find_links(pip: &PipOptions) -> impl Iterator<Item = PathBuf> + '_ {
    pip.pip_find_links
        .iter()
        .filter(|l| !l.contains("://") || l.starts_with("file://"))
        .map(|l| PathBuf::from(l.trim_start_matches("file://")))
        .filter_map(|p| std::path::absolute(p).ok())
}

/// Runs `spec` to its end and collects its output.
async fn run(sandbox: &Sandbox, spec: &ProcessSpec) -> Result<std::process::Output, EnvError> {
    let program = spec.program.display().to_string();
    let child = launcher::spawn(sandbox, spec)
        .await
        .map_err(|source| EnvError::Spawn {
            program: program.clone(),
            source,
        })?;
    child
        .wait_with_output()
        .await
        .map_err(|source| EnvError::Wait { program, source })
}

/// The last few KiB of stdout + stderr.
fn tail(out: &std::process::Output) -> String {
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    let all = all.trim_end();
    let mut start = all.len().saturating_sub(OUTPUT_TAIL_BYTES);
    while !all.is_char_boundary(start) {
        start += 1;
    }
    all[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::tests::default_sandbox;

    #[tokio::test]
    async fn no_requirements_uses_configured_python() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        let pip = PipOptions::default();
        let env = gear_up(&default_sandbox(), repo, &repo.join("envs"), &pip)
            .await
            .unwrap();
        assert_eq!(env.python, default_sandbox().python.executable);
        std::fs::write(repo.join("requirements.txt"), "# only a comment\n\n").unwrap();
        let env = gear_up(&default_sandbox(), repo, &repo.join("envs"), &pip)
            .await
            .unwrap();
        assert_eq!(env.python, default_sandbox().python.executable);
        assert!(!env.cached);
        // Never "cached": there is no virtualenv to reuse.
        assert!(!is_cached(repo, &repo.join("envs")));
        assert!(!repo.join("envs").exists());
    }

    #[tokio::test]
    async fn venv_is_built_once_then_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        // An options-only requirements file: a venv is built, pip installs nothing.
        std::fs::write(repo.join("requirements.txt"), "--no-index\n").unwrap();
        let envs = tmp.path().join("envs");
        let pip = PipOptions::default();
        assert!(!is_cached(&repo, &envs));
        let env = gear_up(&default_sandbox(), &repo, &envs, &pip)
            .await
            .unwrap();
        assert!(!env.cached);
        assert!(env.python.ends_with("bin/python"), "{env:?}");
        assert!(env.python.exists());
        assert!(is_cached(&repo, &envs));
        let again = gear_up(&default_sandbox(), &repo, &envs, &pip)
            .await
            .unwrap();
        assert!(again.cached);
        assert_eq!(again.python, env.python);
    }

    #[tokio::test]
    async fn pip_failure_reports_output() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(
            repo.join("requirements.txt"),
            "surely-not-a-real-package-aibro==9.9\n",
        )
        .unwrap();
        let pip = PipOptions {
            pip_no_index: true,
            ..PipOptions::default()
        };
        let e = gear_up(&default_sandbox(), &repo, &tmp.path().join("envs"), &pip)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, EnvError::Pip { .. }), "{msg}");
        assert!(msg.contains("surely-not-a-real-package-aibro"), "{msg}");
        assert!(!is_cached(&repo, &tmp.path().join("envs")));
    }
}

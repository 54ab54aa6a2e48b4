//! The Python scripts embedded in the agent (the serving worker and the trainer),
//! written into its data directory so that the Python processes can run them.

use std::path::{Path, PathBuf};

use crate::serving::worker::WORKER_PY;
use crate::training::trainer::TRAINER_PY;

/// Where the embedded scripts have been written.
pub(crate) struct Scripts {
    pub worker: PathBuf,
    pub trainer: PathBuf,
}

impl Scripts {
    /// Writes both scripts into `dir`.
    pub(crate) fn install(dir: &Path) -> std::io::Result<Scripts> {
        Ok(Scripts {
            worker: install_worker(dir)?,
            trainer: install_file(dir, "trainer.py", TRAINER_PY)?,
        })
    }
}

/// Writes `worker.py` into `dir` (if it is missing or differs) and returns its path.
pub(crate) fn install_worker(dir: &Path) -> std::io::Result<PathBuf> {
    install_file(dir, "worker.py", WORKER_PY)
}

/// Writes `body` as `dir/name` (if it is missing or differs, atomically) and
/// returns its path.
fn install_file(dir: &Path, name: &str, body: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(body) {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

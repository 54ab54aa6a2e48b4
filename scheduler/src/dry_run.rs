//! Dry runs of a model repo archive (`Deploy{dryrun: true}`), through the
//! agent binary (`aibro-agent dry-run`): the scheduler neither links the code
//! that runs user repos nor runs Python itself. The agent prints one JSON
//! line with the outcome; anything else it prints is ignored.

use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use aibro_repo::DryRunOutcome;
use aibro_repo::ParseError;

/// Why a dry run gave no outcome.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("cannot start `{bin}` for the dry run: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the dry run's agent failed ({status}): {stderr}")]
    Agent { status: String, stderr: String },
    #[error("the dry run's agent printed no outcome: {0}")]
    NoOutcome(String),
    #[error(transparent)]
    BadOutcome(#[from] ParseError),
}

/// How dry runs are run: the agent binary and the flags it gears up with.
#[derive(Debug, Clone)]
pub struct DryRunner {
    pub agent_bin: PathBuf,
    pub python: String,
    /// pip flags, as the agent takes them (`--pip-index-url URL`, …).
    pub pip_args: Vec<String>,
}

impl Default for DryRunner {
    fn default() -> Self {
        DryRunner {
            agent_bin: PathBuf::from("aibro-agent"),
            python: "python3".into(),
            pip_args: Vec::new(),
        }
    }
}

impl DryRunner {
    /// Dry-runs `archive` in `work_dir` (fresh; removed by the caller).
    /// Dropping the future kills the agent and its worker.
    pub async fn run(&self, archive: &Path, work_dir: &Path) -> Result<DryRunOutcome, DryRunError> {
        let output = tokio::process::Command::new(&self.agent_bin)
            .arg("dry-run")
            .arg("--archive")
            .arg(archive)
            .arg("--work-dir")
            .arg(work_dir)
            .args(["--python", &self.python])
            .args(&self.pip_args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| DryRunError::Spawn {
                bin: self.agent_bin.clone(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(DryRunError::Agent {
                status: output.status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        parse(&stdout)
    }
}

/// The last JSON line of the agent's output.
fn parse(stdout: &str) -> Result<DryRunOutcome, DryRunError> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| DryRunError::NoOutcome(stdout.chars().take(200).collect()))?;
    Ok(DryRunOutcome::from_json_line(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_json_line_is_the_outcome() {
        let out = "noise\n{\"ok\":true,\"output_b64\":\"eyJ4IjoxfQ==\",\"content_type\":\"application/json\",\"traceback\":\"\"}\n";
        let run = parse(out).unwrap();
        assert!(run.ok);
        assert_eq!(run.output, br#"{"x":1}"#);
        assert_eq!(run.content_type, "application/json");
    }

    #[test]
    fn no_outcome_is_an_error() {
        assert!(matches!(parse("nothing"), Err(DryRunError::NoOutcome(_))));
        let bad = "{\"ok\":true,\"output_b64\":\"!!\",\"content_type\":\"\",\"traceback\":\"\"}";
        assert!(matches!(parse(bad), Err(DryRunError::BadOutcome(_))));
    }
}

//! `aibro deploy --dryrun --local`: runs the repo once on its sample input on
//! this machine, as the original AIbro did, through `aibro-agent dry-run`
//! (beside this program, else on PATH): the same gear-up and worker as on an
//! instance. No scheduler is asked and no job is created.

use std::path::PathBuf;
use std::process::Stdio;

use aibro_repo::DryRunOutcome;
use anyhow::{bail, Context, Result};

use super::deploy::show_dry_run;
use crate::args::DeployArgs;
use crate::upload;

pub async fn run(args: &DeployArgs, json: bool) -> Result<()> {
    let archive = upload::prepare(&args.artifacts).await?;
    let work = tempfile::Builder::new()
        .prefix("aibro-dryrun-")
        .tempdir()
        .context("creating a work directory for the dry run")?;
    let agent = agent_bin();
    let output = tokio::process::Command::new(&agent)
        .arg("dry-run")
        .arg("--archive")
        .arg(archive.path())
        .arg("--work-dir")
        .arg(work.path())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| {
            format!(
                "cannot run `{}`: install aibro-agent beside aibro or on PATH",
                agent.display()
            )
        })?;
    if !output.status.success() {
        bail!("`{} dry-run` failed ({})", agent.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let outcome = DryRunOutcome::from_json_line(line)
        .with_context(|| format!("`{} dry-run` printed no outcome", agent.display()))?;
    show_dry_run(json, outcome.into())
}

/// `aibro-agent` beside this program, else the one on PATH.
fn agent_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("aibro-agent")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("aibro-agent"))
}

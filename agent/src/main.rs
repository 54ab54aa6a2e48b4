//! `aibro-agent`: parses flags, sets up logging, binds the listener and runs the
//! agent until SIGINT/SIGTERM (or until the scheduler is gone for too long); or,
//! as `aibro-agent dry-run`, dry-runs a repo archive and prints its outcome.
#![deny(clippy::too_many_lines)]

use std::io::Write;

use aibro_agent::{Args, Cli, Command, DryRunArgs};
use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::DryRun(args)) => dry_run(args),
        Some(Command::SandboxExec(args)) => {
            std::process::exit(aibro_agent::sandbox::exec::run(args))
        }
        None => agent(cli.agent),
    }
}

fn agent(args: Args) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.runtime_threads {
        runtime.worker_threads(n.max(1));
    }
    runtime.enable_all().build()?.block_on(serve(args))
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(log_filter())
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(log_filter())
            .init();
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    aibro_agent::run(args, listener, shutdown_signal()).await?;
    Ok(())
}

/// Prints the dry run's outcome as the one line on stdout; everything else
/// (logs, the user's prints) goes to stderr.
fn dry_run(args: DryRunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .init();
    // Absolute: the worker runs in a directory of its own.
    let work_dir = std::path::absolute(&args.work_dir)
        .with_context(|| format!("--work-dir {}", args.work_dir.display()))?;
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(aibro_agent::dry_run_local(&args, &work_dir))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", outcome.to_json_line())?;
    stdout.flush()?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

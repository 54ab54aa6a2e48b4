//! `aibro-scheduler`: parse flags, set up logging, bind, run until SIGINT/SIGTERM.

use clap::Parser;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "aibro-scheduler", version, about = "aibro-rs scheduler")]
struct Args {
    #[command(flatten)]
    config: aibro_scheduler::Config,
    /// Log as JSON lines.
    #[arg(long, env = "AIBRO_LOG_JSON")]
    log_json: bool,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let listener = TcpListener::bind(args.config.listen).await?;
    aibro_scheduler::run(args.config, listener, shutdown_signal()).await
}

#![deny(clippy::too_many_lines)]
//! `aibro-scheduler`: parse flags, set up logging, bind, run until SIGINT/SIGTERM.
//! `aibro-scheduler simulate` replays a request trace on a virtual clock;
//! `aibro-scheduler tls init|agent` makes TLS certificates;
//! `aibro-scheduler ec2 user-data` prints an EC2 instance's boot script.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aibro-scheduler", version, about = "aibro-rs scheduler")]
#[command(args_conflicts_with_subcommands = true, args_override_self = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: aibro_scheduler::Config,
    /// Log as JSON lines.
    #[arg(long, env = "AIBRO_LOG_JSON")]
    log_json: bool,
    /// Threads of the async runtime (default: one per core).
    #[arg(long, env = "AIBRO_SCHEDULER_THREADS")]
    runtime_threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a request trace through the scheduler's routing, cool-down and
    /// cost code on a virtual clock (no processes) and print cost per instance.
    Simulate {
        /// Request times, one per line, in seconds since the deploy; `end S` ends the day.
        #[arg(long)]
        trace: PathBuf,
        /// On-demand machine id of the standby instance.
        #[arg(long)]
        standby: String,
        /// On-demand machine id of the cooling instance.
        #[arg(long)]
        cooling: Option<String>,
        /// Seconds without requests before the cooling instance stops.
        #[arg(long, default_value_t = 600)]
        cool_down: u32,
        /// Virtual seconds an instance takes from launch (or wake) to serving.
        #[arg(long, default_value_t = 0.0)]
        boot_s: f64,
    },
    /// TLS material for a scheduler and agents on a real network.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// The EC2 provider's tools.
    #[command(subcommand)]
    Ec2(Ec2Command),
}

#[derive(Subcommand)]
enum Ec2Command {
    /// Print the boot script (user data) an EC2 instance gets with the
    /// scheduler's flags, for review (its bootstrap token is a placeholder).
    UserData {
        /// The machine id the example instance is launched as.
        #[arg(long, default_value = "g4dn.xlarge.od")]
        machine_id: String,
        #[command(flatten)]
        config: Box<aibro_scheduler::Config>,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Make a CA (ca.pem, ca-key.pem) and the scheduler's certificate
    /// (scheduler.pem, scheduler-key.pem) signed by it, in --dir.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// A DNS name or IP address clients reach the scheduler at (repeat).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Issue an agent's certificate (agent-NAME.pem, agent-NAME-key.pem) from
    /// the CA in --dir.
    Agent {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// A DNS name or IP address the scheduler reaches the agent at (repeat).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

/// Writes the TLS files and says how to use them.
fn tls(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Init { dir, hosts } => {
            let (ca, server) = aibro_scheduler::tls::init(&dir, &hosts)?;
            println!(
                "aibro-scheduler --tls-cert {} --tls-key {} --tls-ca {}",
                server.cert.display(),
                server.key.display(),
                ca.cert.display()
            );
            println!(
                "clients: aibro --tls-ca {} (or AIBRO_TLS_CA)",
                ca.cert.display()
            );
        }
        TlsCommand::Agent { dir, name, hosts } => {
            let agent = aibro_scheduler::tls::issue(&dir, &name, &hosts)?;
            println!(
                "aibro-agent --tls-cert {} --tls-key {} --tls-ca {}",
                agent.cert.display(),
                agent.key.display(),
                dir.join("ca.pem").display()
            );
        }
    }
    Ok(())
}

/// The URL EC2 instances reach the scheduler at, as the flags give it.
fn public_url(config: &aibro_scheduler::Config) -> String {
    let url = config.public_url(config.listen);
    if config.ec2.ec2_scheduler_url.is_none()
        && config.listen.ip().is_loopback()
        && config.public_url.is_none()
    {
        eprintln!("warning: {url} is this host's loopback; give --ec2-scheduler-url (or --public-url) with an address instances reach");
    }
    url
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Logs go to stderr through a writer thread, so that a request never waits
/// on a write (nor on stderr's lock): lines are buffered and flushed whenever
/// none is waiting, none dropped (the queue pushes back when full). Colours
/// only on a terminal. The guard flushes what is left when dropped.
fn init_logs(json: bool, default: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("aibro-logs")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    guard
}

fn simulate(trace: PathBuf, options: aibro_scheduler::sim::Options) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&trace)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", trace.display()))?;
    let trace = aibro_scheduler::sim::Trace::parse(&text)?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let report = runtime.block_on(aibro_scheduler::sim::run(&trace, &options, dir.path()))?;
    print!("{}", report.table());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::Simulate {
            trace,
            standby,
            cooling,
            cool_down,
            boot_s,
        }) => {
            let _logs = init_logs(args.log_json, "warn");
            let options = aibro_scheduler::sim::Options {
                standby,
                cooling,
                cool_down_s: cool_down,
                boot: std::time::Duration::from_secs_f64(boot_s.max(0.0)),
            };
            simulate(trace, options)
        }
        Some(Command::Tls(command)) => tls(command),
        Some(Command::Ec2(Ec2Command::UserData { machine_id, config })) => {
            let boot = aibro_scheduler::provider::boot_common(&config, &public_url(&config));
            let example = ("inst-EXAMPLE", "boot_EXAMPLE-ONE-TIME-TOKEN");
            let script = aibro_scheduler::provider::ec2::boot_script(
                &boot,
                example.0,
                &machine_id,
                example.1,
            );
            print!("{script}");
            Ok(())
        }
        None => {
            let _logs = init_logs(args.log_json, "info");
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.runtime_threads {
                runtime.worker_threads(n.max(1));
            }
            let runtime = runtime.enable_all().build()?;
            runtime.block_on(async {
                let listener = aibro_scheduler::bind(args.config.listen)?;
                aibro_scheduler::run(args.config, listener, shutdown_signal()).await
            })
        }
    }
}

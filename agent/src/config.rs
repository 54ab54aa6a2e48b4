//! Command-line flags of `aibro-agent`, each with an `AIBRO_*` environment fallback
//! and a default that works on one machine next to a local scheduler: the agent's
//! ([`Args`]), or a dry run's (`aibro-agent dry-run`, [`DryRunArgs`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use aibro_repo::PipOptions;

use crate::sandbox::exec::ExecArgs;
use crate::sandbox::Requested;

/// `aibro-agent [flags]` runs the agent; `aibro-agent dry-run …` dry-runs a repo
/// archive and exits.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aibro-agent",
    version,
    about = "aibro-rs agent: serves a model repo for the scheduler",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub agent: Args,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Dry-runs a model repo archive: unpacks it, gears up its environment, calls
    /// load_model() and run() on the sample in data/, and prints the outcome as one
    /// JSON line on stdout: {"ok", "output_b64", "content_type", "traceback"}. Logs
    /// (the user's prints among them) go to stderr. Exits 0 whenever it printed.
    DryRun(DryRunArgs),
    /// Internal: the sandbox helper the agent runs user code through.
    #[command(hide = true)]
    SandboxExec(ExecArgs),
}

/// The flags of `aibro-agent dry-run`.
#[derive(Debug, Clone, clap::Args)]
pub struct DryRunArgs {
    /// The model repo archive (a tar.gz of the repo directory).
    #[arg(long)]
    pub archive: PathBuf,
    /// Working directory: the unpacked repo, virtualenvs (`envs/`) and the worker's.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Python interpreter used directly or to create virtualenvs.
    #[arg(long, env = "AIBRO_PYTHON", default_value = "python3")]
    pub python: String,
    #[command(flatten)]
    pub pip: PipOptions,
    /// The sandbox user code runs in (see `--sandbox` of the agent).
    #[arg(long, env = "AIBRO_SANDBOX", value_enum, default_value = "auto")]
    pub sandbox: Requested,
    /// User code gets no network (environment builds still reach the index).
    #[arg(long)]
    pub isolate_network: bool,
}

/// The agent's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aibro-agent",
    version,
    about = "aibro-rs agent: serves a model repo for the scheduler"
)]
pub struct Args {
    /// Threads of the agent's async runtime (default: one per core). Python
    /// workers are processes of their own and do not count.
    #[arg(long, env = "AIBRO_AGENT_THREADS")]
    pub runtime_threads: Option<usize>,
    /// The scheduler's gRPC endpoint.
    #[arg(long, env = "AIBRO_SCHEDULER", default_value = "http://127.0.0.1:7070")]
    pub scheduler: String,
    /// Join token of a pool agent, or the one-time bootstrap token of a cloud
    /// instance's agent (`boot_…`, from its boot script): sent only on the
    /// first Register, which gives the agent its own credential, kept in
    /// `<dir>/credential` (mode 0600) and sent on every call from then on.
    #[arg(
        long,
        env = "AIBRO_JOIN_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub join_token: String,
    /// A file holding the agent's credential, handed over by the provider that
    /// launched it; read at start, then deleted.
    #[arg(long, env = "AIBRO_CREDENTIAL_FILE")]
    pub credential_file: Option<PathBuf>,
    /// The instance this agent runs as (set by the scheduler's provider that
    /// launched it). Without it the agent joins the scheduler's pool as an idle
    /// machine of type --machine-id and waits to be assigned an instance.
    #[arg(long, env = "AIBRO_INSTANCE_ID", default_value = "")]
    pub instance_id: String,
    /// The catalog machine type of this host: required without --instance-id
    /// (pool agents), informative with it.
    #[arg(long, env = "AIBRO_MACHINE_ID", default_value = "")]
    pub machine_id: String,
    /// The GPUs this agent uses, by index (comma-separated), so that several agents
    /// can share a host; default: every GPU detected. They are spread over a job's
    /// Python workers (CUDA_VISIBLE_DEVICES); a training run gets them all.
    #[arg(long, env = "AIBRO_GPUS", value_delimiter = ',')]
    pub gpus: Option<Vec<u32>>,
    /// Data directory: virtualenvs, unpacked jobs, worker dirs.
    #[arg(long, env = "AIBRO_DIR", default_value = "aibro-agent-data")]
    pub dir: PathBuf,
    /// Where the agent's own gRPC service listens.
    #[arg(long, env = "AIBRO_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics at `GET /metrics` on this address (no token:
    /// an address only the operator's network reaches); off by default.
    #[arg(long, env = "AIBRO_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Host the scheduler reaches this agent at; the port is the bound one.
    #[arg(long, env = "AIBRO_ADVERTISE_HOST", default_value = "127.0.0.1")]
    pub advertise_host: String,
    /// Python worker processes per job.
    #[arg(long, env = "AIBRO_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Python interpreter used directly or to create virtualenvs.
    #[arg(long, env = "AIBRO_PYTHON", default_value = "python3")]
    pub python: String,
    #[command(flatten)]
    pub pip: PipOptions,
    /// Exit when the scheduler has been unreachable for this long.
    #[arg(long, env = "AIBRO_ORPHAN_TIMEOUT_S", default_value_t = 300)]
    pub orphan_timeout_s: u64,
    /// TLS certificate chain (PEM) of the agent's own gRPC service (with --tls-key).
    #[arg(long, env = "AIBRO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the agent's own gRPC service.
    #[arg(long, env = "AIBRO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) the scheduler's certificate must chain to, for an
    /// https --scheduler URL.
    #[arg(long, env = "AIBRO_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The sandbox user code runs in: auto (the strongest this machine allows:
    /// full, else namespaces, else landlock), full (bubblewrap namespaces +
    /// Landlock), namespaces (bubblewrap), landlock, or none (unconfined; only
    /// when asked). A level the machine cannot enforce stops the agent.
    #[arg(long, env = "AIBRO_SANDBOX", value_enum, default_value = "auto")]
    pub sandbox: Requested,
    /// The `aibro-agent` binary run as the sandbox helper (default: this one;
    /// set it where the agent runs inside another program, e.g. tests).
    #[arg(long, env = "AIBRO_SANDBOX_HELPER", hide = true)]
    pub sandbox_helper: Option<PathBuf>,
    /// EC2's instance metadata service (IMDSv2), watched for spot interruption
    /// notices and rebalance recommendations, which are reported to the
    /// scheduler: `http://169.254.169.254` on EC2. Without it nothing is watched.
    #[arg(long, env = "AIBRO_IMDS_ENDPOINT", value_parser = http_url)]
    pub imds_endpoint: Option<String>,
    /// How often the metadata service is polled (AWS suggests every 5 s).
    #[arg(long, env = "AIBRO_IMDS_POLL_MS", default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub imds_poll_ms: u64,
    /// Log as JSON lines.
    #[arg(long, env = "AIBRO_LOG_JSON")]
    pub log_json: bool,
}

impl Args {
    /// The defaults, as if no flag and no env var were given.
    pub fn defaults() -> Args {
        <Args as clap::Parser>::parse_from(["aibro-agent"])
    }
}

/// An `http://host[:port]` URL (the metadata service speaks plain HTTP).
fn http_url(s: &str) -> Result<String, String> {
    let uri: hyper::Uri = s.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err("expected an http:// URL, such as http://169.254.169.254".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn parses_flags() {
        let a = Args::try_parse_from([
            "aibro-agent",
            "--scheduler",
            "http://h:1",
            "--workers",
            "3",
            "--pip-find-links",
            "/w",
            "--pip-no-index",
            "--listen",
            "0.0.0.0:9000",
        ])
        .unwrap();
        assert_eq!(a.scheduler, "http://h:1");
        assert_eq!(a.workers, 3);
        assert_eq!(a.pip.pip_find_links, vec!["/w".to_string()]);
        assert!(a.pip.pip_no_index);
        assert_eq!(a.listen.port(), 9000);
        assert_eq!(a.orphan_timeout_s, 300);
        assert_eq!(a.gpus, None);
        assert_eq!(a.machine_id, "");
        assert_eq!(a.sandbox, Requested::Auto);
        assert_eq!(
            a.imds_endpoint, None,
            "the metadata service only when asked"
        );
        assert_eq!(a.imds_poll_ms, 5000);
        let a = Args::try_parse_from(["aibro-agent", "--sandbox", "none"]).unwrap();
        assert_eq!(a.sandbox, Requested::None);
        assert!(Args::try_parse_from(["aibro-agent", "--sandbox", "weak"]).is_err());
    }

    #[test]
    fn dry_run_is_a_subcommand_beside_the_agents_flags() {
        let cli = Cli::try_parse_from([
            "aibro-agent",
            "dry-run",
            "--archive",
            "/a.tar.gz",
            "--work-dir",
            "/w",
            "--python",
            "python3.11",
            "--pip-no-index",
            "--pip-find-links",
            "/wheels",
        ])
        .unwrap();
        let Some(Command::DryRun(d)) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(d.archive, PathBuf::from("/a.tar.gz"));
        assert_eq!(d.work_dir, PathBuf::from("/w"));
        assert_eq!(d.python, "python3.11");
        assert!(d.pip.pip_no_index);
        assert_eq!(d.pip.pip_find_links, ["/wheels"]);
        // Without a subcommand it is the agent, flags as before.
        let cli = Cli::try_parse_from(["aibro-agent", "--workers", "3"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.agent.workers, 3);
        // The agent's flags do not mix with a dry run.
        assert!(Cli::try_parse_from(["aibro-agent", "--workers", "3", "dry-run"]).is_err());
        assert!(Cli::try_parse_from(["aibro-agent", "dry-run", "--archive", "/a"]).is_err());
    }

    #[test]
    fn parses_pool_flags() {
        let a = Args::try_parse_from([
            "aibro-agent",
            "--machine-id",
            "gpu.8xh100",
            "--gpus",
            "4,5,6,7",
            "--imds-endpoint",
            "http://169.254.169.254",
            "--imds-poll-ms",
            "100",
        ])
        .unwrap();
        assert_eq!(a.imds_endpoint.as_deref(), Some("http://169.254.169.254"));
        assert_eq!(a.imds_poll_ms, 100);
        assert_eq!(a.instance_id, "");
        assert_eq!(a.machine_id, "gpu.8xh100");
        assert_eq!(a.gpus, Some(vec![4, 5, 6, 7]));
        assert!(Args::try_parse_from(["aibro-agent", "--gpus", "0,x"]).is_err());
        for bad in ["169.254.169.254", "https://169.254.169.254", "http://"] {
            assert!(
                Args::try_parse_from(["aibro-agent", "--imds-endpoint", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Args::try_parse_from(["aibro-agent", "--imds-poll-ms", "0"]).is_err());
        let a = Args::try_parse_from(["aibro-agent", "--imds-endpoint", "http://127.0.0.1:9/"]);
        assert!(a.is_ok(), "{a:?}");
    }
}

//! Command-line flags of `aibro-agent`, each with an `AIBRO_*` environment fallback
//! and a default that works on one machine next to a local scheduler.

use std::net::SocketAddr;
use std::path::PathBuf;

use aibro_repo::PipOptions;

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
    /// Join token, sent as `authorization: Bearer <token>` on every call.
    #[arg(
        long,
        env = "AIBRO_JOIN_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub join_token: String,
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
    }

    #[test]
    fn parses_pool_flags() {
        let a = Args::try_parse_from([
            "aibro-agent",
            "--machine-id",
            "gpu.8xh100",
            "--gpus",
            "4,5,6,7",
        ])
        .unwrap();
        assert_eq!(a.instance_id, "");
        assert_eq!(a.machine_id, "gpu.8xh100");
        assert_eq!(a.gpus, Some(vec![4, 5, 6, 7]));
        assert!(Args::try_parse_from(["aibro-agent", "--gpus", "0,x"]).is_err());
    }
}

//! Scheduler configuration: defaults that work with no flags at all (local
//! provider, `./aibro-data`), and the clap flags with `AIBRO_*` env fallbacks.

mod ec2;
mod metrics;

pub use ec2::Ec2Config;
pub use metrics::{MetricsConfig, Switch};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "AIBRO_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the sled store, blobs, instance dirs and the admin token live.
    #[arg(long, env = "AIBRO_DATA_DIR", default_value = "./aibro-data")]
    pub data_dir: PathBuf,
    /// The URL users and agents reach this scheduler at (default: http://<listen>).
    #[arg(long, env = "AIBRO_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A TOML catalog of machine types added to the shipped one.
    #[arg(long, env = "AIBRO_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// The agent binary the local provider runs (default: `aibro-agent` beside this program).
    #[arg(long, env = "AIBRO_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// Python worker processes per agent.
    #[arg(long, env = "AIBRO_AGENT_WORKERS", default_value_t = 2)]
    pub agent_workers: u32,
    /// Threads of each local agent's async runtime (its `--runtime-threads`;
    /// default: one per core).
    #[arg(long)]
    pub agent_runtime_threads: Option<usize>,
    /// The sandbox local agents run user code in (their `--sandbox`: auto,
    /// full, namespaces, landlock or none); default: the agent's own (auto).
    #[arg(long, env = "AIBRO_AGENT_SANDBOX",
        value_parser = ["auto", "full", "namespaces", "landlock", "none"])]
    pub agent_sandbox: Option<String>,
    /// The Python interpreter agents and dry runs use.
    #[arg(long, env = "AIBRO_PYTHON", default_value = "python3")]
    pub python: String,
    /// pip options for gearing up environments (passed on to agents).
    #[command(flatten)]
    pub pip: aibro_repo::PipOptions,
    /// Largest artifact upload, in bytes.
    #[arg(long, env = "AIBRO_MAX_ARTIFACT_BYTES", default_value_t = 8 << 30)]
    pub max_artifact_bytes: u64,
    /// Largest Predict payload, in bytes.
    #[arg(long, env = "AIBRO_MAX_PAYLOAD_BYTES", default_value_t = 16 << 20)]
    pub max_payload_bytes: usize,
    /// Seconds a launched agent may take to register before its job is canceled.
    #[arg(long, env = "AIBRO_CONNECT_TIMEOUT_S", default_value_t = 120)]
    pub connect_timeout_s: u64,
    /// Milliseconds between agent heartbeats.
    #[arg(long, env = "AIBRO_HEARTBEAT_MS", default_value_t = 2000)]
    pub heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which an agent is taken as lost
    /// (a deployed job's instance is replaced; otherwise its job is canceled,
    /// or its cooling instance stopped).
    #[arg(long, env = "AIBRO_AGENT_LOST_AFTER_MS", default_value_t = 15_000)]
    pub agent_lost_after_ms: u64,
    /// Seconds without requests after which a cooling instance shows COOLING
    /// (at most half its cool-down period).
    #[arg(long, env = "AIBRO_COOLING_IDLE_S", default_value_t = 60)]
    pub cooling_idle_s: u64,
    /// Milliseconds between looks of the cool-down countdown at its instance.
    #[arg(long, env = "AIBRO_LIFECYCLE_TICK_MS", default_value_t = 1000)]
    pub lifecycle_tick_ms: u64,
    /// Seconds an agent keeps running without reaching the scheduler before it exits.
    #[arg(long, env = "AIBRO_AGENT_ORPHAN_TIMEOUT_S", default_value_t = 300)]
    pub agent_orphan_timeout_s: u64,
    /// The longest any call may run, in seconds (uploads of large repos and dry
    /// runs included); clients may ask for less with their own deadline.
    /// Streams of WatchJob and downloads are not cut once they answer.
    #[arg(long, env = "AIBRO_REQUEST_TIMEOUT_S", default_value_t = 3600)]
    pub request_timeout_s: u64,
    /// Calls (gRPC and HTTP) served at once; one more is refused at once
    /// with HTTP 503 `overloaded` + `Retry-After` or gRPC UNAVAILABLE, never
    /// queued. The agents' gateway is not counted.
    #[arg(long, env = "AIBRO_MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// An origin (e.g. `https://app.example.com`, or `*`) whose browser
    /// pages may call the HTTP predict URL (CORS); repeatable. Default: none,
    /// and no CORS headers are sent.
    #[arg(
        long = "http-cors-origin",
        env = "AIBRO_HTTP_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub http_cors_origins: Vec<String>,
    /// TLS certificate chain (PEM) of the gRPC server (with --tls-key): users
    /// and agents then connect over https. Local agents serve with it too.
    #[arg(long, env = "AIBRO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the gRPC server.
    #[arg(long, env = "AIBRO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) the agents' certificates (and this scheduler's)
    /// chain to: the scheduler reaches agents over https, verifying them, and
    /// local agents verify the scheduler with it. Default with --tls-cert: the
    /// certificate itself (self-signed).
    #[arg(long, env = "AIBRO_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The CA's private key (`ca-key.pem` from `tls init`): a cloud instance's
    /// agent gets a certificate for its address from it at its bootstrap, so
    /// that the scheduler reaches it over https too. Needed by the EC2
    /// provider with --tls-cert.
    #[arg(long, env = "AIBRO_TLS_CA_KEY", requires = "tls_ca")]
    pub tls_ca_key: Option<PathBuf>,
    /// Run deploys on the spot twin of their on-demand machine ids whenever a
    /// spot request is fulfilled (interrupted spot instances are replaced).
    #[arg(long, env = "AIBRO_USE_SPOT", default_value_t = true, action = clap::ArgAction::Set)]
    pub use_spot: bool,
    /// Seconds between looks for spot capacity for on-demand stand-ins.
    #[arg(long, env = "AIBRO_SPOT_CHECK_S", default_value_t = 60)]
    pub spot_check_s: u64,
    /// Local provider: the probability a spot request is fulfilled, for every
    /// type (default: each type's `spot_availability` in the catalog).
    #[arg(long, env = "AIBRO_SPOT_AVAILABILITY")]
    pub spot_availability: Option<f64>,
    /// Local provider: random interruptions per spot instance and hour.
    #[arg(long, env = "AIBRO_SPOT_INTERRUPTIONS_PER_HOUR", default_value_t = 0.0)]
    pub spot_interruptions_per_hour: f64,
    /// Local provider: milliseconds of notice before an interrupted spot
    /// instance is reclaimed.
    #[arg(long, env = "AIBRO_SPOT_NOTICE_MS", default_value_t = 120_000)]
    pub spot_notice_ms: u64,
    #[command(flatten)]
    pub ec2: Ec2Config,
    #[command(flatten)]
    pub metrics: MetricsConfig,
}

impl Config {
    /// The defaults, with the data dir given.
    pub fn new(data_dir: PathBuf) -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        let mut config = <Defaults as clap::Parser>::parse_from(["aibro-scheduler"]).config;
        config.data_dir = data_dir;
        config
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_s)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// The URL users and agents reach this scheduler at: --public-url, else
    /// the address it listens on (`bound`: the port it got for port 0).
    pub fn public_url(&self, bound: SocketAddr) -> String {
        self.public_url.clone().unwrap_or_else(|| {
            aibro_proto::transport::url(&bound.to_string(), self.tls_cert.is_some())
        })
    }

    /// The CA agents are verified with (and verify this scheduler with).
    pub fn tls_ca(&self) -> Option<PathBuf> {
        self.tls_ca.clone().or_else(|| self.tls_cert.clone())
    }

    /// TLS flags for the agents the local provider starts.
    pub fn agent_tls_args(&self) -> Vec<String> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, self.tls_ca())
        else {
            return Vec::new();
        };
        [("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", &ca)]
            .into_iter()
            .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
            .collect()
    }

    /// The flags every local agent gets: those of every agent, plus its
    /// orphan timeout, TLS files and runtime threads (this host's).
    pub fn agent_args(&self) -> Vec<String> {
        let mut args = self.cloud_agent_args();
        args.extend([
            "--orphan-timeout-s".to_string(),
            self.agent_orphan_timeout_s.to_string(),
        ]);
        args.extend(self.agent_tls_args());
        if let Some(n) = self.agent_runtime_threads {
            args.extend(["--runtime-threads".to_string(), n.to_string()]);
        }
        args
    }

    /// The flags every agent gets, a cloud instance's too: workers, Python,
    /// pip options and sandbox. A cloud agent keeps its own orphan timeout
    /// (it outlives a scheduler restart) and gets its TLS files from its boot
    /// script and its bootstrap.
    pub fn cloud_agent_args(&self) -> Vec<String> {
        let mut args = vec![
            "--workers".to_string(),
            self.agent_workers.to_string(),
            "--python".to_string(),
            self.python.clone(),
        ];
        args.extend(self.pip_args());
        if let Some(level) = &self.agent_sandbox {
            args.extend(["--sandbox".to_string(), level.clone()]);
        }
        args
    }

    /// The pip options as agent flags.
    pub fn pip_args(&self) -> Vec<String> {
        let pip = &self.pip;
        let mut args = Vec::new();
        let mut flag = |name: &str, value: &str| args.extend([name.to_string(), value.to_string()]);
        if let Some(url) = &pip.pip_index_url {
            flag("--pip-index-url", url);
        }
        for url in &pip.pip_extra_index_url {
            flag("--pip-extra-index-url", url);
        }
        for link in &pip.pip_find_links {
            flag("--pip-find-links", link);
        }
        if pip.pip_no_index {
            args.push("--pip-no-index".to_string());
        }
        args
    }

    /// The agent binary: the flag, else `aibro-agent` beside this executable.
    pub fn agent_bin(&self) -> PathBuf {
        self.agent_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("aibro-agent")))
                .filter(|path| path.is_file())
                .unwrap_or_else(|| PathBuf::from("aibro-agent"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn local_agents_get_the_sandbox_asked_for() {
        let config = Cli::parse_from(["aibro-scheduler"]).config;
        assert!(!config.agent_args().contains(&"--sandbox".to_string()));
        let config = Cli::parse_from(["aibro-scheduler", "--agent-sandbox", "namespaces"]).config;
        let args = config.agent_args();
        let at = args.iter().position(|a| a == "--sandbox").unwrap();
        assert_eq!(args[at + 1], "namespaces");
        assert!(Cli::try_parse_from(["aibro-scheduler", "--agent-sandbox", "weak"]).is_err());
    }
}

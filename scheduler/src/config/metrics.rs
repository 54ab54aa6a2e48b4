//! The metrics flags: whether metrics are recorded (`--metrics`), and an
//! address that serves `/metrics` without a token (`--metrics-listen`).

use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MetricsConfig {
    /// Record Prometheus metrics (`GET /metrics` on --listen with the admin
    /// token). `off` makes recording a no-op and /metrics answers 404.
    #[arg(
        long = "metrics",
        env = "AIBRO_METRICS",
        value_enum,
        default_value = "on"
    )]
    pub switch: Switch,
    /// Also serve `GET /metrics` here without a token: an address only the
    /// operator's network reaches (e.g. 10.0.0.5:9464). Off by default.
    #[arg(long, env = "AIBRO_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl MetricsConfig {
    pub fn on(&self) -> bool {
        self.switch == Switch::On
    }
}

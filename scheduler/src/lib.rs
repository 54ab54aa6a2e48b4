#![deny(clippy::too_many_lines)]
//! aibro-rs scheduler: owns every job and instance in an embedded sled store
//! and drives all their status transitions.
//!
//! - [`state`]: the pure status model; [`store`]: the only sled code.
//! - [`control`]: the control plane (deploy, launch, agent reports, close).
//! - [`api`]: thin gRPC adapters (users, and the agents' gateway) and the
//!   HTTP predict URL, on one listener.
//! - [`charts`]: the timeline and training progress as SVG.
//! - [`console`]: the web console's pages, on the same listener.
//! - [`router`]: the Predict hot path; [`provider`]: where machines come from.
//!
//! [`run`] serves everything on a listener until a shutdown future resolves.

pub mod api;
pub mod auth;
pub mod capacity;
pub mod catalog;
pub mod charts;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod crash;
pub mod error;
pub mod hub;
pub mod ledger;
pub mod link;
pub mod metrics;
pub mod provider;
pub mod records;
pub mod router;
pub mod sim;
pub mod state;
pub mod store;
pub mod tls;

use aibro_proto::transport::write_secret;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The token agents join with (`aibro-agent --join-token`), for hosts started by hand.
const JOIN_TOKEN_FILE: &str = "join-token";
/// Written once listening: the address, for scripts and tests that bind port 0.
const LISTEN_ADDR_FILE: &str = "listen-addr";
/// The same for `--metrics-listen`.
const METRICS_ADDR_FILE: &str = "metrics-addr";
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connections the kernel queues for accepting. A restarted scheduler meets
/// its whole fleet reconnecting while it recovers; past this queue new
/// connections are dropped and retried only after the SYN timeout (1 s).
/// Linux caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the scheduler's listener on `addr` with room for a whole fleet of
/// agents connecting at once ([`LISTEN_BACKLOG`]; tokio's `bind` queues 128,
/// as the standard library) and SO_REUSEADDR, so a restart takes the same
/// port at once.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Creates the admin account and writes its token to `<data-dir>/admin-token`
/// on first start; writes the agents' join token to `<data-dir>/join-token`.
async fn ensure_secrets(auth: &auth::Auth, data_dir: &std::path::Path) -> anyhow::Result<()> {
    if !data_dir.join(JOIN_TOKEN_FILE).exists() {
        write_secret(&data_dir.join(JOIN_TOKEN_FILE), auth.join_token())?;
    }
    if !data_dir.join(ADMIN_TOKEN_FILE).exists() {
        let token = auth.create_token(auth::ADMIN_USER).await?;
        write_secret(&data_dir.join(ADMIN_TOKEN_FILE), &token)?;
    }
    Ok(())
}

/// Runs the scheduler on `listener` until `shutdown` resolves, then stops the
/// servers, cancels and joins every background task, and flushes the store.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    prepare_data_dir(&config.data_dir)?;
    let store = store::Store::open(&config.data_dir.join("db")).context("cannot open the store")?;
    let auth = auth::Auth::open(store.clone()).await?;
    ensure_secrets(&auth, &config.data_dir).await?;
    let tls = Tls::from_config(&config)?;
    let public_url = config.public_url(addr);
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let ec2 = config.ec2.connect(config.catalog.is_some()).await?;
    let prices = ec2.as_ref().and_then(|c| c.prices.as_ref());
    let catalog = catalog::Catalog::load_priced(
        config.catalog.as_deref(),
        prices.map(|t| catalog::OnDemandPrices {
            provider: provider::ec2::EC2,
            prices: &t.on_demand,
        }),
    )?;
    let (providers, interruptions) = provider::for_config(provider::ProviderSetup {
        config: &config,
        public_url: &public_url,
        credentials: auth.credentials().clone(),
        agent_tls: tls.agents.clone(),
        ec2,
        scheduler_id: scheduler_id(&store).await?,
        catalog: &catalog,
        tasks: &tasks,
        cancel: &cancel,
    })
    .await
    .context("cannot start the EC2 provider")?;
    let control = control::Control::new(
        control_settings(&config, public_url, &tls),
        store.clone(),
        catalog,
        providers,
        auth,
        tasks.clone(),
        cancel.clone(),
    );
    start_control(&control, interruptions).await?;
    let pages = console::router(&control, config.tls_cert.is_some());
    let services = api::services(&control, &config, pages).await?;
    serve_operator_metrics(&config, &control, &tasks, &cancel).await?;
    announce(&config.data_dir, LISTEN_ADDR_FILE, addr)?;
    let incoming = aibro_proto::transport::incoming(listener);
    let served = match tls.server {
        Some(acceptor) => {
            let incoming = api::accept::handshaken(incoming, acceptor);
            serve_until(services, incoming, cancel.clone(), shutdown).await
        }
        None => serve_until(services, incoming, cancel.clone(), shutdown).await,
    };
    join_tasks(&tasks, &cancel).await;
    // Connections still open (agents keep theirs) may hold the services for a
    // moment longer; the store only needs its last flush.
    drop(control);
    store.flush().await?;
    tracing::info!("scheduler stopped");
    served
}

/// This scheduler's id, made on first start and kept in the store: it tags
/// the scheduler's cloud instances, so that a restart finds them.
async fn scheduler_id(store: &store::Store) -> anyhow::Result<String> {
    const KEY: &str = "scheduler_id";
    if let Some(id) = store.meta(KEY)? {
        return Ok(id);
    }
    let id = uuid::Uuid::now_v7().to_string();
    store.put_meta(KEY, &id).await?;
    Ok(id)
}

/// Creates the data dir and removes the address a previous run announced.
fn prepare_data_dir(data_dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    for file in [LISTEN_ADDR_FILE, METRICS_ADDR_FILE] {
        let _ = std::fs::remove_file(data_dir.join(file));
    }
    Ok(())
}

/// The scheduler's TLS: its own server's, how it verifies agents, and the CA
/// that certifies cloud agents.
struct Tls {
    server: Option<api::accept::TlsAcceptor>,
    agents: Option<tonic::transport::ClientTlsConfig>,
    issuer: Option<std::sync::Arc<tls::Issuer>>,
}

impl Tls {
    fn from_config(config: &Config) -> anyhow::Result<Tls> {
        let server = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                tls::check_server_cert(cert)?;
                Some(api::accept::acceptor(cert, key)?)
            }
            _ => None,
        };
        let agents = config
            .tls_ca()
            .as_deref()
            .map(aibro_proto::transport::client_tls)
            .transpose()?;
        let issuer = match (config.tls_ca(), &config.tls_ca_key) {
            (Some(ca), Some(key)) => Some(std::sync::Arc::new(tls::Issuer::load(&ca, key)?)),
            _ => None,
        };
        if agents.is_some() && issuer.is_none() && config.ec2.ec2_ami.is_some() {
            anyhow::bail!(
                "the EC2 provider with TLS needs --tls-ca-key (ca-key.pem from \
                 `aibro-scheduler tls init`): EC2 agents get their certificates from it"
            );
        }
        Ok(Tls {
            server,
            agents,
            issuer,
        })
    }
}

fn control_settings(config: &Config, public_url: String, tls: &Tls) -> control::Settings {
    control::Settings {
        data_dir: config.data_dir.clone(),
        public_url,
        connect_timeout: config.connect_timeout(),
        heartbeat_interval: config.heartbeat_interval(),
        agent_lost_after: Some(Duration::from_millis(config.agent_lost_after_ms)),
        cooling_idle: Duration::from_secs(config.cooling_idle_s),
        lifecycle_tick: Duration::from_millis(config.lifecycle_tick_ms),
        agent_tls: tls.agents.clone(),
        agent_issuer: tls.issuer.clone(),
        use_spot: config.use_spot,
        spot_check: Duration::from_secs(config.spot_check_s.max(1)),
        metrics: config.metrics.on(),
    }
}

/// Picks up the store's state and starts the background loops.
async fn start_control(
    control: &control::Control,
    interruptions: provider::Interruptions,
) -> anyhow::Result<()> {
    control.recover().await?;
    control.start_liveness();
    control.start_interruptions(interruptions);
    control.start_spot_return();
    Ok(())
}

/// Serves `/metrics` without a token on `--metrics-listen`, if given, in a
/// tracked task that `cancel` ends.
async fn serve_operator_metrics(
    config: &Config,
    control: &control::Control,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = config.metrics.metrics_listen else {
        return Ok(());
    };
    anyhow::ensure!(
        config.metrics.on(),
        "--metrics-listen serves the metrics, which --metrics off turns off"
    );
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-listen {addr}"))?;
    announce(&config.data_dir, METRICS_ADDR_FILE, listener.local_addr()?)?;
    tasks.spawn(api::serve_metrics(
        control.clone(),
        listener,
        cancel.clone(),
    ));
    Ok(())
}

/// Writes a listening address to `<data-dir>/<file>`, whole (rename) so
/// that a reader never sees it half-written.
fn announce(
    data_dir: &std::path::Path,
    file: &str,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let tmp = data_dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, data_dir.join(file))?;
    tracing::info!(%addr, data_dir = %data_dir.display(), file, "scheduler listening");
    Ok(())
}

/// Serves until `shutdown` resolves (or the server fails); open streams and
/// idle client connections then get a grace period.
async fn serve_until<IO>(
    services: tonic::transport::server::Router,
    incoming: impl futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    cancel: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    let serve = services.serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned());
    let mut server = tokio::spawn(serve);
    let served = tokio::select! {
        _ = shutdown => {
            cancel.cancel();
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(joined) => joined,
                Err(_) => {
                    tracing::warn!("connections still open after the grace period; closing them");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
        joined = &mut server => joined,
    };
    served
        .context("gRPC server task failed")?
        .context("gRPC server failed")
}

/// Cancels every background task and waits (a grace period) for them to end.
async fn join_tasks(tasks: &TaskTracker, cancel: &CancellationToken) {
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not end within the grace period");
    }
}

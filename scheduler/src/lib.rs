//! aibro-rs scheduler: owns every job and instance in an embedded sled store
//! and drives all their status transitions.
//!
//! - [`state`]: the pure status model; [`store`]: the only sled code.
//! - [`control`]: the control plane (deploy, launch, agent reports, close).
//! - [`api`] (users) and [`gateway`] (agents): thin gRPC adapters.
//! - [`router`]: the Predict hot path; [`provider`]: where machines come from.
//!
//! [`run`] serves everything on a listener until a shutdown future resolves.

pub mod api;
pub mod auth;
pub mod capacity;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod control;
pub mod convert;
pub mod crash;
pub mod error;
pub mod gateway;
pub mod hub;
pub mod ledger;
pub mod link;
pub mod provider;
pub mod router;
pub mod sim;
pub mod state;
pub mod store;

use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use aibro_proto::v1::{
    admin_server::AdminServer, agent_gateway_server::AgentGatewayServer,
    artifacts_server::ArtifactsServer, inference_server::InferenceServer, jobs_server::JobsServer,
    marketplace_server::MarketplaceServer, training_server::TrainingServer,
};
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
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Room above the payload limit for the rest of a Predict request.
const ENVELOPE_BYTES: usize = 64 << 10;

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

/// Writes `<data-dir>/<name>` (mode 0600) atomically.
fn write_secret(data_dir: &std::path::Path, name: &str, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = data_dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(name))
}

/// Creates the admin account and writes its token to `<data-dir>/admin-token`
/// on first start; writes the agents' join token to `<data-dir>/join-token`.
async fn ensure_secrets(auth: &auth::Auth, data_dir: &std::path::Path) -> anyhow::Result<()> {
    if !data_dir.join(JOIN_TOKEN_FILE).exists() {
        write_secret(data_dir, JOIN_TOKEN_FILE, auth.join_token())?;
    }
    if !data_dir.join(ADMIN_TOKEN_FILE).exists() {
        let token = auth.create_token(auth::ADMIN_USER).await?;
        write_secret(data_dir, ADMIN_TOKEN_FILE, &token)?;
    }
    Ok(())
}

/// Services the scheduler serves, as reflection lists them (the proto package
/// also holds `aibro.v1.Agent`, which agents serve).
const SERVICES: [&str; 10] = [
    "aibro.v1.Admin",
    "aibro.v1.AgentGateway",
    "aibro.v1.Artifacts",
    "aibro.v1.Inference",
    "aibro.v1.Jobs",
    "aibro.v1.Marketplace",
    "aibro.v1.Training",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn reflection() -> tonic_reflection::server::Builder<'static> {
    SERVICES.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(aibro_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ),
        |b, name| b.with_service_name(*name),
    )
}

/// Runs the scheduler on `listener` until `shutdown` resolves, then stops the
/// servers, cancels and joins every background task, and flushes the store.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let _ = std::fs::remove_file(config.data_dir.join(LISTEN_ADDR_FILE));
    let store = store::Store::open(&config.data_dir.join("db")).context("cannot open the store")?;
    let auth = auth::Auth::open(store.clone()).await?;
    ensure_secrets(&auth, &config.data_dir).await?;
    let catalog = catalog::Catalog::load(config.catalog.as_deref())?;
    let server_tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(aibro_proto::transport::server_tls(cert, key)?),
        _ => None,
    };
    let agent_tls = config
        .tls_ca()
        .as_deref()
        .map(aibro_proto::transport::client_tls)
        .transpose()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| aibro_proto::transport::url(&addr.to_string(), server_tls.is_some()));

    let agent_args = {
        let mut args = vec![
            "--workers".to_string(),
            config.agent_workers.to_string(),
            "--python".to_string(),
            config.python.clone(),
            "--orphan-timeout-s".to_string(),
            config.agent_orphan_timeout_s.to_string(),
        ];
        args.extend(config.pip_args());
        args.extend(config.agent_tls_args());
        if let Some(n) = config.agent_runtime_threads {
            args.extend(["--runtime-threads".to_string(), n.to_string()]);
        }
        args
    };
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let (notices, interruptions) = tokio::sync::mpsc::unbounded_channel();
    let spot = Arc::new(provider::spot::SpotMarket::new(
        provider::spot::SpotSettings {
            availability: config.spot_availability,
            interruptions_per_hour: config.spot_interruptions_per_hour,
            notice: Duration::from_millis(config.spot_notice_ms),
        },
        notices,
    ));
    {
        let (spot, cancel) = (spot.clone(), cancel.clone());
        tasks.spawn(async move { spot.run(cancel).await });
    }
    let local = provider::local::LocalProvider::new(
        config.agent_bin(),
        config.data_dir.join("instances"),
        public_url.clone(),
        auth.join_token().to_string(),
        agent_args,
        spot,
    );
    let providers = provider::Providers::default()
        .with("local", Arc::new(local))
        .with_pool(Arc::new(provider::pool::Pool::new(agent_tls.clone())));

    let settings = control::Settings {
        data_dir: config.data_dir.clone(),
        public_url,
        connect_timeout: config.connect_timeout(),
        heartbeat_interval: config.heartbeat_interval(),
        agent_lost_after: Some(Duration::from_millis(config.agent_lost_after_ms)),
        cooling_idle: std::time::Duration::from_secs(config.cooling_idle_s),
        lifecycle_tick: std::time::Duration::from_millis(config.lifecycle_tick_ms),
        python: config.python.clone(),
        pip: config.pip.clone(),
        agent_tls,
        use_spot: config.use_spot,
        spot_check: Duration::from_secs(config.spot_check_s.max(1)),
    };
    let control = control::Control::new(
        settings,
        store.clone(),
        catalog,
        providers,
        auth,
        tasks.clone(),
        cancel.clone(),
    );
    control.recover().await?;
    control.start_liveness();
    control.start_interruptions(interruptions);
    control.start_spot_return();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<InferenceServer<api::inference::InferenceApi>>()
        .await;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let max_payload = config.max_payload_bytes;
    let inference = InferenceServer::new(api::inference::InferenceApi {
        control: control.clone(),
        max_payload_bytes: max_payload,
    })
    .max_decoding_message_size(max_payload + ENVELOPE_BYTES)
    .max_encoding_message_size(usize::MAX);
    let mut builder = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(config.request_timeout_s.max(1)));
    if let Some(tls) = server_tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(inference)
        .add_service(ArtifactsServer::new(api::artifacts::ArtifactsApi {
            control: control.clone(),
            max_artifact_bytes: config.max_artifact_bytes,
        }))
        .add_service(JobsServer::new(api::jobs::JobsApi {
            control: control.clone(),
        }))
        .add_service(TrainingServer::new(api::training::TrainingApi {
            control: control.clone(),
        }))
        .add_service(MarketplaceServer::new(api::marketplace::MarketplaceApi {
            control: control.clone(),
        }))
        .add_service(AdminServer::new(api::admin::AdminApi {
            control: control.clone(),
        }))
        .add_service(AgentGatewayServer::new(gateway::GatewayApi {
            control: control.clone(),
            heartbeat_interval: config.heartbeat_interval(),
            max_result_bytes: config.max_artifact_bytes,
        }));

    // Written whole (rename) so that a reader never sees it half-written.
    let tmp = config.data_dir.join(".listen-addr.tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, config.data_dir.join(LISTEN_ADDR_FILE))?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "scheduler listening");
    let serve = router.serve_with_incoming_shutdown(
        aibro_proto::transport::incoming(listener),
        cancel.clone().cancelled_owned(),
    );
    let mut server = tokio::spawn(serve);
    let served = tokio::select! {
        _ = shutdown => {
            cancel.cancel();
            // Open streams and idle client connections get a grace period.
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
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not end within the grace period");
    }
    // Connections still open (agents keep theirs) may hold the services for a
    // moment longer; the store only needs its last flush.
    drop(control);
    store.flush().await?;
    tracing::info!("scheduler stopped");
    served
        .context("gRPC server task failed")?
        .context("gRPC server failed")
}

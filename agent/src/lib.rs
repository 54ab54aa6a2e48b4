//! aibro-rs agent: runs on each (GPU) instance, registers with the scheduler, gears
//! up the Python environment of a model repo, loads it into a pool of persistent
//! Python workers and serves Predict, or runs a training repo's train() and uploads
//! its outputs; reports its phases, training progress and heartbeats. Started
//! without an instance id it joins the scheduler's pool and waits to be assigned one.
//! [`run`] is the whole agent; [`dry_run`] validates a repo archive locally.
//!
//! Layout: [`service`] is the gRPC adapter over [`jobs`] (what runs where);
//! `environment` gets a repo ready (fetch, unpack, virtualenv, dry run), `serving`
//! runs predict.py in worker pools, `training` runs train.py and returns its
//! outputs, `link` is the connection to the scheduler; every Python process
//! starts through `launcher`.
#![deny(clippy::too_many_lines)]

mod config;
mod environment;
pub mod hardware;
mod jobs;
mod launcher;
mod link;
mod metrics;
pub mod sandbox;
mod scripts;
mod service;
mod serving;
mod training;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aibro_proto::transport::TlsError;
use aibro_proto::v1::agent_server::AgentServer;
use aibro_proto::v1::Hardware;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use jobs::{Jobs, JobsConfig};
use link::credential::{Check, Credential};
use link::gateway::Gateway;
use link::identity::{self, Identity};
use link::imds::Watcher;
use link::reporter::{ReportQueue, Reporter, ReporterError};
use sandbox::{Sandbox, SandboxConfig, SandboxError};
use scripts::Scripts;
use service::AgentService;
use tonic::service::interceptor::InterceptedService;

pub use aibro_repo::DryRunOutcome;
pub use config::{Args, Cli, Command, DryRunArgs};
pub use environment::dry_run::dry_run_local;
pub use link::credential::CredentialError;
pub use link::gateway::GatewayError;

/// Largest Predict payload / response the agent accepts.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("give --instance-id (the instance a provider launched this agent as) or --machine-id (the machine type of this host, to join the scheduler's pool)")]
    NoIdentity,
    #[error("agent data directory `{path}`: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("cannot serve metrics on --metrics-listen: {0}")]
    MetricsListen(#[source] std::io::Error),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Bootstrap(#[from] link::bootstrap::BootstrapError),
    #[error("the scheduler has been unreachable for {0:?}; the agent exits (orphaned)")]
    Orphaned(Duration),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("the agent's gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// Runs the agent: serves the `Agent` service on `listener`, registers with the
/// scheduler and reports, until `shutdown` completes (Ok) or the scheduler has been
/// unreachable for `--orphan-timeout-s` (Err(Orphaned)). Workers are ended on exit.
pub async fn run(
    mut args: Args,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    if args.instance_id.is_empty() && args.machine_id.is_empty() {
        return Err(Error::NoIdentity);
    }
    // Absolute: the Python processes run in other directories.
    args.dir = data_dir(&args.dir)?;
    let scripts = Scripts::install(&args.dir).map_err(dir_err(&args.dir))?;
    let sandbox = Arc::new(start_sandbox(&args)?);
    let agent_id = identity::agent_id(&args.dir).map_err(dir_err(&args.dir))?;
    let port = listener.local_addr().map_err(Error::Listener)?.port();
    let address = format!("{}:{port}", args.advertise_host);
    let (gateway, credential, server_tls) = link_to_scheduler(&args, &address).await?;
    let (hardware, gpus) = hardware_and_gpus(args.gpus.as_deref()).await;
    let identity = Arc::new(Identity::new(
        agent_id,
        args.machine_id.clone(),
        args.instance_id.clone(),
    ));
    tracing::info!(agent_id = %identity.agent_id, instance_id = %args.instance_id,
        machine_id = %args.machine_id, %address, cpus = hardware.cpus, ?gpus, "agent starting");
    let (queue, rx) = ReportQueue::channel();
    let imds = imds_watcher(&args, &identity, &queue);
    let cancel = CancellationToken::new();
    let orphan_timeout = Duration::from_secs(args.orphan_timeout_s);
    let serving = metrics::ServingMetrics::default();
    let metrics_listener = metrics_listener(&args)?;
    let jobs = Arc::new(Jobs::new(JobsConfig {
        args,
        scripts,
        gateway: gateway.clone(),
        queue,
        identity: identity.clone(),
        gpus: gpus.clone(),
        cancel: cancel.clone(),
        sandbox: sandbox.clone(),
        serving: serving.clone(),
    }));
    let metrics = metrics_listener
        .map(|l| metrics::spawn(l, serving, jobs.clone(), gpus.clone(), cancel.clone()));
    let reporter = Reporter {
        gateway,
        credential: credential.clone(),
        identity: identity.clone(),
        address,
        hardware,
        gpus,
        orphan_timeout,
        sandbox: sandbox.level,
        metrics: jobs.clone(),
    };
    let service = AgentService {
        jobs: jobs.clone(),
        identity,
    };
    let server = server(
        listener,
        server_tls,
        service,
        Check(credential),
        cancel.clone(),
    )?;
    let tasks = Tasks {
        reporter: tokio::spawn(reporter.run(rx, cancel.clone())),
        server: tokio::spawn(server),
        imds: imds.map(|w| tokio::spawn(w.run(cancel.clone()))),
        metrics,
    };
    tasks.run_until(shutdown, &cancel, &jobs).await
}

/// The client of the scheduler's gateway with the agent's credential (a
/// cloud instance's agent trades its bootstrap token for it first), and the
/// TLS the agent's own service serves with.
async fn link_to_scheduler(
    args: &Args,
    address: &str,
) -> Result<(Gateway, Arc<Credential>, Option<ServerTlsConfig>), Error> {
    let (scheduler_tls, server_tls) = tls(args)?;
    let credential = Arc::new(Credential::load(
        args.credential_file.as_deref(),
        &args.dir,
    )?);
    let gateway = link::gateway::gateway(
        &args.scheduler,
        credential.clone(),
        &args.join_token,
        scheduler_tls.as_ref(),
    )?;
    let (instance_id, dir) = (&args.instance_id, &args.dir);
    link::bootstrap::trade_if_new(&gateway, &credential, instance_id, address, dir).await?;
    let server_tls = match server_tls {
        Some(tls) => Some(tls),
        None => link::bootstrap::kept_tls(dir)?,
    };
    Ok((gateway, credential, server_tls))
}

/// The sandbox of `--sandbox`, announced; user code never reaches the
/// scheduler nor this agent.
fn start_sandbox(args: &Args) -> Result<Sandbox, Error> {
    let scheduler = sandbox::network::url_host(&args.scheduler).unwrap_or_default();
    let sandbox = Sandbox::new(&SandboxConfig {
        requested: args.sandbox,
        helper: args.sandbox_helper.as_deref(),
        python: &args.python,
        state_dir: &args.dir.join("sandbox"),
        blocked_hosts: &[scheduler, &args.advertise_host],
        loopback_index: sandbox::network::loopback_index(&args.pip),
    })?;
    sandbox.announce();
    Ok(sandbox)
}

/// The listener of `--metrics-listen`, if given; its address goes to
/// `<dir>/metrics-addr` (for port 0).
fn metrics_listener(args: &Args) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = args.metrics_listen else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .map_err(Error::MetricsListen)?;
    let bound = listener.local_addr().map_err(Error::MetricsListen)?;
    let file = args.dir.join(metrics::ADDR_FILE);
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bound.to_string())
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(dir_err(&args.dir))?;
    tracing::info!(%bound, "serving metrics");
    Ok(Some(listener))
}

/// The watcher of EC2's metadata service: only with `--imds-endpoint`.
fn imds_watcher(args: &Args, identity: &Arc<Identity>, queue: &ReportQueue) -> Option<Watcher> {
    let endpoint = args.imds_endpoint.as_deref()?;
    let poll = Duration::from_millis(args.imds_poll_ms);
    Some(Watcher::new(
        endpoint,
        poll,
        identity.clone(),
        queue.clone(),
    ))
}

fn dir_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Dir { path, source }
}

/// The agent's data directory, absolute and created.
fn data_dir(dir: &Path) -> Result<PathBuf, Error> {
    let dir = std::path::absolute(dir).map_err(dir_err(dir))?;
    std::fs::create_dir_all(&dir).map_err(dir_err(&dir))?;
    Ok(dir)
}

/// The TLS of the connection to the scheduler and of the agent's own service.
fn tls(args: &Args) -> Result<(Option<ClientTlsConfig>, Option<ServerTlsConfig>), Error> {
    let scheduler = args
        .tls_ca
        .as_deref()
        .map(aibro_proto::transport::client_tls)
        .transpose()?;
    let server = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(aibro_proto::transport::server_tls(cert, key)?),
        _ => None,
    };
    Ok((scheduler, server))
}

/// This host's hardware as Register reports it (only this agent's GPUs), and this
/// agent's GPUs: `--gpus`, else every GPU detected. `--gpus` holds even where none
/// is detected (it only sets what the Python processes see).
async fn hardware_and_gpus(flag: Option<&[u32]>) -> (Hardware, Vec<u32>) {
    let mut hardware = tokio::task::spawn_blocking(hardware::detect)
        .await
        .unwrap_or_default();
    let gpus = flag.map_or_else(
        || hardware.gpus.iter().map(|g| g.index).collect(),
        <[u32]>::to_vec,
    );
    let unknown: Vec<&u32> = gpus
        .iter()
        .filter(|i| !hardware.gpus.iter().any(|g| g.index == **i))
        .collect();
    if !hardware.gpus.is_empty() && !unknown.is_empty() {
        tracing::warn!(?unknown, "--gpus names GPUs this host does not have");
    }
    hardware.gpus = hardware::only(hardware.gpus, &gpus);
    (hardware, gpus)
}

/// The agent's gRPC server on `listener`, until `cancel`; `check` refuses
/// calls without the agent's credential.
fn server(
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    service: AgentService,
    check: Check,
    cancel: CancellationToken,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, Error> {
    let svc = AgentServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let svc = InterceptedService::new(svc, check);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(Error::Serve)?;
    }
    Ok(builder.add_service(svc).serve_with_incoming_shutdown(
        aibro_proto::transport::incoming(listener),
        cancel.cancelled_owned(),
    ))
}

/// The agent's long-running tasks.
struct Tasks {
    reporter: JoinHandle<Result<(), ReporterError>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Watches EC2's metadata service (with `--imds-endpoint`).
    imds: Option<JoinHandle<()>>,
    /// Serves `/metrics` (with `--metrics-listen`).
    metrics: Option<JoinHandle<()>>,
}

impl Tasks {
    /// Waits for `shutdown`, or for the reporter or the server to end; then
    /// ends the jobs' processes and waits for every task.
    async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
        cancel: &CancellationToken,
        jobs: &Jobs,
    ) -> Result<(), Error> {
        let (result, reporter_done, server_done) = tokio::select! {
            _ = shutdown => (Ok(()), false, false),
            r = &mut self.reporter => (match r {
                Ok(Err(ReporterError::Orphaned(d))) => Err(Error::Orphaned(d)),
                Ok(Ok(())) | Err(_) => Ok(()),
            }, true, false),
            r = &mut self.server => (match r {
                Ok(Err(e)) => Err(Error::Serve(e)),
                _ => Ok(()),
            }, false, true),
        };
        tracing::info!("agent shutting down");
        cancel.cancel();
        if let Err(e) = jobs.stop(false).await {
            tracing::warn!("stopping workers: {e}");
        }
        if !server_done {
            let _ = self.server.await;
        }
        if !reporter_done {
            let _ = self.reporter.await;
        }
        for task in self.imds.into_iter().chain(self.metrics) {
            let _ = task.await;
        }
        result
    }
}

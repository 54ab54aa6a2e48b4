//! aibro-rs agent: runs on each (GPU) instance, registers with the scheduler, gears
//! up the Python environment of a model repo, loads it into a pool of persistent
//! Python workers and serves Predict, or runs a training repo's train() and uploads
//! its outputs; reports its phases, training progress and heartbeats. Started
//! without an instance id it joins the scheduler's pool and waits to be assigned one.
//! [`run`] is the whole agent; [`dry_run`] validates a repo archive locally.

mod config;
mod dryrun;
mod env;
pub mod hardware;
mod identity;
mod pool;
mod reporter;
mod runtime;
mod service;
mod trainer;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aibro_proto::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Args;
pub use dryrun::{dry_run, DryRunOutcome};

/// Largest Predict payload / response the agent accepts.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("give --instance-id (the instance a provider launched this agent as) or --machine-id (the machine type of this host, to join the scheduler's pool)")]
    NoIdentity,
    #[error("agent data directory `{path}`: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    #[error("{0}")]
    Scheduler(String),
    #[error("the scheduler has been unreachable for {0:?}; the agent exits (orphaned)")]
    Orphaned(Duration),
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
    let dir_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| Error::Dir { path, source }
    };
    // Absolute: the Python processes run in other directories.
    args.dir = std::path::absolute(&args.dir).map_err(dir_err(&args.dir))?;
    std::fs::create_dir_all(&args.dir).map_err(dir_err(&args.dir))?;
    let scripts = runtime::Scripts {
        worker: worker::install_script(&args.dir).map_err(dir_err(&args.dir))?,
        trainer: worker::install_file(&args.dir, "trainer.py", trainer::TRAINER_PY)
            .map_err(dir_err(&args.dir))?,
    };
    let agent_id = identity::agent_id(&args.dir).map_err(dir_err(&args.dir))?;
    let port = listener.local_addr().map_err(Error::Listener)?.port();
    let address = format!("{}:{port}", args.advertise_host);
    let tls_err = |e: aibro_proto::transport::TlsError| Error::Scheduler(e.to_string());
    let scheduler_tls = args
        .tls_ca
        .as_deref()
        .map(aibro_proto::transport::client_tls)
        .transpose()
        .map_err(tls_err)?;
    let server_tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(aibro_proto::transport::server_tls(cert, key).map_err(tls_err)?)
        }
        _ => None,
    };
    let gateway = reporter::gateway(&args.scheduler, &args.join_token, scheduler_tls.as_ref())
        .map_err(|e| Error::Scheduler(e.to_string()))?;
    let mut hardware = tokio::task::spawn_blocking(hardware::detect)
        .await
        .unwrap_or_default();
    // `--gpus` holds even where none is detected (it only sets what the Python
    // processes see); Register reports the detected ones it names.
    let gpus = args
        .gpus
        .clone()
        .unwrap_or_else(|| hardware.gpus.iter().map(|g| g.index).collect());
    let unknown: Vec<&u32> = gpus
        .iter()
        .filter(|i| !hardware.gpus.iter().any(|g| g.index == **i))
        .collect();
    if !hardware.gpus.is_empty() && !unknown.is_empty() {
        tracing::warn!(?unknown, "--gpus names GPUs this host does not have");
    }
    hardware.gpus = hardware::only(hardware.gpus, &gpus);
    let identity = Arc::new(identity::Identity::new(
        agent_id,
        args.machine_id.clone(),
        args.instance_id.clone(),
    ));
    tracing::info!(agent_id = %identity.agent_id, instance_id = %args.instance_id,
        machine_id = %args.machine_id, %address, cpus = hardware.cpus, ?gpus, "agent starting");
    let (queue, rx) = reporter::ReportQueue::channel();
    let cancel = CancellationToken::new();
    let orphan_timeout = Duration::from_secs(args.orphan_timeout_s);
    let rt = Arc::new(runtime::Runtime::new(
        args,
        scripts,
        gateway.clone(),
        queue,
        identity.clone(),
        gpus.clone(),
        cancel.clone(),
    ));
    let reporter = reporter::Reporter {
        gateway,
        identity: identity.clone(),
        address,
        hardware,
        gpus,
        orphan_timeout,
        metrics: rt.clone(),
    };
    let mut reporter_task = tokio::spawn(reporter.run(rx, cancel.clone()));
    let svc = AgentServer::new(service::AgentService {
        runtime: rt.clone(),
        identity,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = server_tls {
        builder = builder.tls_config(tls).map_err(Error::Serve)?;
    }
    let server = builder.add_service(svc).serve_with_incoming_shutdown(
        aibro_proto::transport::incoming(listener),
        cancel.clone().cancelled_owned(),
    );
    let mut server_task = tokio::spawn(server);
    let (result, reporter_done, server_done) = tokio::select! {
        _ = shutdown => (Ok(()), false, false),
        r = &mut reporter_task => (match r {
            Ok(Err(reporter::ReporterError::Orphaned(d))) => Err(Error::Orphaned(d)),
            Ok(Err(e)) => Err(Error::Scheduler(e.to_string())),
            Ok(Ok(())) | Err(_) => Ok(()),
        }, true, false),
        r = &mut server_task => (match r {
            Ok(Err(e)) => Err(Error::Serve(e)),
            _ => Ok(()),
        }, false, true),
    };
    tracing::info!("agent shutting down");
    cancel.cancel();
    if let Err(e) = rt.stop(false).await {
        tracing::warn!("stopping workers: {e}");
    }
    if !server_done {
        let _ = server_task.await;
    }
    if !reporter_done {
        let _ = reporter_task.await;
    }
    result
}

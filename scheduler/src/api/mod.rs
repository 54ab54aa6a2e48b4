//! The gRPC services: thin adapters that authenticate, unpack the request
//! (see [`convert`]), call the control plane and convert the answer. No
//! business logic. Users call all but [`gateway`], which agents call.

pub mod admin;
pub mod artifacts;
pub mod convert;
pub mod gateway;
mod http;
pub mod inference;
pub mod jobs;
pub mod marketplace;
mod oip;
pub mod training;

use std::time::Duration;

use aibro_proto::v1::{
    admin_server::AdminServer, agent_gateway_server::AgentGatewayServer,
    artifacts_server::ArtifactsServer, inference_server::InferenceServer, jobs_server::JobsServer,
    marketplace_server::MarketplaceServer, training_server::TrainingServer, Chunk,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_util::io::ReaderStream;
use tonic::service::Routes;
use tonic::transport::server::Router;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Status};

use crate::auth::User;
use crate::config::Config;
use crate::control::Control;

const CHUNK_BYTES: usize = 1 << 20;

/// A stored file as a stream of 1 MiB chunks; `what` names it in errors.
pub(crate) async fn file_chunks(
    path: std::path::PathBuf,
    what: &'static str,
) -> Result<BoxStream<'static, Result<Chunk, Status>>, Status> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Status::internal(format!("cannot open the {what}: {e}")))?;
    let stream = ReaderStream::with_capacity(file, CHUNK_BYTES).map(move |r| {
        r.map(|data| Chunk {
            data: data.to_vec(),
        })
        .map_err(|e| Status::internal(format!("cannot read the {what}: {e}")))
    });
    Ok(stream.boxed())
}

/// The caller of `request`, from its bearer token.
pub(crate) fn caller<T>(control: &Control, request: &Request<T>) -> Result<User, Status> {
    Ok(control
        .auth()
        .authenticate(request.metadata())
        .map_err(crate::error::Error::from)?)
}

/// Room above the payload limit for the rest of a Predict request.
const ENVELOPE_BYTES: usize = 64 << 10;

/// Services the scheduler serves, as reflection lists them (the proto package
/// also holds `aibro.v1.Agent`, which agents serve).
const SERVICES: [&str; 11] = [
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
    "inference.GRPCInferenceService",
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

/// Every service on one server: the gRPC ones ([`grpc_routes`]) and, for
/// every other request, the [`http`] routes; each call gets the server-side
/// deadline.
pub(crate) async fn services(
    control: &Control,
    config: &Config,
    tls: Option<ServerTlsConfig>,
) -> anyhow::Result<Router> {
    let deadline = Duration::from_secs(config.request_timeout_s.max(1));
    let routes = http::one_port(
        grpc_routes(control, config).await?,
        http::router(control, config, oip::rest::routes(control, config))?,
        deadline,
    );
    let mut builder = Server::builder().accept_http1(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder.add_routes(routes))
}

/// `--metrics-listen`: `GET /metrics` without a token on `listener`, until `cancel`.
pub(crate) async fn serve_metrics(
    control: Control,
    listener: tokio::net::TcpListener,
    cancel: tokio_util::sync::CancellationToken,
) {
    let served = axum::serve(listener, http::operator_router(&control))
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!("the --metrics-listen server failed: {e}");
    }
}

/// The gRPC services: the users', the agents' gateway, health and reflection.
async fn grpc_routes(control: &Control, config: &Config) -> anyhow::Result<Routes> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<InferenceServer<inference::InferenceApi>>()
        .await;
    let max_payload = config.max_payload_bytes;
    let inference = InferenceServer::new(inference::InferenceApi {
        control: control.clone(),
        max_payload_bytes: max_payload,
    })
    .max_decoding_message_size(max_payload + ENVELOPE_BYTES)
    .max_encoding_message_size(usize::MAX);
    let control = control.clone();
    Ok(Routes::new(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(inference)
        .add_service(oip::grpc::server(&control, max_payload + ENVELOPE_BYTES))
        .add_service(ArtifactsServer::new(artifacts::ArtifactsApi {
            control: control.clone(),
            max_artifact_bytes: config.max_artifact_bytes,
        }))
        .add_service(JobsServer::new(jobs::JobsApi {
            control: control.clone(),
        }))
        .add_service(TrainingServer::new(training::TrainingApi {
            control: control.clone(),
        }))
        .add_service(MarketplaceServer::new(marketplace::MarketplaceApi {
            control: control.clone(),
        }))
        .add_service(AdminServer::new(admin::AdminApi {
            control: control.clone(),
        }))
        .add_service(AgentGatewayServer::new(gateway::GatewayApi {
            heartbeat_interval: config.heartbeat_interval(),
            max_result_bytes: config.max_artifact_bytes,
            control,
        })))
}

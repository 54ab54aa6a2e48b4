//! The gRPC services: thin adapters that authenticate, unpack the request
//! (see [`convert`]), call the control plane and convert the answer. No
//! business logic. Users call all but [`gateway`], which agents call. They
//! and the HTTP routes share one port and one tower [`stack`].

pub(crate) mod accept;
pub mod admin;
pub mod artifacts;
pub mod convert;
mod cors;
mod deadline;
pub mod gateway;
pub(crate) mod http;
pub mod inference;
pub mod jobs;
pub mod marketplace;
mod oip;
pub mod stack;
pub mod training;

use std::convert::Infallible;
use std::time::Duration;

use aibro_proto::v1::{
    admin_server::AdminServer, agent_gateway_server::AgentGatewayServer,
    artifacts_server::ArtifactsServer, inference_server::InferenceServer, jobs_server::JobsServer,
    marketplace_server::MarketplaceServer, training_server::TrainingServer, Chunk,
};
use axum::body::Body;
use axum::http::{Extensions, HeaderMap};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_util::io::ReaderStream;
use tonic::service::Routes;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tonic::{Code, Request, Status};
use tower::Service;

use crate::auth::{Auth, AuthError, User};
use crate::config::Config;
use crate::control::Control;
use crate::error::Error;

/// What the [`stack`] wraps and what it is: HTTP in, HTTP out, every error
/// answered as a response.
pub trait HttpService:
    Service<
        axum::http::Request<Body>,
        Response = axum::http::Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> HttpService for T where
    T: Service<
            axum::http::Request<Body>,
            Response = axum::http::Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

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

/// The caller, as the stack authenticated the `authorization` header (gRPC
/// metadata, or an HTTP header), left in the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated(Result<User, (Code, String)>);

impl Authenticated {
    pub(crate) fn of(auth: &Auth, headers: &HeaderMap) -> Self {
        Authenticated(auth.authenticate(headers).map_err(|e| {
            let status = Status::from(Error::from(e));
            (status.code(), status.message().to_string())
        }))
    }

    /// The user of a request whose extensions are `extensions`.
    pub(crate) fn user(extensions: &Extensions) -> Result<User, Status> {
        match extensions.get::<Authenticated>() {
            Some(Authenticated(Ok(user))) => Ok(user.clone()),
            Some(Authenticated(Err((code, message)))) => Err(Status::new(*code, message.clone())),
            None => Err(Error::from(AuthError::Missing).into()),
        }
    }
}

/// The caller of `request`, from its bearer token.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<User, Status> {
    Authenticated::user(request.extensions())
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

/// The longest `--request-timeout-s` taken as it is (a year).
const LONGEST_DEADLINE_S: u64 = 365 * 24 * 3600;

/// Every service on one server: the gRPC ones ([`grpc_routes`]) and, for
/// every other request, the [`http`] routes and `pages` (the console), all
/// inside the one [`stack`].
pub(crate) async fn services(
    control: &Control,
    config: &Config,
    pages: axum::Router,
) -> anyhow::Result<Router> {
    let more = oip::rest::routes(control, config).merge(pages);
    let http = http::router(control, config, more);
    let http = match cors::layer(&config.http_cors_origins)? {
        Some(cors) => http.layer(cors),
        None => http,
    };
    let port = http::one_port(grpc_routes(control, config).await?, http);
    let stack = stack::Stack {
        trace: true,
        max_concurrent: Some(config.max_concurrent_requests as usize),
        auth: Some(control.auth().clone()),
        max_deadline: Duration::from_secs(config.request_timeout_s.clamp(1, LONGEST_DEADLINE_S)),
    };
    let routes = Routes::from(axum::Router::new().fallback_service(stack.around(port)));
    Ok(Server::builder().accept_http1(true).add_routes(routes))
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

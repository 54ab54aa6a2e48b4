//! How the scheduler calls an agent: over gRPC (one long-lived Channel per
//! agent, every call carrying the agent's credential) or, in the simulator and
//! timer tests, in process.

use std::sync::Arc;

use aibro_proto::v1::{
    agent_client::AgentClient, AgentPredictRequest, AgentPredictResponse, DryRunRequest,
    PrepareRequest, StopRequest, TrainRequest,
};

use aibro_repo::DryRunOutcome;

use crate::records::JobRecord;
use crate::state::JobKind;
use futures::future::BoxFuture;
use futures::FutureExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Status;

/// What the scheduler asks of an agent. Predictions pass through as they
/// came (the router forwards them); everything else is said in records.
pub trait AgentLink: Send + Sync {
    /// Sends the job to the agent: it gears up, loads and serves (or gets
    /// ready to train).
    fn prepare(&self, job: &JobRecord) -> BoxFuture<'static, Result<(), Status>>;
    fn predict(
        &self,
        request: AgentPredictRequest,
    ) -> BoxFuture<'static, Result<AgentPredictResponse, Status>>;
    /// Ends the job's workers; `terminate` also wipes its files.
    fn stop(&self, terminate: bool) -> BoxFuture<'static, Result<(), Status>>;
    /// Starts the prepared training job's `train()` with its args.
    fn train(&self, job: &JobRecord) -> BoxFuture<'static, Result<(), Status>>;
    /// Runs the dry-run job's repo once on its sample input; answers when done.
    fn dry_run(&self, job: &JobRecord) -> BoxFuture<'static, Result<DryRunOutcome, Status>>;
}

/// An agent address that is not one.
#[derive(Debug, thiserror::Error)]
#[error("bad agent address `{address}`: {reason}")]
pub struct BadAddress {
    address: String,
    reason: String,
}

pub type Link = Arc<dyn AgentLink>;

/// Adds `authorization: Bearer <the agent's credential>` to every call.
#[derive(Clone)]
pub struct Bearer(AsciiMetadataValue);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A client of an agent's `Agent` service that sends its credential.
pub type Client = AgentClient<InterceptedService<Channel, Bearer>>;

/// A lazily connecting client of the agent at `address` (host:port) that
/// sends `credential`. With `tls`, over https, verifying the agent's certificate.
pub fn client(
    address: &str,
    tls: Option<&ClientTlsConfig>,
    credential: &str,
) -> Result<Client, BadAddress> {
    let bad = |reason: String| BadAddress {
        address: address.to_string(),
        reason,
    };
    let url = aibro_proto::transport::url(address, tls.is_some());
    let endpoint = aibro_proto::transport::endpoint(&url, tls).map_err(bad)?;
    let bearer = format!("Bearer {credential}")
        .parse()
        .map_err(|_| bad("the credential is not valid in gRPC metadata".into()))?;
    Ok(AgentClient::with_interceptor(
        endpoint.connect_lazy(),
        Bearer(bearer),
    ))
}

/// A gRPC link to the agent at `address` that sends `credential` on every call.
pub fn grpc(
    address: &str,
    tls: Option<&ClientTlsConfig>,
    credential: &str,
) -> Result<Link, BadAddress> {
    let client = client(address, tls, credential)?
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    Ok(Arc::new(client))
}

impl AgentLink for Client {
    fn prepare(&self, job: &JobRecord) -> BoxFuture<'static, Result<(), Status>> {
        let request = PrepareRequest {
            job_id: job.id.clone(),
            artifact_digest: job.artifact_digest.clone(),
            kind: aibro_proto::v1::JobKind::from(job.kind) as i32,
            batching: (job.kind == JobKind::Inference).then(|| (&job.batching).into()),
            isolate_network: job.isolate_network,
        };
        let mut client = self.clone();
        async move { AgentClient::prepare(&mut client, request).await.map(drop) }.boxed()
    }

    fn predict(
        &self,
        request: AgentPredictRequest,
    ) -> BoxFuture<'static, Result<AgentPredictResponse, Status>> {
        let mut client = self.clone();
        async move {
            AgentClient::predict(&mut client, request)
                .await
                .map(|r| r.into_inner())
        }
        .boxed()
    }

    fn stop(&self, terminate: bool) -> BoxFuture<'static, Result<(), Status>> {
        let request = StopRequest { terminate };
        let mut client = self.clone();
        async move { AgentClient::stop(&mut client, request).await.map(drop) }.boxed()
    }

    fn train(&self, job: &JobRecord) -> BoxFuture<'static, Result<(), Status>> {
        let request = TrainRequest {
            job_id: job.id.clone(),
            args: job.args.clone().into_iter().collect(),
        };
        let mut client = self.clone();
        async move { AgentClient::train(&mut client, request).await.map(drop) }.boxed()
    }

    fn dry_run(&self, job: &JobRecord) -> BoxFuture<'static, Result<DryRunOutcome, Status>> {
        let request = DryRunRequest {
            job_id: job.id.clone(),
            artifact_digest: job.artifact_digest.clone(),
            isolate_network: job.isolate_network,
        };
        let mut client = self.clone();
        async move {
            let result = AgentClient::dry_run(&mut client, request).await?;
            Ok(result.into_inner().into())
        }
        .boxed()
    }
}

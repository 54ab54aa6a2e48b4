//! How the scheduler calls an agent: over gRPC (one long-lived Channel per
//! agent) or, in the simulator and timer tests, in process.

use std::sync::Arc;

use aibro_proto::v1::{
    agent_client::AgentClient, AgentPredictRequest, AgentPredictResponse, PrepareRequest,
    StopRequest, TrainRequest,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Status;

pub trait AgentLink: Send + Sync {
    fn prepare(&self, request: PrepareRequest) -> BoxFuture<'static, Result<(), Status>>;
    fn predict(
        &self,
        request: AgentPredictRequest,
    ) -> BoxFuture<'static, Result<AgentPredictResponse, Status>>;
    fn stop(&self, request: StopRequest) -> BoxFuture<'static, Result<(), Status>>;
    fn train(&self, request: TrainRequest) -> BoxFuture<'static, Result<(), Status>>;
}

pub type Link = Arc<dyn AgentLink>;

/// A gRPC connection to an agent at `address` (host:port), made lazily.
/// With `tls`, over https, verifying the agent's certificate.
pub fn grpc(address: &str, tls: Option<&ClientTlsConfig>) -> Result<Link, String> {
    let url = aibro_proto::transport::url(address, tls.is_some());
    let endpoint = aibro_proto::transport::endpoint(&url, tls)
        .map_err(|e| format!("bad agent address `{address}`: {e}"))?;
    let client = AgentClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    Ok(Arc::new(client))
}

impl AgentLink for AgentClient<Channel> {
    fn prepare(&self, request: PrepareRequest) -> BoxFuture<'static, Result<(), Status>> {
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

    fn stop(&self, request: StopRequest) -> BoxFuture<'static, Result<(), Status>> {
        let mut client = self.clone();
        async move { AgentClient::stop(&mut client, request).await.map(drop) }.boxed()
    }

    fn train(&self, request: TrainRequest) -> BoxFuture<'static, Result<(), Status>> {
        let mut client = self.clone();
        async move { AgentClient::train(&mut client, request).await.map(drop) }.boxed()
    }
}

//! Connection to the scheduler: one tonic `Channel` shared by every service
//! client, and the interceptor that adds `authorization: Bearer <token>`.

use aibro_proto::v1::{
    admin_client::AdminClient, artifacts_client::ArtifactsClient,
    inference_client::InferenceClient, jobs_client::JobsClient,
    marketplace_client::MarketplaceClient, training_client::TrainingClient,
};
use anyhow::{Context, Result};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// Largest response the CLI accepts (predict outputs can be big).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Adds the bearer token (when there is one) to every request.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, Auth>;

/// A connected scheduler client.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    auth: Auth,
}

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:7070`); an https
    /// endpoint is verified against the CA certificate `tls_ca`.
    pub async fn connect(
        endpoint: &str,
        token: Option<&str>,
        tls_ca: Option<&std::path::Path>,
    ) -> Result<Self> {
        let auth = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .context("the access token contains characters not allowed in gRPC metadata")?,
            ),
            None => None,
        };
        let tls = tls_ca.map(aibro_proto::transport::client_tls).transpose()?;
        let channel = aibro_proto::transport::endpoint(endpoint, tls.as_ref())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("invalid endpoint {endpoint:?}"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to the scheduler at {endpoint}"))?;
        Ok(Self {
            channel,
            auth: Auth(auth),
        })
    }

    pub fn artifacts(&self) -> ArtifactsClient<Authed> {
        ArtifactsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn inference(&self) -> InferenceClient<Authed> {
        InferenceClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Inference client without the access token: Predict is authorised by client id.
    pub fn predictor(&self) -> InferenceClient<Channel> {
        InferenceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn training(&self) -> TrainingClient<Authed> {
        TrainingClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn jobs(&self) -> JobsClient<Authed> {
        JobsClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The job's events: its history, then live ones until it settles.
    pub async fn watch(
        &self,
        job_id: &str,
    ) -> Result<tonic::Streaming<aibro_proto::v1::JobEvent>, tonic::Status> {
        let request = aibro_proto::v1::WatchJobRequest {
            job_id: job_id.to_string(),
        };
        Ok(self.jobs().watch_job(request).await?.into_inner())
    }

    pub fn marketplace(&self) -> MarketplaceClient<Authed> {
        MarketplaceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn admin(&self) -> AdminClient<Authed> {
        AdminClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
}

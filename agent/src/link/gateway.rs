//! The client of the scheduler's `AgentGateway` (every call carries the agent's
//! credential, or the join token while a pool agent has none), and [`retrying`]: a call tried again, with backoff, while the
//! scheduler cannot be reached (e.g. while it restarts).

use std::sync::Arc;
use std::time::Duration;

use aibro_proto::v1::agent_gateway_client::AgentGatewayClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::link::credential::Credential;

/// Tries at a call while the scheduler is unreachable.
const SCHEDULER_TRIES: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid --scheduler: {0}")]
    Url(String),
    #[error("the join token is not valid in gRPC metadata")]
    Token,
}

/// Adds `authorization: Bearer <credential>` to every call; the join token
/// only while the agent has no credential.
#[derive(Clone)]
pub(crate) struct Auth {
    credential: Arc<Credential>,
    join_token: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = match self.credential.get() {
            Some(c) => Some(format!("Bearer {c}").parse().map_err(|_| {
                tonic::Status::unauthenticated("the agent's credential is not valid in metadata")
            })?),
            None => self.join_token.clone(),
        };
        if let Some(v) = value {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

pub(crate) type Gateway = AgentGatewayClient<InterceptedService<Channel, Auth>>;

/// A lazily connecting client of the scheduler's AgentGateway.
/// `tls`: the CA to verify an https scheduler with.
pub(crate) fn gateway(
    url: &str,
    credential: Arc<Credential>,
    join_token: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Gateway, GatewayError> {
    let channel = aibro_proto::transport::endpoint(url, tls)
        .map_err(GatewayError::Url)?
        .connect_lazy();
    let join_token = if join_token.is_empty() {
        None
    } else {
        Some(
            format!("Bearer {join_token}")
                .parse()
                .map_err(|_| GatewayError::Token)?,
        )
    };
    let auth = Auth {
        credential,
        join_token,
    };
    Ok(AgentGatewayClient::with_interceptor(channel, auth).max_decoding_message_size(64 << 20))
}

/// An error that may come from a scheduler call.
pub(crate) trait CallError: std::fmt::Display {
    /// The status of the failed call, if a call failed.
    fn status(&self) -> Option<&tonic::Status>;
}

/// The scheduler could not be reached (it may be restarting): worth another try.
fn unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

/// Runs `attempt` again, with backoff, while it fails to reach the scheduler
/// (e.g. while it restarts); `SCHEDULER_TRIES` tries in all.
pub(crate) async fn retrying<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, E>
where
    E: CallError,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(200);
    for _ in 1..SCHEDULER_TRIES {
        match attempt().await {
            Err(e) if e.status().is_some_and(unreachable) => {
                tracing::warn!("{what} failed, retrying in {backoff:?}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
    attempt().await
}

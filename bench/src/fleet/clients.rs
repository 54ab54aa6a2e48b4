//! The bench's gRPC clients of the scheduler: each its own channel, which
//! connects at its first call, with a bearer token on every call.

use aibro_proto::v1::{agent_gateway_client::AgentGatewayClient, jobs_client::JobsClient};
use aibro_tests::{Authed, Bearer};
use anyhow::Result;
use tonic::transport::Channel;

pub type Gateway = AgentGatewayClient<Authed>;
pub type Jobs = JobsClient<Authed>;

/// A channel to `endpoint` that connects at its first call.
pub fn channel(endpoint: &str) -> Result<Channel> {
    Ok(aibro_proto::transport::endpoint(endpoint, None)
        .map_err(anyhow::Error::msg)?
        .connect_lazy())
}

fn bearer(token: &str) -> Result<Bearer> {
    Ok(Bearer(Some(format!("Bearer {token}").parse()?)))
}

/// The agent gateway, as an agent with the join token (or its credential).
pub fn gateway(endpoint: &str, join_token: &str) -> Result<Gateway> {
    Ok(AgentGatewayClient::with_interceptor(
        channel(endpoint)?,
        bearer(join_token)?,
    ))
}

/// The Jobs service, as the user of `token` (whole listings may be large).
pub fn jobs(endpoint: &str, token: &str) -> Result<Jobs> {
    Ok(
        JobsClient::with_interceptor(channel(endpoint)?, bearer(token)?)
            .max_decoding_message_size(256 << 20),
    )
}

//! The agent's link to the scheduler: the `AgentGateway` client and how calls are
//! retried while the scheduler is away ([`gateway`]), who the agent is
//! ([`identity`]) and the secret it shares with the scheduler ([`credential`]),
//! and the registration, reports and heartbeats ([`reporter`]); on EC2, the
//! spot notices of the machine, watched for in its metadata service ([`imds`]).

pub(crate) mod bootstrap;
pub(crate) mod credential;
pub(crate) mod gateway;
pub(crate) mod identity;
pub(crate) mod imds;
pub(crate) mod reporter;

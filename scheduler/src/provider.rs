//! Where instances come from. A provider launches, stops, starts and
//! terminates the machine behind an instance id; `local` (the embedded
//! default) runs each instance as an `aibro-agent` process on this host,
//! `pool` assigns agents that joined from other hosts. Providers with a spot
//! market say whether spot capacity can be had and announce interruptions.

pub mod local;
pub mod pool;
pub mod spot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::catalog::{Machine, MachineType};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot start the agent `{0}`: {1}")]
    Spawn(String, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("instance {0} is not a running spot machine")]
    NotSpot(String),
    #[error("this provider cannot {0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    BadAddress(#[from] crate::link::BadAddress),
    #[error("no idle pool agent of type `{0}`")]
    NoIdleAgent(String),
    #[error("pool agent {agent_id} refused to run `{instance}`: {reason}")]
    AgentRefused {
        agent_id: String,
        /// The instance it was asked to run, or `nothing` (park or free).
        instance: String,
        reason: String,
    },
    #[error("pool agent {0} did not wipe what an earlier job left")]
    NotWiped(String),
    #[error("the pool agent that keeps instance {0}'s disk is not in the pool")]
    KeeperGone(String),
    #[error("the agent's credential: {0}")]
    Credential(#[from] crate::store::StoreError),
}

/// A provider's notice that a spot machine is reclaimed after `notice`.
#[derive(Debug, Clone, PartialEq)]
pub struct Interruption {
    pub instance_id: String,
    pub notice: Duration,
}

pub trait Provider: Send + Sync {
    /// Starts a new machine for `instance_id`; its agent registers by itself.
    fn launch<'a>(
        &'a self,
        instance_id: &'a str,
        machine: &'a Machine,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Stops the machine; its disk is kept for a later `start`.
    fn stop<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Starts a stopped machine again on its kept disk.
    fn start<'a>(
        &'a self,
        instance_id: &'a str,
        machine: &'a Machine,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Ends the machine and removes its disk. Idempotent.
    fn terminate<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;

    /// Whether the instance's machine runs now, where the provider can tell
    /// (recovery restarts a LAUNCHING instance whose machine never started).
    fn is_running(&self, _instance_id: &str) -> Option<bool> {
        None
    }
    /// The instances this provider has machines or disks for (recovery ends
    /// those the store does not know: launched just before a crash).
    fn instance_ids(&self) -> Vec<String> {
        Vec::new()
    }
    /// A stopped machine stays reserved for its instance (a pool agent keeps
    /// its disk), so it still counts against capacity.
    fn stopped_holds_machine(&self) -> bool {
        false
    }
    /// The probability that a spot request for the type is fulfilled now.
    fn spot_availability(&self, _kind: &MachineType) -> f64 {
        0.0
    }
    /// One spot request: would a spot machine of the type be had now?
    fn spot_available(&self, _kind: &MachineType) -> bool {
        false
    }
    /// How many machines of the type exist now, where the provider knows
    /// better than the catalog (a pool counts the agents that joined).
    fn capacity(&self, _kind: &MachineType) -> Option<u32> {
        None
    }
    /// Interrupts a running spot machine now, as its market would (`None`:
    /// the default notice).
    fn interrupt(
        &self,
        _instance_id: &str,
        _notice: Option<Duration>,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(
            "interrupt instances (it has no emulated spot market)",
        ))
    }
    /// Sets the emulated spot availability of a machine type.
    fn set_spot_availability(&self, _machine_type: &str, _p: f64) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(
            "set spot availability (it has no emulated spot market)",
        ))
    }
}

/// The providers this scheduler runs, by the name the catalog uses.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<dyn Provider>>,
    pool: Option<Arc<pool::Pool>>,
}

impl Providers {
    pub fn with(mut self, name: &str, provider: Arc<dyn Provider>) -> Self {
        self.by_name.insert(name.to_string(), provider);
        self
    }

    /// Adds the pool provider, which agents join from other hosts.
    pub fn with_pool(mut self, pool: Arc<pool::Pool>) -> Self {
        self.pool = Some(pool.clone());
        self.with(pool::POOL, pool)
    }

    pub fn pool(&self) -> Option<&Arc<pool::Pool>> {
        self.pool.as_ref()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.by_name.values()
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.by_name.keys().map(String::as_str).collect();
        names.sort();
        names
    }
}

/// Interruption notices from the providers' spot markets.
pub type Interruptions = tokio::sync::mpsc::UnboundedReceiver<Interruption>;

/// The providers of a scheduler: `local` (agents spawned on this host, with
/// an emulated spot market whose loop runs in `tasks`) and `pool` (agents
/// that join from other hosts, reached with `agent_tls`).
pub fn for_config(
    config: &crate::config::Config,
    public_url: &str,
    credentials: crate::auth::Credentials,
    agent_tls: Option<tonic::transport::ClientTlsConfig>,
    tasks: &tokio_util::task::TaskTracker,
    cancel: &tokio_util::sync::CancellationToken,
) -> (Providers, Interruptions) {
    let (notices, interruptions) = tokio::sync::mpsc::unbounded_channel();
    let market = Arc::new(spot::SpotMarket::new(
        spot::SpotSettings {
            availability: config.spot_availability,
            interruptions_per_hour: config.spot_interruptions_per_hour,
            notice: Duration::from_millis(config.spot_notice_ms),
        },
        notices,
    ));
    {
        let (market, cancel) = (market.clone(), cancel.clone());
        tasks.spawn(async move { market.run(cancel).await });
    }
    let local = local::LocalProvider::new(
        config.agent_bin(),
        config.data_dir.join("instances"),
        public_url.to_string(),
        credentials,
        config.agent_args(),
        market,
    );
    let providers = Providers::default()
        .with("local", Arc::new(local))
        .with_pool(Arc::new(pool::Pool::new(agent_tls)));
    (providers, interruptions)
}

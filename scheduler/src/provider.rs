//! Where instances come from. A provider launches, stops, starts and
//! terminates the machine behind an instance id; `local` (the embedded
//! default) runs each instance as an `aibro-agent` process on this host,
//! `pool` assigns agents that joined from other hosts, `ec2` runs EC2
//! instances. Providers with a spot market say whether spot capacity can be
//! had and announce interruptions.

pub mod ec2;
pub mod local;
pub mod pool;
pub mod spot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::catalog::{Machine, MachineType};
use crate::state::Role;

/// The capacity of a cloud's types: the cloud itself decides, by fulfilling
/// a launch or refusing it.
pub const UNBOUNDED: u32 = u32::MAX;

/// Whom a machine is launched for (a cloud tags the machine with it).
#[derive(Debug, Clone, Copy)]
pub struct LaunchFor<'a> {
    pub job_id: &'a str,
    pub role: Role,
}

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
    #[error(transparent)]
    Cloud(#[from] ec2::CloudError),
    #[error(transparent)]
    StillWaiting(#[from] ec2::StillWaiting),
}

impl ProviderError {
    /// A cloud refused spot capacity of the type (on-demand may be had).
    pub fn is_spot_refusal(&self) -> bool {
        matches!(self, ProviderError::Cloud(e) if e.is_spot_refusal())
    }
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
        launch_for: LaunchFor<'a>,
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

    /// Learns which machines exist now, where that takes a call (a cloud);
    /// recovery asks before it looks at `instance_ids` and `is_running`.
    fn discover(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
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

/// What the providers of a scheduler are made from.
pub struct ProviderSetup<'a> {
    pub config: &'a crate::config::Config,
    pub public_url: &'a str,
    pub credentials: crate::auth::Credentials,
    /// How pool agents are reached.
    pub agent_tls: Option<tonic::transport::ClientTlsConfig>,
    /// EC2, when the scheduler runs the EC2 provider.
    pub ec2: Option<ec2::Ec2Cloud>,
    /// Tags this scheduler's cloud instances.
    pub scheduler_id: String,
    /// Where the EC2 provider quotes live spot prices.
    pub catalog: &'a crate::catalog::Catalog,
    pub tasks: &'a tokio_util::task::TaskTracker,
    pub cancel: &'a tokio_util::sync::CancellationToken,
}

/// The providers of a scheduler: `local` (agents spawned on this host, with
/// an emulated spot market whose loop runs in `tasks`), `pool` (agents that
/// join from other hosts, reached with `agent_tls`), and `ec2` when asked for.
pub async fn for_config(
    setup: ProviderSetup<'_>,
) -> Result<(Providers, Interruptions), ec2::CloudError> {
    let (local, interruptions) = local_provider(&setup);
    let mut providers = Providers::default()
        .with("local", Arc::new(local))
        .with_pool(Arc::new(pool::Pool::new(setup.agent_tls.clone())));
    if let Some(ec2) = ec2_provider(&setup).await? {
        providers = providers.with(ec2::EC2, ec2);
    }
    Ok((providers, interruptions))
}

/// The local provider and its emulated spot market.
fn local_provider(setup: &ProviderSetup<'_>) -> (local::LocalProvider, Interruptions) {
    let config = setup.config;
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
        let (market, cancel) = (market.clone(), setup.cancel.clone());
        setup.tasks.spawn(async move { market.run(cancel).await });
    }
    let local = local::LocalProvider::new(
        config.agent_bin(),
        config.data_dir.join("instances"),
        setup.public_url.to_string(),
        setup.credentials.clone(),
        config.agent_args(),
        market,
    );
    (local, interruptions)
}

/// The EC2 provider (its AMI checked), with its state and spot price loops
/// running in `tasks`.
async fn ec2_provider(
    setup: &ProviderSetup<'_>,
) -> Result<Option<Arc<ec2::Ec2Provider>>, ec2::CloudError> {
    let (Some(cloud), Some(settings)) = (&setup.ec2, setup.config.ec2.settings()) else {
        return Ok(None);
    };
    let boot = boot_common(setup.config, setup.public_url);
    let provider = Arc::new(
        ec2::Ec2Provider::new(ec2::Ec2Parts {
            client: cloud.client.clone(),
            settings,
            boot,
            credentials: setup.credentials.clone(),
            scheduler_id: setup.scheduler_id.clone(),
        })
        .await?,
    );
    let types: Vec<String> = (setup.catalog.types())
        .filter(|t| t.provider == ec2::EC2)
        .map(|t| t.name)
        .collect();
    let (quotes, cancel) = (setup.catalog.spot_quotes().clone(), setup.cancel.clone());
    let p = provider.clone();
    setup
        .tasks
        .spawn(async move { p.run_spot_quotes(types, quotes, cancel).await });
    let (p, cancel) = (provider.clone(), setup.cancel.clone());
    setup.tasks.spawn(async move { p.run_fleet(cancel).await });
    tracing::info!(
        "EC2 instances of this scheduler carry the tag aibro:scheduler={}",
        setup.scheduler_id
    );
    Ok(Some(provider))
}

/// What every EC2 instance's boot script shares, from the scheduler's flags.
pub fn boot_common(config: &crate::config::Config, public_url: &str) -> ec2::BootCommon {
    ec2::BootCommon {
        scheduler_url: (config.ec2.ec2_scheduler_url.clone())
            .unwrap_or_else(|| public_url.to_string()),
        ca_pem: (config
            .tls_ca()
            .and_then(|ca| std::fs::read_to_string(ca).ok()))
        .unwrap_or_default(),
        agent_args: config.cloud_agent_args(),
        agent_url: config.ec2.ec2_agent_url.clone().unwrap_or_default(),
        agent_sha256: config.ec2.ec2_agent_sha256.clone().unwrap_or_default(),
    }
}

//! The machines part of the control plane: which provider serves a machine
//! type, how many machines of it can be had (capacity), spot and on-demand
//! markets, and starting or ending a machine through its provider. It knows
//! nothing of jobs: the lifecycles above decide what a failure means.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::capacity::{Capacity, NoneFree};
use crate::catalog::{Catalog, Machine, MachineType, Market};
use crate::error::Error;
use crate::provider::pool::{Pool, POOL};
use crate::provider::{LaunchFor, Provider, ProviderError, Providers};

/// Why a machine could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("{field}: unknown machine id `{id}`; known ids: {known}")]
    Unknown {
        field: String,
        id: String,
        known: String,
    },
    #[error(
        "{field}: `{id}` is a spot machine id; deploys take on-demand ids (`{id}.od`), \
         and the scheduler uses spot capacity by itself where it saves cost"
    )]
    SpotId { field: String, id: String },
    #[error("machine `{machine}` comes from provider `{provider}`, which this scheduler does not run (it runs: {runs})")]
    NoProvider {
        machine: String,
        provider: String,
        runs: String,
    },
    #[error("no `{machine}` instance could be had within wait_request_s={wait_s}s: {shortage}")]
    NoCapacity {
        machine: String,
        wait_s: u64,
        shortage: Shortage,
    },
    #[error(
        "the spot request for `{machine}` was not fulfilled (spot availability {percent:.0}%)"
    )]
    SpotNotFulfilled { machine: String, percent: f64 },
    #[error("launching `{machine}` failed: {source}")]
    LaunchFailed {
        machine: String,
        #[source]
        source: ProviderError,
    },
}

impl MachineError {
    /// The cloud refused spot capacity: an on-demand machine may be had.
    pub fn is_spot_refusal(&self) -> bool {
        matches!(self, MachineError::LaunchFailed { source, .. } if source.is_spot_refusal())
    }
}

impl From<MachineError> for Error {
    fn from(e: MachineError) -> Error {
        match e {
            MachineError::Unknown { .. } | MachineError::SpotId { .. } => {
                Error::InvalidArgument(e.to_string())
            }
            MachineError::NoProvider { .. } => Error::FailedPrecondition(e.to_string()),
            _ => Error::Unavailable(e.to_string()),
        }
    }
}

/// Why every machine of a type is taken.
#[derive(Debug)]
pub enum Shortage {
    /// A pool type that no agent has joined.
    NoPoolAgent,
    /// All of them run other instances.
    AllInUse(u32),
}

impl fmt::Display for Shortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortage::NoPoolAgent => write!(f, "no pool agent of that type has joined"),
            Shortage::AllInUse(n) => write!(f, "all {n} are in use"),
        }
    }
}

pub(crate) struct Machines {
    catalog: Catalog,
    providers: Providers,
    capacity: Capacity,
    /// Deploys run on spot twins of their on-demand ids when spot can be had.
    use_spot: bool,
}

impl Machines {
    pub(crate) fn new(catalog: Catalog, providers: Providers, use_spot: bool) -> Self {
        Machines {
            catalog,
            providers,
            capacity: Capacity::default(),
            use_spot,
        }
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub(crate) fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    pub(crate) fn pool(&self) -> Option<&Arc<Pool>> {
        self.providers.pool()
    }

    pub(crate) fn providers(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.all()
    }

    /// The provider that serves the machine's type.
    pub(crate) fn provider(&self, machine: &Machine) -> Result<Arc<dyn Provider>, MachineError> {
        self.provider_for(&machine.id, &machine.kind)
    }

    /// The provider that serves a machine type.
    pub(crate) fn provider_of_type(
        &self,
        kind: &MachineType,
    ) -> Result<Arc<dyn Provider>, MachineError> {
        self.provider_for(&kind.name, kind)
    }

    fn provider_for(
        &self,
        machine: &str,
        kind: &MachineType,
    ) -> Result<Arc<dyn Provider>, MachineError> {
        self.providers
            .get(&kind.provider)
            .cloned()
            .ok_or_else(|| MachineError::NoProvider {
                machine: machine.to_string(),
                provider: kind.provider.clone(),
                runs: self.providers.names().join(", "),
            })
    }

    /// Resolves a machine id (of request field `field`) that a provider of ours serves.
    pub(crate) fn servable(&self, field: &str, id: &str) -> Result<Machine, MachineError> {
        let machine = self
            .catalog
            .resolve(id)
            .ok_or_else(|| MachineError::Unknown {
                field: field.to_string(),
                id: id.to_string(),
                known: self.catalog.ids().join(", "),
            })?;
        self.provider(&machine)?;
        Ok(machine)
    }

    /// Resolves an on-demand machine id that a provider of ours serves.
    pub(crate) fn deployable(&self, field: &str, id: &str) -> Result<Machine, MachineError> {
        let machine = self.servable(field, id)?;
        if machine.market == Market::Spot {
            return Err(MachineError::SpotId {
                field: field.to_string(),
                id: id.to_string(),
            });
        }
        Ok(machine)
    }

    /// How many machines of the type exist: the provider's live count (a
    /// pool's joined agents), else the catalog's capacity.
    pub(crate) fn live_capacity(&self, kind: &MachineType) -> u32 {
        match self.providers.get(&kind.provider) {
            Some(p) => p.capacity(kind).unwrap_or(kind.capacity),
            // Its provider does not run here: none can be had.
            None => 0,
        }
    }

    /// The probability a spot request for the type is fulfilled now.
    pub(crate) fn spot_availability(&self, kind: &MachineType) -> f64 {
        self.providers
            .get(&kind.provider)
            .map_or(0.0, |p| p.spot_availability(kind))
    }

    /// The machine to launch for an on-demand id of a deploy: its spot twin
    /// when spot use is on and a spot request is fulfilled now.
    pub(crate) fn market_machine(&self, on_demand: &Machine) -> Machine {
        let spot = self.use_spot
            && on_demand.market == Market::OnDemand
            && on_demand.kind.spot_price < on_demand.kind.on_demand_price
            && self
                .provider(on_demand)
                .is_ok_and(|p| p.spot_available(&on_demand.kind));
        if spot {
            on_demand.on_market(Market::Spot)
        } else {
            on_demand.clone()
        }
    }

    /// A spot request for a spot machine id (on-demand ids always pass).
    pub(crate) fn spot_request(&self, machine: &Machine) -> Result<(), MachineError> {
        if machine.market == Market::OnDemand {
            return Ok(());
        }
        let provider = self.provider(machine)?;
        if provider.spot_available(&machine.kind) {
            return Ok(());
        }
        Err(MachineError::SpotNotFulfilled {
            machine: machine.id.clone(),
            percent: 100.0 * provider.spot_availability(&machine.kind),
        })
    }

    /// Takes a machine of the type for the instance, waiting up to `wait`.
    pub(crate) async fn acquire(
        &self,
        instance_id: &str,
        machine: &Machine,
        wait: Duration,
    ) -> Result<(), MachineError> {
        let deadline = tokio::time::Instant::now() + wait;
        let kind = &machine.kind;
        let capacity = || self.live_capacity(kind);
        let taken = self
            .capacity
            .acquire(&kind.name, capacity, instance_id, deadline)
            .await;
        if taken.is_ok() {
            return Ok(());
        }
        let shortage = match capacity() {
            0 if kind.provider == POOL => Shortage::NoPoolAgent,
            n => Shortage::AllInUse(n),
        };
        Err(MachineError::NoCapacity {
            machine: machine.id.clone(),
            wait_s: wait.as_secs(),
            shortage,
        })
    }

    /// Takes a machine of the type for the instance if one is free now.
    pub(crate) async fn take_free(
        &self,
        instance_id: &str,
        machine: &Machine,
    ) -> Result<(), NoneFree> {
        let free = || self.live_capacity(&machine.kind);
        let now = tokio::time::Instant::now();
        self.capacity
            .acquire(&machine.kind.name, free, instance_id, now)
            .await
    }

    /// Has the provider start the machine of an instance that holds capacity
    /// (the caller holds the instance lock); undone when it fails.
    pub(crate) async fn provision(
        &self,
        instance_id: &str,
        machine: &Machine,
        launch_for: LaunchFor<'_>,
    ) -> Result<(), MachineError> {
        let launched = match self.provider(machine) {
            Ok(provider) => provider
                .launch(instance_id, machine, launch_for)
                .await
                .map_err(|source| MachineError::LaunchFailed {
                    machine: machine.id.clone(),
                    source,
                }),
            Err(e) => Err(e),
        };
        if launched.is_err() {
            self.unprovision(instance_id, machine).await;
        }
        launched
    }

    /// Ends a machine no record will follow, and gives its capacity back.
    pub(crate) async fn unprovision(&self, instance_id: &str, machine: &Machine) {
        if let Ok(provider) = self.provider(machine) {
            let _ = provider.terminate(instance_id).await;
        }
        self.capacity.release(instance_id);
    }
}

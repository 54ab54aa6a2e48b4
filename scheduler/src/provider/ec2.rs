//! The EC2 provider (`provider = "ec2"` in the catalog): launch is one
//! RunInstances (spot as a persistent request that stops on interruption, so
//! that a spot cooling instance can be stopped and started like an on-demand
//! one), stop is StopInstances (the EBS root volume keeps the virtualenv and
//! the unpacked repo; done when EC2 says `stopped`), wake is StartInstances,
//! terminate is TerminateInstances (its spot request canceled first). Every
//! instance is tagged with this scheduler's id, its aibro instance, job and
//! role; recovery finds them by those tags. States come from one batched
//! DescribeInstances ([`fleet`]); spot prices from DescribeSpotPriceHistory.

mod api;
mod boot;
mod fleet;
mod settings;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceStateName;
use base64::Engine;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{LaunchFor, Provider, ProviderError, UNBOUNDED};
use crate::auth::Credentials;
use crate::catalog::{Machine, MachineType, Market, SpotQuotes};
pub use api::CloudError;
use api::{Described, Ec2Api, Launch, TAG_INSTANCE, TAG_JOB, TAG_ROLE, TAG_SCHEDULER};
pub use boot::{script as boot_script, BootCommon};
use fleet::Fleet;
pub use fleet::StillWaiting;
pub use settings::{
    price_table, priced_regions, CloudSetupError, Ec2Cloud, Ec2Config, Ec2Settings, PriceTable,
};

pub const EC2: &str = "ec2";
/// How long a stop may take before the close is tried again.
const STOP_LIMIT: Duration = Duration::from_secs(15 * 60);

pub struct Ec2Provider {
    api: Ec2Api,
    fleet: Arc<Fleet>,
    settings: Ec2Settings,
    /// The AMI's root device, mapped to a volume of the configured size.
    root_device: String,
    boot: BootCommon,
    credentials: Credentials,
    scheduler_id: String,
    /// When EC2 last refused spot of a type.
    spot_refused: Mutex<HashMap<String, Instant>>,
}

/// What the provider needs besides its settings.
pub struct Ec2Parts {
    pub client: aws_sdk_ec2::Client,
    pub settings: Ec2Settings,
    pub boot: BootCommon,
    pub credentials: Credentials,
    /// Tags every instance of this scheduler (kept in its store).
    pub scheduler_id: String,
}

impl Ec2Provider {
    /// Checks the AMI and makes the provider.
    pub async fn new(parts: Ec2Parts) -> Result<Ec2Provider, CloudError> {
        let api = Ec2Api::new(parts.client);
        let root_device = api.root_device(&parts.settings.ami).await?;
        Ok(Ec2Provider {
            fleet: Fleet::new(api.clone(), parts.scheduler_id.clone()),
            api,
            settings: parts.settings,
            root_device,
            boot: parts.boot,
            credentials: parts.credentials,
            scheduler_id: parts.scheduler_id,
            spot_refused: Mutex::new(HashMap::new()),
        })
    }

    /// Describes instances while anyone waits for a state, until `cancel`.
    pub async fn run_fleet(&self, cancel: CancellationToken) {
        self.fleet.run(self.settings.poll, cancel).await
    }

    /// Quotes the types' spot prices into `quotes` every interval, until `cancel`.
    pub async fn run_spot_quotes(
        &self,
        types: Vec<String>,
        quotes: SpotQuotes,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.settings.spot_price_every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.api.spot_prices(&types).await {
                Ok(prices) => prices.iter().for_each(|(t, p)| quotes.set(t, *p)),
                Err(e) => tracing::warn!("cannot quote spot prices: {e}"),
            }
        }
    }

    /// The instance as EC2 last described it; asks EC2 when it is not known.
    async fn find(&self, instance_id: &str) -> Result<Option<Described>, ProviderError> {
        if let Some(d) = self.fleet.get(instance_id) {
            return Ok(Some(d));
        }
        self.fleet.refresh().await?;
        Ok(self.fleet.get(instance_id))
    }

    async fn run_instance(
        &self,
        instance_id: &str,
        machine: &Machine,
        launch_for: LaunchFor<'_>,
    ) -> Result<(), ProviderError> {
        let token = self
            .credentials
            .issue_bootstrap(instance_id, self.settings.bootstrap_ttl)
            .await?;
        let script = boot::script(&self.boot, instance_id, &machine.id, &token);
        let spot = machine.market == Market::Spot;
        let launch = Launch {
            instance_id,
            instance_type: &machine.kind.name,
            spot,
            user_data: base64::engine::general_purpose::STANDARD.encode(script),
            tags: vec![
                (TAG_SCHEDULER, self.scheduler_id.clone()),
                (TAG_INSTANCE, instance_id.to_string()),
                (TAG_JOB, launch_for.job_id.to_string()),
                (TAG_ROLE, format!("{:?}", launch_for.role).to_lowercase()),
            ],
        };
        match self
            .api
            .run(&self.settings, &self.root_device, launch)
            .await
        {
            Ok(launched) => {
                self.fleet.note(launched);
                Ok(())
            }
            Err(e) => {
                if spot && e.is_spot_refusal() {
                    self.refuse_spot(&machine.kind.name);
                }
                let _ = self.credentials.revoke_all_of(instance_id).await;
                Err(e.into())
            }
        }
    }

    async fn stop_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        let Some(d) = self.find(instance_id).await? else {
            return Ok(());
        };
        self.api.stop(&d.ec2_id).await?;
        self.fleet.note(Described {
            state: InstanceStateName::Stopping,
            ..d
        });
        let stopped = [InstanceStateName::Stopped, InstanceStateName::Terminated];
        Ok(self
            .fleet
            .wait_for(instance_id, &stopped, STOP_LIMIT)
            .await?)
    }

    async fn start_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        let d = self.find(instance_id).await?.ok_or_else(|| CloudError {
            action: "StartInstances",
            code: "InvalidInstanceID.NotFound".into(),
            message: format!("no EC2 instance is tagged {TAG_INSTANCE}={instance_id}"),
        })?;
        self.api.start(&d.ec2_id).await?;
        self.fleet.note(Described {
            state: InstanceStateName::Pending,
            ..d
        });
        Ok(())
    }

    async fn terminate_instance(&self, instance_id: &str) -> Result<(), ProviderError> {
        if let Some(d) = self.find(instance_id).await? {
            if let Some(request) = &d.spot_request {
                self.api.cancel_spot_request(request).await?;
            }
            self.api.terminate(&d.ec2_id).await?;
            self.fleet.note(Described {
                state: InstanceStateName::ShuttingDown,
                ..d
            });
        }
        Ok(self.credentials.revoke_all_of(instance_id).await?)
    }

    fn refuse_spot(&self, machine_type: &str) {
        self.spot_refused
            .lock()
            .expect("spot lock")
            .insert(machine_type.to_string(), Instant::now());
    }

    fn spot_refused_lately(&self, machine_type: &str) -> bool {
        self.spot_refused
            .lock()
            .expect("spot lock")
            .get(machine_type)
            .is_some_and(|at| at.elapsed() < self.settings.spot_retry)
    }
}

impl Provider for Ec2Provider {
    fn launch<'a>(
        &'a self,
        instance_id: &'a str,
        machine: &'a Machine,
        launch_for: LaunchFor<'a>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.run_instance(instance_id, machine, launch_for).boxed()
    }

    fn stop<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.stop_instance(instance_id).boxed()
    }

    fn start<'a>(
        &'a self,
        instance_id: &'a str,
        _machine: &'a Machine,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.start_instance(instance_id).boxed()
    }

    fn terminate<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.terminate_instance(instance_id).boxed()
    }

    fn discover(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move { Ok(self.fleet.refresh().await?) }.boxed()
    }

    fn is_running(&self, instance_id: &str) -> Option<bool> {
        let state = self.fleet.get(instance_id).map(|d| d.state);
        Some(matches!(
            state,
            Some(InstanceStateName::Pending | InstanceStateName::Running)
        ))
    }

    fn instance_ids(&self) -> Vec<String> {
        self.fleet.instance_ids()
    }

    fn spot_availability(&self, kind: &MachineType) -> f64 {
        if self.spot_refused_lately(&kind.name) {
            0.0
        } else {
            1.0
        }
    }

    fn spot_available(&self, kind: &MachineType) -> bool {
        !self.spot_refused_lately(&kind.name)
    }

    fn capacity(&self, _kind: &MachineType) -> Option<u32> {
        Some(UNBOUNDED)
    }
}

//! The control plane: turns user requests, agent reports and timers into
//! status transitions. Every change is one store update, which also
//! publishes its events to watchers; side effects on providers and agents run
//! in tracked tasks that shutdown cancels.
//!
//! Its files are layers; each calls only those listed before it (the
//! structure test checks it):
//! - parts that own state: [`machines`] (providers, capacity, markets),
//!   [`links`] (reaching agents, when each was last heard), the dry runs
//!   waited for (in [`dry_run`]);
//! - [`agents`] (what an agent's credential may speak for; links carrying it);
//! - [`instances`] (moving an instance, closing it through its provider),
//!   [`jobs`] (find, create, cancel, the name index), [`artifacts`];
//! - the lifecycles: [`replace`] (failures, lost agents, replacements),
//!   [`dispatch`] (Prepare and Train sent to agents), [`cooling`],
//!   [`serving`] (routes), [`launch`], [`dry_run`], [`deploy`], [`train`], [`spot`],
//!   [`liveness`], [`reports`] (what agents tell), [`recovery`] (start up);
//! - the readers: [`predict`], [`watch`], [`views`], [`census`] (what
//!   `/metrics` shows).

mod agents;
mod artifacts;
mod census;
mod cooling;
mod deploy;
mod dispatch;
mod dry_run;
mod instances;
mod jobs;
mod launch;
mod links;
mod liveness;
mod machines;
mod predict;
mod recovery;
mod replace;
mod reports;
mod serving;
mod spot;
mod train;
mod views;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::provider::Providers;
use crate::records::InstanceRecord;
use crate::router::Router;
use crate::store::{Store, StoreError};

pub use agents::AgentClaim;
pub use deploy::{DeploySpec, Deployed, DryRunOutcome};
pub use jobs::{may_see, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use links::{AgentLoad, LastHeard};
pub use machines::{MachineError, Shortage};
pub use reports::{AgentReport, AgentTls, Issued, Registration, ReportedPhase};
pub use spot::SpotNotice;
pub use train::{FitSpec, TrainingUpdate, UpdateKind};
pub use views::{curl_line, InstanceView, JobView, MachineOffer};

/// Knobs of the control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Shown to users as where to send predictions.
    pub public_url: String,
    /// How long a launched agent may take to register.
    pub connect_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// An agent silent this long is taken as lost (None: never).
    pub agent_lost_after: Option<Duration>,
    /// A cooling instance without requests for this long shows COOLING (at
    /// most half its cool-down period).
    pub cooling_idle: Duration,
    /// How often the cool-down countdown looks at its instance.
    pub lifecycle_tick: Duration,
    /// How agents are reached over TLS (the CA they chain to); None: plain http.
    pub agent_tls: Option<tonic::transport::ClientTlsConfig>,
    /// The CA that gives a cloud instance's agent its certificate at its
    /// bootstrap (with `agent_tls`).
    pub agent_issuer: Option<std::sync::Arc<crate::tls::Issuer>>,
    /// Deploys run on spot twins of their on-demand ids when spot can be had.
    pub use_spot: bool,
    /// How often on-demand stand-ins look for spot capacity again.
    pub spot_check: Duration,
    /// Record metrics (`--metrics on`); off, recording is a no-op.
    pub metrics: bool,
}

impl Settings {
    /// A control plane whose agents are in process (the simulator, tests):
    /// hour-long connect and heartbeat intervals, no liveness timeout, no spot.
    pub fn in_process(data_dir: &std::path::Path) -> Settings {
        Settings {
            data_dir: data_dir.to_path_buf(),
            public_url: "sim://".into(),
            connect_timeout: Duration::from_secs(3600),
            heartbeat_interval: Duration::from_secs(3600),
            agent_lost_after: None,
            cooling_idle: Duration::from_secs(60),
            lifecycle_tick: Duration::from_secs(1),
            agent_tls: None,
            agent_issuer: None,
            use_spot: false,
            spot_check: Duration::from_secs(60),
            metrics: true,
        }
    }
}

/// Everything the control plane holds, shared by its clones.
pub(crate) struct Parts {
    settings: Settings,
    store: Store,
    router: Router,
    machines: machines::Machines,
    links: links::AgentLinks,
    dry_runs: dry_run::PendingDryRuns,
    auth: Auth,
    metrics: Metrics,
    /// Serialises provider work (launch, start, stop, terminate) per instance.
    instance_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

#[derive(Clone)]
pub struct Control {
    parts: Arc<Parts>,
}

impl Control {
    pub fn new(
        settings: Settings,
        store: Store,
        catalog: Catalog,
        providers: Providers,
        auth: Auth,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let parts = Arc::new_cyclic(|parts: &Weak<Parts>| Parts {
            metrics: metrics_of(&settings, &store, parts.clone()),
            machines: machines::Machines::new(catalog, providers, settings.use_spot),
            links: links::AgentLinks::new(settings.agent_tls.clone()),
            dry_runs: dry_run::PendingDryRuns::default(),
            settings,
            store,
            router: Router::default(),
            auth,
            instance_locks: Mutex::new(HashMap::new()),
            tasks,
            cancel,
        });
        Control { parts }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    pub(crate) fn store(&self) -> &Store {
        &self.parts.store
    }

    pub(crate) fn router(&self) -> &Router {
        &self.parts.router
    }

    pub(crate) fn machines(&self) -> &machines::Machines {
        &self.parts.machines
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        self.parts.machines.catalog()
    }

    pub(crate) fn links(&self) -> &links::AgentLinks {
        &self.parts.links
    }

    pub(crate) fn dry_runs(&self) -> &dry_run::PendingDryRuns {
        &self.parts.dry_runs
    }

    pub(crate) fn auth(&self) -> &Auth {
        &self.parts.auth
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.parts.settings
    }

    /// Runs `fut` as a tracked background task that shutdown cancels.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = self.parts.cancel.clone();
        self.parts.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    /// Held while a provider works on the instance, so that a launch or wake
    /// and a close never interleave.
    pub(crate) async fn lock_instance(
        &self,
        instance_id: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .parts
            .instance_locks
            .lock()
            .expect("instance locks")
            .entry(instance_id.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}

/// The metrics `settings` ask for; their census reads the control plane's
/// state while it lives (a weak reference: the registry does not keep it alive).
fn metrics_of(settings: &Settings, store: &Store, parts: Weak<Parts>) -> Metrics {
    if !settings.metrics {
        return Metrics::off();
    }
    Metrics::new(
        store.timings(),
        Box::new(move || {
            let control = Control {
                parts: parts.upgrade()?,
            };
            control
                .census()
                .inspect_err(|e| tracing::warn!("metrics: cannot count the store's records: {e}"))
                .ok()
        }),
    )
}

/// The instance `id` among a job's instances, inside a change.
pub(crate) fn instance_mut<'a>(
    insts: &'a mut [InstanceRecord],
    id: &str,
) -> Result<&'a mut InstanceRecord, StoreError> {
    insts
        .iter_mut()
        .find(|i| i.id == id)
        .ok_or_else(|| StoreError::Stale(format!("instance {id} is not part of its job")))
}

pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// A control plane over a real store without machines, for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    use super::*;
    use crate::records::JobRecord;
    use crate::state::{JobEvent, JobKind};

    pub(crate) async fn control(dir: &std::path::Path) -> Control {
        let store = Store::open(&dir.join("db")).unwrap();
        let settings = Settings {
            public_url: "http://127.0.0.1:1".into(),
            connect_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(1),
            ..Settings::in_process(dir)
        };
        let auth = Auth::open(store.clone()).await.unwrap();
        Control::new(
            settings,
            store,
            Catalog::shipped(),
            Providers::default(),
            auth,
            TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    pub(crate) fn job(id: &str, owner: &str) -> JobRecord {
        let mut job = JobRecord::queued(
            id.into(),
            owner,
            JobKind::Inference,
            "sha256:00".into(),
            crate::clock::now_ms(),
        );
        job.model_name = id.into();
        job.standby = "local.small.od".into();
        job
    }

    pub(crate) async fn cancel(control: &Control, id: &str) {
        control
            .store()
            .update(id, |j, _| {
                j.state = crate::state::next_job(j.kind, j.state, JobEvent::Cancel)?;
                Ok(vec![])
            })
            .await
            .unwrap();
    }
}

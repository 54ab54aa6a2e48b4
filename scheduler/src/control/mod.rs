//! The control plane: turns user requests, agent reports and timers into
//! status transitions. Every change goes through [`Control::apply`] (one
//! store transaction, then publication to watchers); side effects on
//! providers and agents run in tracked tasks that shutdown cancels.

mod agents;
mod artifacts;
mod cooling;
mod deploy;
mod launch;
mod liveness;
mod predict;
mod recovery;
mod replace;
mod spot;
#[cfg(test)]
mod tests;
mod train;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, User};
use crate::capacity::Capacity;
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::hub::Hub;
use crate::link::Link;
use crate::provider::Providers;
use crate::router::Router;
use crate::store::{Committed, InstanceRecord, JobRecord, Mark, Store, StoreError};

pub use agents::Registration;
pub use deploy::{DeploySpec, DryRun};
pub use liveness::Seen;
pub use train::FitSpec;

/// Jobs in a ListJobs page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most jobs in one ListJobs page.
pub const MAX_PAGE_SIZE: usize = 1000;

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
    pub python: String,
    /// pip options for dry runs (the agents get theirs as flags).
    pub pip: aibro_repo::PipOptions,
    /// How agents are reached over TLS (the CA they chain to); None: plain http.
    pub agent_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Deploys run on spot twins of their on-demand ids when spot can be had.
    pub use_spot: bool,
    /// How often on-demand stand-ins look for spot capacity again.
    pub spot_check: Duration,
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
            python: "python3".into(),
            pip: Default::default(),
            agent_tls: None,
            use_spot: false,
            spot_check: Duration::from_secs(60),
        }
    }
}

pub(crate) struct Inner {
    settings: Settings,
    store: Store,
    hub: Hub,
    router: Router,
    catalog: Catalog,
    providers: Providers,
    capacity: Capacity,
    auth: Auth,
    agents: Mutex<HashMap<String, Link>>,
    /// Serialises provider work (launch, start, stop, terminate) per instance.
    instance_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each instance's agent was last heard from.
    heartbeats: Mutex<HashMap<String, liveness::Seen>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
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
        Control {
            inner: Arc::new(Inner {
                settings,
                store,
                hub: Hub::default(),
                router: Router::default(),
                catalog,
                providers,
                capacity: Capacity::default(),
                auth,
                agents: Mutex::new(HashMap::new()),
                instance_locks: Mutex::new(HashMap::new()),
                heartbeats: Mutex::new(HashMap::new()),
                tasks,
                cancel,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn capacity(&self) -> &Capacity {
        &self.inner.capacity
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The one path for changes: a store transaction, then publication.
    pub(crate) async fn apply<F>(&self, job_id: &str, change: F) -> Result<Committed, StoreError>
    where
        F: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<Mark>, StoreError>,
    {
        let committed = self.inner.store.update(job_id, change).await?;
        self.inner.hub.publish(job_id, &committed.events);
        Ok(committed)
    }

    /// Runs `fut` as a tracked background task that shutdown cancels.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    /// The caller's job, by id (wins) or by active model name.
    pub fn find_job(&self, user: &User, job_id: &str, model_name: &str) -> Result<JobRecord> {
        let job = if !job_id.is_empty() {
            self.inner.store.job(job_id)?
        } else if !model_name.is_empty() {
            self.inner.store.job_by_name(&user.0, model_name)?
        } else {
            return Err(Error::InvalidArgument(
                "give a job_id or a model_name".into(),
            ));
        };
        match job {
            Some(job) if job.owner == user.0 => Ok(job),
            _ if !job_id.is_empty() => Err(Error::NotFound(format!("job {job_id} not found"))),
            _ => Err(Error::NotFound(format!(
                "no active job with model name `{model_name}`"
            ))),
        }
    }

    /// A page of the caller's jobs (oldest first) and the token for the next
    /// page ("" when none follows). `page_size` 0 means
    /// [`DEFAULT_PAGE_SIZE`]; larger than [`MAX_PAGE_SIZE`] means that.
    /// `page_token` is the last job id of the previous page; anything that is
    /// not one of the caller's jobs is refused.
    pub fn list_jobs(
        &self,
        user: &User,
        active_only: bool,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<JobRecord>, String)> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            match self.inner.store.job(page_token)? {
                Some(job) if job.owner == user.0 => Some(page_token),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "page_token `{}` is not one this server handed out to you: pass the \
                         next_page_token of your previous ListJobs response, or none for the \
                         first page",
                        page_token.chars().take(80).collect::<String>()
                    )))
                }
            }
        };
        let (jobs, more) = self.inner.store.jobs_page(&user.0, after, limit, |j| {
            !active_only || !j.state.is_ended()
        })?;
        let next = match jobs.last() {
            Some(last) if more => last.id.clone(),
            _ => String::new(),
        };
        Ok((jobs, next))
    }

    pub(crate) fn agent(&self, instance_id: &str) -> Option<Link> {
        self.inner
            .agents
            .lock()
            .expect("agents lock")
            .get(instance_id)
            .cloned()
    }

    pub(crate) fn set_agent(&self, instance_id: &str, link: Link) {
        self.inner
            .agents
            .lock()
            .expect("agents lock")
            .insert(instance_id.to_string(), link);
    }

    pub(crate) fn forget_agent(&self, instance_id: &str) {
        self.inner
            .agents
            .lock()
            .expect("agents lock")
            .remove(instance_id);
    }

    /// Held while a provider works on the instance, so that a launch or wake
    /// and a close never interleave.
    pub(crate) async fn lock_instance(
        &self,
        instance_id: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .inner
            .instance_locks
            .lock()
            .expect("instance locks")
            .entry(instance_id.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }
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

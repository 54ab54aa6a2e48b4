//! What EC2 says of this scheduler's instances, from one DescribeInstances
//! for all of them: refreshed every poll interval while anyone waits for a
//! state change, and at least every minute otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::api::{CloudError, Described, Ec2Api};

/// How often the instances are described when nobody waits.
const IDLE_REFRESH: Duration = Duration::from_secs(60);

/// The instance did not reach the state in time.
#[derive(Debug, thiserror::Error)]
#[error("EC2 instance {ec2_id} is still `{state}` after {waited:?}")]
pub struct StillWaiting {
    pub ec2_id: String,
    pub state: String,
    pub waited: Duration,
}

pub(super) struct Fleet {
    api: Ec2Api,
    scheduler_id: String,
    /// aibro instance id → what EC2 said last.
    known: RwLock<HashMap<String, Described>>,
    /// Bumped by every refresh.
    refreshed: watch::Sender<u64>,
    waiters: AtomicUsize,
    wanted: Notify,
}

impl Fleet {
    pub fn new(api: Ec2Api, scheduler_id: String) -> Arc<Fleet> {
        Arc::new(Fleet {
            api,
            scheduler_id,
            known: RwLock::new(HashMap::new()),
            refreshed: watch::channel(0).0,
            waiters: AtomicUsize::new(0),
            wanted: Notify::new(),
        })
    }

    /// Describes every instance of ours now (one call, paged by EC2).
    pub async fn refresh(&self) -> Result<(), CloudError> {
        let described = self.api.describe_ours(&self.scheduler_id).await?;
        let known = described
            .into_iter()
            .map(|d| (d.instance_id.clone(), d))
            .collect();
        *self.known.write().expect("fleet lock") = known;
        self.refreshed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Refreshes while anyone waits (every `poll`), else now and then.
    pub async fn run(&self, poll: Duration, cancel: CancellationToken) {
        loop {
            let idle = tokio::time::sleep(IDLE_REFRESH);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = idle => {}
                _ = self.wanted.notified() => {}
            }
            loop {
                if let Err(e) = self.refresh().await {
                    tracing::warn!("cannot describe the EC2 instances: {e}");
                }
                if self.waiters.load(Ordering::SeqCst) == 0 {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }

    pub fn get(&self, instance_id: &str) -> Option<Described> {
        self.known
            .read()
            .expect("fleet lock")
            .get(instance_id)
            .cloned()
    }

    /// Records what a call of ours just did, until the next refresh says.
    pub fn note(&self, described: Described) {
        self.known
            .write()
            .expect("fleet lock")
            .insert(described.instance_id.clone(), described);
    }

    pub fn instance_ids(&self) -> Vec<String> {
        self.known
            .read()
            .expect("fleet lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Waits (sharing the refreshes with every other waiter) until EC2
    /// shows the instance in one of `states`, or no longer lists it.
    pub async fn wait_for(
        &self,
        instance_id: &str,
        states: &[InstanceStateName],
        limit: Duration,
    ) -> Result<(), StillWaiting> {
        let _waiting = Waiting::new(self);
        let mut refreshed = self.refreshed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Some(now) = self.get(instance_id) else {
                return Ok(());
            };
            if states.contains(&now.state) {
                return Ok(());
            }
            let changed = tokio::time::timeout_at(deadline, refreshed.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(StillWaiting {
                    ec2_id: now.ec2_id,
                    state: now.state.as_str().to_string(),
                    waited: limit,
                });
            }
        }
    }
}

/// Counts a waiter while it waits, and wakes the refresh loop.
struct Waiting<'a>(&'a Fleet);

impl<'a> Waiting<'a> {
    fn new(fleet: &'a Fleet) -> Self {
        fleet.waiters.fetch_add(1, Ordering::SeqCst);
        fleet.wanted.notify_one();
        Waiting(fleet)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

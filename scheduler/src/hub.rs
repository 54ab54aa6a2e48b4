//! Live fan-out of committed timeline events to WatchJob streams. Events are
//! published after their commit; watchers fill any gap from the store.
//! Watchers of every job (the console's live pages) get each changed job
//! instead, from one channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::records::{EventRecord, JobRecord};

const CHANNEL_CAPACITY: usize = 256;
/// Changed jobs a watcher of every job may fall behind by before it lags.
const ALL_JOBS_CAPACITY: usize = 1024;

pub struct Hub {
    channels: Mutex<HashMap<String, broadcast::Sender<EventRecord>>>,
    all_jobs: broadcast::Sender<Arc<JobRecord>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            channels: Mutex::default(),
            all_jobs: broadcast::channel(ALL_JOBS_CAPACITY).0,
        }
    }
}

impl Hub {
    /// Every job as committed from now on, once per commit with events.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<JobRecord>> {
        self.all_jobs.subscribe()
    }

    /// Tells the watchers of every job that `job` changed (copied only when
    /// someone watches).
    pub fn publish_job(&self, job: &JobRecord) {
        if self.all_jobs.receiver_count() > 0 {
            let _ = self.all_jobs.send(Arc::new(job.clone()));
        }
    }

    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<EventRecord> {
        let mut channels = self.channels.lock().expect("hub lock");
        channels
            .entry(job_id.to_string())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Drops a watcher's subscription, and the job's channel with its last one.
    pub fn unsubscribe(&self, job_id: &str, rx: broadcast::Receiver<EventRecord>) {
        drop(rx);
        let mut channels = self.channels.lock().expect("hub lock");
        if channels
            .get(job_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(job_id);
        }
    }

    pub fn publish(&self, job_id: &str, events: &[EventRecord]) {
        if events.is_empty() {
            return;
        }
        let mut channels = self.channels.lock().expect("hub lock");
        if let Some(tx) = channels.get(job_id) {
            for e in events {
                let _ = tx.send(e.clone());
            }
            if tx.receiver_count() == 0 || events.iter().any(|e| e.last) {
                channels.remove(job_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_go_with_their_last_watcher() {
        let hub = Hub::default();
        let a = hub.subscribe("j");
        let b = hub.subscribe("j");
        hub.unsubscribe("j", a);
        assert!(hub.channels.lock().unwrap().contains_key("j"));
        hub.unsubscribe("j", b);
        assert!(hub.channels.lock().unwrap().is_empty());
    }
}

//! Agents that stop sending heartbeats: after `agent_lost_after` without one,
//! an instance's agent is taken as lost. A deployed job's lost instance is
//! replaced (see `replace`); otherwise a lost primary cancels its job (the
//! reason says so) and a lost cooling instance is stopped. Idle pool agents
//! that go silent leave the pool. Everything goes through the ordinary
//! transition path.

use std::time::{Duration, Instant};

use aibro_proto::v1::Heartbeat;

use super::Control;

/// What an instance's agent last said about itself, and when.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    /// The same moment on the clock, for users.
    pub at_ms: u64,
    /// The last heartbeat's load, workers and GPU memory (default until one came).
    pub load: Heartbeat,
}

impl Control {
    /// Runs the liveness check until shutdown (a no-op without a limit).
    pub fn start_liveness(&self) {
        let Some(limit) = self.settings().agent_lost_after else {
            return;
        };
        let this = self.clone();
        let every = (limit / 4).max(Duration::from_millis(50));
        self.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                for instance_id in this.silent_agents(limit) {
                    // Each on its own: closing one may take a while.
                    let this2 = this.clone();
                    this.spawn(async move { this2.agent_lost(&instance_id, limit).await });
                }
                if let Some(pool) = this.inner.providers.pool() {
                    pool.drop_silent(limit);
                }
            }
        });
    }

    /// Instances whose agent has been silent for `limit`; each is reported once.
    fn silent_agents(&self, limit: Duration) -> Vec<String> {
        let mut heartbeats = self.inner.heartbeats.lock().expect("heartbeats lock");
        let silent: Vec<String> = heartbeats
            .iter()
            .filter(|(_, seen)| seen.at.elapsed() >= limit)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &silent {
            heartbeats.remove(id);
        }
        silent
    }

    /// Forgets an instance's heartbeats (it closed, or its agent ended on purpose).
    pub(crate) fn forget_heartbeats(&self, instance_id: &str) {
        self.inner
            .heartbeats
            .lock()
            .expect("heartbeats lock")
            .remove(instance_id);
    }

    /// The instance's agent was heard from (any call); `heartbeat` adds its load.
    pub(crate) fn last_seen(&self, instance_id: &str, heartbeat: Option<&Heartbeat>) {
        let mut heartbeats = self.inner.heartbeats.lock().expect("heartbeats lock");
        let seen = heartbeats.entry(instance_id.to_string()).or_insert(Seen {
            at: Instant::now(),
            at_ms: 0,
            load: Heartbeat::default(),
        });
        seen.at = Instant::now();
        seen.at_ms = crate::clock::now_ms();
        if let Some(h) = heartbeat {
            seen.load = h.clone();
        }
    }

    /// What the instance's agent last reported, while it is live.
    pub fn seen(&self, instance_id: &str) -> Option<Seen> {
        self.inner
            .heartbeats
            .lock()
            .expect("heartbeats lock")
            .get(instance_id)
            .cloned()
    }

    #[tracing::instrument(skip(self, limit))]
    async fn agent_lost(&self, instance_id: &str, limit: Duration) {
        let Ok(Some(inst)) = self.store().instance(instance_id) else {
            return;
        };
        if inst.state.is_closed() || inst.state.status == crate::state::InstanceStatus::Closing {
            return;
        }
        let reason = format!(
            "the agent of instance {instance_id} sent no heartbeat for {:.1}s; it is taken as lost",
            limit.as_secs_f64()
        );
        tracing::warn!("{reason}");
        self.lost(&inst, reason).await;
    }
}

//! Agents that stop sending heartbeats: after `agent_lost_after` without one,
//! an instance's agent is taken as lost. A lost primary cancels its job (the
//! reason says so); a lost cooling instance is stopped and the standby serves.
//! Everything goes through the ordinary transition path.

use std::time::{Duration, Instant};

use crate::state::InstanceEvent;

use super::Control;

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
                    this.agent_lost(&instance_id, limit).await;
                }
            }
        });
    }

    /// Instances whose agent has been silent for `limit`; each is reported once.
    fn silent_agents(&self, limit: Duration) -> Vec<String> {
        let mut heartbeats = self.inner.heartbeats.lock().expect("heartbeats lock");
        let silent: Vec<String> = heartbeats
            .iter()
            .filter(|(_, seen)| seen.elapsed() >= limit)
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

    pub(crate) fn last_seen(&self, instance_id: &str) {
        self.inner
            .heartbeats
            .lock()
            .expect("heartbeats lock")
            .insert(instance_id.to_string(), Instant::now());
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
        if inst.role.is_primary() {
            self.cancel(&inst.job_id, reason).await;
        } else {
            self.close_when_allowed(instance_id, InstanceEvent::Stop)
                .await;
        }
    }
}

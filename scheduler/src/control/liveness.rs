//! Agents that stop sending heartbeats: after `agent_lost_after` without one,
//! an instance's agent is taken as lost. A deployed job's lost instance is
//! replaced (see `replace`); otherwise a lost primary cancels its job (the
//! reason says so) and a lost cooling instance is stopped. Idle pool agents
//! that go silent leave the pool. Everything goes through the ordinary
//! transition path.

use std::time::Duration;

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
                for instance_id in this.links().silent(limit) {
                    // Each on its own: closing one may take a while.
                    let this2 = this.clone();
                    this.spawn(async move { this2.agent_lost(&instance_id, limit).await });
                }
                if let Some(pool) = this.machines().pool() {
                    pool.drop_silent(limit);
                }
            }
        });
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

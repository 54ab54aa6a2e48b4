//! The cooling instance's lifecycle, one supervisor task per deployed job
//! that has one: EXECUTING while requests reach it, COOLING once idle, stopped
//! (disk kept) after `cool_down_period_s` without a request, and started again
//! when a request finds it missing (the standby serves meanwhile). Status
//! changes come only from here, never from the request path.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::records::{InstanceRecord, JobRecord};
use crate::router::Route;
use crate::state::{InstanceEvent, InstanceState, Role};

use super::Control;

impl Control {
    pub(crate) fn supervise_cooling(&self, job: JobRecord, route: Arc<Route>) {
        let this = self.clone();
        self.spawn(async move {
            tokio::select! {
                _ = route.closed.cancelled() => {}
                _ = this.cooling_loop(&job, &route) => {}
            }
        });
    }

    fn cooling_instance(&self, job_id: &str) -> Option<InstanceRecord> {
        let job = self.store().job(job_id).ok()??;
        let instances = self.store().instances_of(&job).ok()?;
        // The newest one not on its way out (a replacement may be launching).
        instances.into_iter().rev().find(|i| {
            i.role == Role::Cooling
                && !matches!(
                    i.state,
                    InstanceState::TERMINATING | InstanceState::TERMINATED
                )
        })
    }

    async fn cooling_loop(&self, job: &JobRecord, route: &Route) {
        let cool_down = Duration::from_secs(job.cool_down_period_s.into());
        let idle_after = self.settings().cooling_idle.min(cool_down / 2);
        let tick = self.settings().lifecycle_tick;
        loop {
            let Some(inst) = self.cooling_instance(&job.id) else {
                tokio::time::sleep(tick).await;
                continue;
            };
            if inst.state == InstanceState::STOPPED {
                route.wake_requested().await;
                self.wake(job, &inst).await;
                continue;
            }
            let backend = route.backend(&inst.id).filter(|_| inst.state.is_serving());
            let Some(backend) = backend else {
                // Launching, closing, or not routed yet.
                tokio::time::sleep(tick).await;
                continue;
            };
            route.clear_wake();
            let idle = Duration::from_millis(now_ms().saturating_sub(backend.last_request_ms()));
            if idle >= cool_down {
                self.stop_instance(&inst).await;
                continue;
            }
            let (want, event) = if idle >= idle_after {
                (InstanceState::COOLING, InstanceEvent::Idle)
            } else {
                (InstanceState::EXECUTING, InstanceEvent::Busy)
            };
            if inst.state != want {
                let _ = self.move_instance(&inst, event, None).await;
            }
            let next = if idle < idle_after {
                idle_after - idle
            } else {
                cool_down - idle
            };
            tokio::time::sleep(next.min(tick)).await;
        }
    }

    /// Starts a stopped cooling instance on its kept disk.
    #[tracing::instrument(skip_all, fields(instance_id = %inst.id))]
    async fn wake(&self, job: &JobRecord, inst: &InstanceRecord) {
        let Some(machine) = self.catalog().resolve(&inst.machine_id) else {
            return;
        };
        let Ok(provider) = self.machines().provider(&machine) else {
            return;
        };
        let wait = Duration::from_secs(job.wait_request_s.into());
        if let Err(reason) = self.machines().acquire(&inst.id, &machine, wait).await {
            // The standby keeps serving; the next request asks again.
            return tracing::warn!("cannot wake the cooling instance: {reason}");
        }
        let lock = self.lock_instance(&inst.id).await;
        let woken = self
            .move_instance(inst, InstanceEvent::Start, Some("instance woken"))
            .await;
        if woken.is_err() {
            if !provider.stopped_holds_machine() {
                self.machines().capacity().release(&inst.id);
            }
            return;
        }
        crate::crash::point("wake.marked");
        let started = provider.start(&inst.id, &machine).await;
        drop(lock);
        match started {
            Ok(()) => self.expect_agent(inst.id.clone()),
            Err(e) => {
                tracing::error!(error = %e, "the provider could not start the cooling instance");
                if let Ok(Some(inst)) = self.store().instance(&inst.id) {
                    self.stop_instance(&inst).await;
                }
            }
        }
    }
}

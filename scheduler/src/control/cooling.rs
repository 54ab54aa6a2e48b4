//! The cooling instance's lifecycle, one supervisor task per deployed job
//! that has one: EXECUTING while requests reach it, COOLING once idle, stopped
//! (disk kept) after `cool_down_period_s` without a request, and started again
//! when a request finds it missing (the standby serves meanwhile). Status
//! changes come only from here, never from the request path.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_ms;
use crate::records::{InstanceRecord, JobRecord, TimelineNote};
use crate::router::Route;
use crate::state::{InstanceEvent, InstanceState, Role};

use super::Control;

/// The pause after a failed wake, in lifecycle ticks, doubled after each
/// failure in a row up to a limit.
const WAKE_BACKOFF_TICKS: u32 = 5;
const WAKE_BACKOFF_MAX: Duration = Duration::from_secs(300);

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
        let first_backoff = tick * WAKE_BACKOFF_TICKS;
        let mut backoff = first_backoff;
        loop {
            let Some(inst) = self.cooling_instance(&job.id) else {
                tokio::time::sleep(tick).await;
                continue;
            };
            if inst.state == InstanceState::STOPPED {
                route.wake_requested().await;
                match self.wake(job, &inst).await {
                    Ok(()) => backoff = first_backoff,
                    Err(why) => {
                        self.wake_failed(&inst, &why, backoff).await;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(WAKE_BACKOFF_MAX);
                    }
                }
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

    /// Starts a stopped cooling instance on its kept disk. When it cannot
    /// be (no machine, or the provider refused), it stays stopped and the
    /// standby serves on; the reason is returned.
    #[tracing::instrument(skip_all, fields(instance_id = %inst.id))]
    async fn wake(&self, job: &JobRecord, inst: &InstanceRecord) -> Result<(), String> {
        let machine = (self.catalog().resolve(&inst.machine_id))
            .ok_or_else(|| format!("machine `{}` left the catalog", inst.machine_id))?;
        let provider = self
            .machines()
            .provider(&machine)
            .map_err(|e| e.to_string())?;
        let wait = Duration::from_secs(job.wait_request_s.into());
        self.machines()
            .acquire(&inst.id, &machine, wait)
            .await
            .map_err(|e| e.to_string())?;
        let lock = self.lock_instance(&inst.id).await;
        let woken = self
            .move_instance(inst, InstanceEvent::Start, Some("instance woken"))
            .await;
        if let Err(e) = woken {
            if !provider.stopped_holds_machine() {
                self.machines().capacity().release(&inst.id);
            }
            return Err(e.to_string());
        }
        crate::crash::point("wake.marked");
        let started = provider.start(&inst.id, &machine).await;
        drop(lock);
        match started {
            Ok(()) => {
                self.expect_agent(inst.id.clone());
                Ok(())
            }
            Err(e) => {
                if let Ok(Some(inst)) = self.store().instance(&inst.id) {
                    self.stop_instance(&inst).await;
                }
                Err(format!("the provider could not start it: {e}"))
            }
        }
    }

    /// Says in the job's timeline why the cooling instance did not wake, and
    /// when the next request may try again.
    async fn wake_failed(&self, inst: &InstanceRecord, why: &str, retry_in: Duration) {
        tracing::warn!(instance_id = %inst.id, "cannot wake the cooling instance: {why}");
        let note = TimelineNote {
            message: format!(
                "{why}; the standby serves, and a request after {}s wakes it again",
                retry_in.as_secs()
            ),
            ..TimelineNote::phase(&inst.id, "wake failed")
        };
        let _ = self
            .store()
            .update(&inst.job_id, |_, _| Ok(vec![note.clone()]))
            .await;
    }
}

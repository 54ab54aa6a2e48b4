//! Replacing an instance while its job serves: a spot machine interrupted
//! (see `spot`), an agent that went silent, or an on-demand stand-in swapped
//! back to spot. The replacement is recorded beside the old instance and
//! launched (spot when a spot request is fulfilled, on-demand otherwise);
//! when it serves, traffic moves to it and the old one drains and is
//! terminated (see `agents::retire_replaced`). An interrupted instance is
//! terminated when its notice ends at the latest, a lost one at once. A job
//! left without a live standby is canceled with the reason.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::state::{self, InstanceEvent, InstanceState, InstanceStatus, JobStatus, Role};
use crate::store::{InstanceRecord, Mark, StoreError};

use super::{instance_mut, new_id, Control};

/// How a replacement gets a machine of its type within capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Waits up to the job's `wait_request_s` (a lost instance frees its own
    /// when it is retired).
    Wait,
    /// Takes the old instance's when none is free: that one is going away
    /// (a spot interruption).
    Borrow,
    /// Only a machine free now; otherwise nothing is replaced (a swap back to
    /// spot is tried again later).
    FreeNow,
}

impl Control {
    /// An agent went silent: a deployed job gets a replacement for the
    /// instance's role and the instance is terminated; a replacement still
    /// launching is replaced again; otherwise a primary cancels its job and a
    /// cooling instance is stopped.
    pub(crate) async fn lost(&self, inst: &InstanceRecord, reason: String) {
        if inst.state == InstanceState::LAUNCHING
            && self.replacement_failed(inst, &reason, true).await
        {
            return;
        }
        let job = self.store().job(&inst.job_id).ok().flatten();
        let deployed = job
            .as_ref()
            .is_some_and(|j| j.state.status == JobStatus::Deployed);
        if let (true, Some(job)) = (deployed && inst.role != Role::Trainer, job) {
            // No more requests to it while it is replaced.
            self.router()
                .remove_backend(&job.owner, &job.model_name, &inst.id);
            self.replace(inst, "agent lost", None, Slot::Wait).await;
            self.retire(&inst.id, &reason).await;
        } else if inst.role.is_primary() {
            self.cancel(&inst.job_id, reason).await;
        } else {
            self.close_when_allowed(&inst.id, InstanceEvent::Stop).await;
        }
    }

    /// Records a replacement for `old`'s role (on `machine`, else the job's
    /// machine id on the market a request finds now) and launches it in the
    /// background; false when none was recorded (already replaced, job over,
    /// no machine free for [`Slot::FreeNow`]).
    /// (Boxed: a failed replacement may ask for another one.)
    pub(crate) fn replace<'a>(
        &'a self,
        old: &'a InstanceRecord,
        why: &'a str,
        machine: Option<crate::catalog::Machine>,
        slot: Slot,
    ) -> BoxFuture<'a, bool> {
        self.replace_inner(old, why, machine, slot).boxed()
    }

    async fn replace_inner(
        &self,
        old: &InstanceRecord,
        why: &str,
        machine: Option<crate::catalog::Machine>,
        slot: Slot,
    ) -> bool {
        let Ok(Some(job)) = self.store().job(&old.job_id) else {
            return false;
        };
        let configured = match old.role {
            Role::Standby => Some(&job.standby),
            Role::Cooling => job.cooling.as_ref(),
            Role::Trainer => None,
        };
        let Some(od) = configured.and_then(|id| self.catalog().resolve(id)) else {
            return false;
        };
        let machine = machine.unwrap_or_else(|| self.market_machine(&od));
        let new_id = new_id("inst");
        let mut borrowed = false;
        if slot != Slot::Wait {
            let now = tokio::time::Instant::now();
            let free = || self.live_capacity(&machine.kind);
            let had = self
                .capacity()
                .acquire(&machine.kind.name, free, &new_id, now)
                .await;
            borrowed = !had && slot == Slot::Borrow && self.capacity().transfer(&old.id, &new_id);
            if !had && !borrowed {
                return false;
            }
        }
        let recorded = self
            .apply(&job.id, |job, insts| {
                if job.state.is_ended() {
                    return Err(StoreError::Stale("the job ended".into()));
                }
                let old = instance_mut(insts, &old.id)?;
                if old.replaced_by.is_some() || old.state.is_closed() {
                    return Err(StoreError::Stale(format!("{} is already replaced", old.id)));
                }
                old.replaced_by = Some(new_id.clone());
                let mut new = InstanceRecord::launching(
                    &new_id,
                    &job.id,
                    old.role,
                    &machine.id,
                    crate::store::now_ms(),
                );
                new.replaces = Some(old.id.clone());
                let mut mark = Mark::phase(&new_id, "instance requested");
                mark.message = format!("{}, replaces {} ({why})", machine.describe(), old.id);
                insts.push(new);
                job.instances.push(new_id.clone());
                Ok(vec![mark])
            })
            .await;
        let new = recorded
            .ok()
            .and_then(|c| c.instances.into_iter().find(|i| i.id == new_id));
        let Some(new) = new else {
            if borrowed {
                self.capacity().transfer(&new_id, &old.id);
            } else {
                self.capacity().release(&new_id);
            }
            return false;
        };
        let wait = Duration::from_secs(job.wait_request_s.into());
        let this = self.clone();
        self.spawn(async move {
            if slot == Slot::Wait {
                if let Err(reason) = this.acquire(&new.id, &machine, wait).await {
                    this.instance_failed(&new, reason).await;
                    return;
                }
            }
            let _lock = this.lock_instance(&new.id).await;
            // Closed while it waited for a machine (the job ended): none is started.
            let wanted = this.store().instance(&new.id).ok().flatten();
            if wanted.is_none_or(|i| i.state != InstanceState::LAUNCHING) {
                this.capacity().release(&new.id);
                return;
            }
            match this.provision(&new.id, &machine).await {
                Ok(()) => this.watch_connect(new.id.clone()),
                Err(reason) => {
                    drop(_lock);
                    this.instance_failed(&new, reason).await;
                }
            }
        });
        true
    }

    /// Terminates a replaced (or interrupted, or lost, or failed) instance if
    /// it is still live. Should that leave its deployed job without a live
    /// standby, the job is canceled instead.
    pub(crate) async fn retire(&self, instance_id: &str, reason: &str) {
        if self.mark_retired(instance_id, reason).await {
            self.close(instance_id).await;
        }
    }

    /// Records the instance TERMINATING (see [`Control::retire`]); true when
    /// it is to be closed now.
    async fn mark_retired(&self, instance_id: &str, reason: &str) -> bool {
        let Ok(Some(inst)) = self.store().instance(instance_id) else {
            return false;
        };
        let retired = self
            .apply(&inst.job_id, |job, insts| {
                if job.state.is_ended() {
                    return Err(StoreError::Stale("the job ended".into()));
                }
                let inst = instance_mut(insts, instance_id)?;
                if matches!(
                    inst.state.status,
                    InstanceStatus::Closing | InstanceStatus::Closed
                ) {
                    return Err(StoreError::Stale("already closing".into()));
                }
                inst.state = state::next_instance(inst.state, InstanceEvent::Terminate)?;
                if inst.reason.is_empty() {
                    inst.reason = reason.to_string();
                }
                let mut mark = Mark::phase(instance_id, "instance retired");
                mark.message = reason.to_string();
                Ok(vec![mark])
            })
            .await;
        match retired {
            Ok(_) => true,
            Err(StoreError::Stale(_)) => false,
            Err(e) => {
                tracing::warn!(instance_id, error = %e, "retiring it would leave no standby");
                let why = format!("{reason}, and no replacement could take over ({instance_id})");
                self.cancel(&inst.job_id, why).await;
                false
            }
        }
    }

    /// A replacement failed (its agent failed, never connected, was lost or
    /// interrupted): it is terminated, and when `retry` and its predecessor
    /// is going away itself (interrupted), another one is launched first, on
    /// the failed one's machine slot. False when `inst` is not (or no longer)
    /// a replacement in progress: its predecessor must still be live and
    /// waiting for it.
    pub(crate) async fn replacement_failed(
        &self,
        inst: &InstanceRecord,
        reason: &str,
        retry: bool,
    ) -> bool {
        let Some(old_id) = inst.replaces.clone() else {
            return false;
        };
        let released = self
            .apply(&inst.job_id, |_, insts| {
                let old = instance_mut(insts, &old_id)?;
                let waiting = old.replaced_by.as_deref() == Some(inst.id.as_str())
                    && matches!(
                        old.state.status,
                        InstanceStatus::Launching
                            | InstanceStatus::Executing
                            | InstanceStatus::Cooling
                    );
                if !waiting {
                    return Err(StoreError::Stale(format!("{old_id} does not wait for it")));
                }
                old.replaced_by = None;
                Ok(vec![])
            })
            .await;
        let Ok(committed) = released else {
            return false;
        };
        tracing::warn!(instance_id = %inst.id, "replacement failed: {reason}");
        let close = self
            .mark_retired(&inst.id, &format!("replacement failed: {reason}"))
            .await;
        let old = committed.instances.iter().find(|i| i.id == old_id);
        if let Some(old) = old.filter(|o| retry && !o.reason.is_empty()) {
            // Its machine slot goes back to the predecessor, which lends it on.
            self.capacity().transfer(&inst.id, &old.id);
            self.replace(old, "the replacement failed", None, Slot::Borrow)
                .await;
        }
        if close {
            self.close(&inst.id).await;
        }
        true
    }

    /// An instance's agent failed, refused its job or got no machine: a
    /// replacement is dropped (its predecessor serves on); a deployed job's
    /// standby is retired (the job is canceled when no other standby is
    /// left), another job's primary cancels it; a cooling instance is
    /// terminated once its job allows. Closing instances are left alone.
    pub(crate) async fn instance_failed(&self, inst: &InstanceRecord, reason: String) {
        let Ok(Some(inst)) = self.store().instance(&inst.id) else {
            return;
        };
        if matches!(
            inst.state.status,
            InstanceStatus::Closing | InstanceStatus::Closed
        ) || self.replacement_failed(&inst, &reason, false).await
        {
            return;
        }
        let deployed = self
            .store()
            .job(&inst.job_id)
            .ok()
            .flatten()
            .is_some_and(|j| j.state.status == JobStatus::Deployed);
        if inst.role.is_primary() && deployed {
            self.retire(&inst.id, &reason).await;
        } else if inst.role.is_primary() {
            self.cancel(&inst.job_id, reason).await;
        } else {
            tracing::warn!(instance_id = %inst.id, "cooling instance failed: {reason}");
            self.close_when_allowed(&inst.id, InstanceEvent::Terminate)
                .await;
        }
    }
}

//! When an instance fails or goes away: an agent that never connected, went
//! silent or failed, a spot machine interrupted (see `spot`), an on-demand
//! stand-in swapped back to spot. While its job serves, a replacement is
//! recorded beside the old instance and launched (spot when a spot request
//! is fulfilled, on-demand otherwise); when it serves, traffic moves to it
//! and the old one drains and is terminated (see `reports`). An interrupted
//! instance is terminated when its notice ends at the latest, a lost one at
//! once. Otherwise a failed primary cancels its job with the reason and a
//! failed cooling instance is closed.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::catalog::Machine;
use crate::records::{InstanceRecord, JobRecord, TimelineNote};
use crate::state::{self, InstanceEvent, InstanceState, InstanceStatus, JobStatus, Role};
use crate::store::StoreError;

use super::{instance_mut, new_id, Control};

/// How a replacement gets a machine of its type within capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MachineSlot {
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

/// Why no replacement was recorded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotReplaced {
    #[error("its job is gone")]
    JobGone,
    #[error("its role has no machine id to replace it with")]
    NoMachineId,
    #[error("no machine of its type is free now")]
    NoFreeMachine,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of an instance that failed, if it was a replacement.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FailedReplacement {
    /// It was one, and is dropped: its predecessor serves on.
    Dropped,
    /// It is not (or no longer) a replacement in progress.
    NotOne,
}

/// What retiring an instance came to.
#[derive(Debug, PartialEq, Eq)]
enum Retirement {
    /// Recorded TERMINATING: close it now.
    Close,
    /// Already closing, or its job ended: nothing to do.
    Nothing,
    /// It was its deployed job's last standby: the job is canceled instead.
    JobCanceled,
}

impl Control {
    /// Gives up on an instance whose agent has not registered in time: a
    /// replacement is dropped, a primary cancels its job, a cooling instance
    /// is stopped.
    pub(crate) fn expect_agent(&self, instance_id: String) {
        let this = self.clone();
        let timeout = self.settings().connect_timeout;
        self.spawn(async move {
            tokio::time::sleep(timeout).await;
            let Ok(Some(inst)) = this.store().instance(&instance_id) else {
                return;
            };
            if inst.state != InstanceState::LAUNCHING || !inst.agent_address.is_empty() {
                return;
            }
            let reason = format!(
                "the agent of instance {instance_id} did not connect within {}s",
                timeout.as_secs()
            );
            if this.replacement_failed(&inst, &reason, false).await == FailedReplacement::Dropped {
                tracing::warn!(instance_id, "{reason}");
            } else if inst.role.is_primary() {
                this.cancel(&inst.job_id, reason).await;
            } else {
                tracing::warn!(instance_id, "{reason}; stopping it");
                this.close_when_allowed(&inst.id, InstanceEvent::Stop).await;
            }
        });
    }

    /// An agent went silent: a deployed job gets a replacement for the
    /// instance's role and the instance is terminated; a replacement still
    /// launching is replaced again; otherwise a primary cancels its job and a
    /// cooling instance is stopped.
    pub(crate) async fn lost(&self, inst: &InstanceRecord, reason: String) {
        if inst.state == InstanceState::LAUNCHING
            && self.replacement_failed(inst, &reason, true).await == FailedReplacement::Dropped
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
            self.replace_logged(inst, "agent lost", None, MachineSlot::Wait)
                .await;
            self.retire(&inst.id, &reason).await;
        } else if inst.role.is_primary() {
            self.cancel(&inst.job_id, reason).await;
        } else {
            self.close_when_allowed(&inst.id, InstanceEvent::Stop).await;
        }
    }

    /// [`Control::replace`], logging why when nothing was replaced.
    pub(crate) async fn replace_logged(
        &self,
        old: &InstanceRecord,
        why: &str,
        machine: Option<Machine>,
        slot: MachineSlot,
    ) {
        if let Err(e) = self.replace(old, why, machine, slot).await {
            tracing::info!(instance_id = %old.id, "not replaced ({why}): {e}");
        }
    }

    /// Records a replacement for `old`'s role (on `machine`, else the job's
    /// machine id on the market a request finds now) and launches it in the
    /// background. (Boxed: a failed replacement may ask for another one.)
    pub(crate) fn replace<'a>(
        &'a self,
        old: &'a InstanceRecord,
        why: &'a str,
        machine: Option<Machine>,
        slot: MachineSlot,
    ) -> BoxFuture<'a, Result<(), NotReplaced>> {
        async move {
            let job = self.store().job(&old.job_id)?.ok_or(NotReplaced::JobGone)?;
            let machine = match machine {
                Some(machine) => machine,
                None => self.replacement_machine(&job, old.role)?,
            };
            let new_id = new_id("inst");
            let borrowed = self.reserve_slot(slot, &machine, &old.id, &new_id).await?;
            let new = match self
                .record_replacement(&job, old, &new_id, &machine, why)
                .await
            {
                Ok(new) => new,
                Err(e) => {
                    self.give_slot_back(borrowed, &old.id, &new_id);
                    return Err(e.into());
                }
            };
            let wait = Duration::from_secs(job.wait_request_s.into());
            self.start_replacement(new, machine, slot, wait);
            Ok(())
        }
        .boxed()
    }

    /// The machine the job asks for the role, on the market a request finds now.
    fn replacement_machine(&self, job: &JobRecord, role: Role) -> Result<Machine, NotReplaced> {
        let configured = match role {
            Role::Standby => Some(&job.standby),
            Role::Cooling => job.cooling.as_ref(),
            Role::Trainer => None,
        };
        let on_demand = configured
            .and_then(|id| self.catalog().resolve(id))
            .ok_or(NotReplaced::NoMachineId)?;
        Ok(self.machines().market_machine(&on_demand))
    }

    /// Takes a machine for the replacement now, unless it is to wait for one;
    /// true when it borrowed the old instance's.
    async fn reserve_slot(
        &self,
        slot: MachineSlot,
        machine: &Machine,
        old_id: &str,
        new_id: &str,
    ) -> Result<bool, NotReplaced> {
        if slot == MachineSlot::Wait || self.machines().take_free(new_id, machine).await.is_ok() {
            return Ok(false);
        }
        if slot == MachineSlot::Borrow {
            // The old instance is going away: its machine is lent on.
            if self.machines().capacity().transfer(old_id, new_id).is_ok() {
                return Ok(true);
            }
        }
        Err(NotReplaced::NoFreeMachine)
    }

    fn give_slot_back(&self, borrowed: bool, old_id: &str, new_id: &str) {
        let capacity = self.machines().capacity();
        if borrowed {
            let _ = capacity.transfer(new_id, old_id);
        } else {
            capacity.release(new_id);
        }
    }

    /// Records the replacement LAUNCHING beside `old`, which waits for it.
    async fn record_replacement(
        &self,
        job: &JobRecord,
        old: &InstanceRecord,
        new_id: &str,
        machine: &Machine,
        why: &str,
    ) -> Result<InstanceRecord, StoreError> {
        let committed = self
            .store()
            .update(&job.id, |job, insts| {
                if job.state.is_ended() {
                    return Err(StoreError::Stale("the job ended".into()));
                }
                let old = instance_mut(insts, &old.id)?;
                if old.replaced_by.is_some() || old.state.is_closed() {
                    return Err(StoreError::Stale(format!("{} is already replaced", old.id)));
                }
                old.replaced_by = Some(new_id.to_string());
                let now = crate::clock::now_ms();
                let mut new =
                    InstanceRecord::launching(new_id, &job.id, old.role, &machine.id, now);
                new.replaces = Some(old.id.clone());
                let mut note = TimelineNote::phase(new_id, "instance requested");
                note.message = format!("{}, replaces {} ({why})", machine.describe(), old.id);
                insts.push(new);
                job.instances.push(new_id.to_string());
                Ok(vec![note])
            })
            .await?;
        committed
            .instances
            .into_iter()
            .find(|i| i.id == new_id)
            .ok_or_else(|| StoreError::Stale(format!("{new_id} was not recorded")))
    }

    /// Gets the replacement its machine (waiting for one with
    /// [`MachineSlot::Wait`]) and has the provider start it.
    fn start_replacement(
        &self,
        new: InstanceRecord,
        machine: Machine,
        slot: MachineSlot,
        wait: Duration,
    ) {
        let this = self.clone();
        self.spawn(async move {
            if slot == MachineSlot::Wait {
                if let Err(e) = this.machines().acquire(&new.id, &machine, wait).await {
                    return this.instance_failed(&new, e.to_string()).await;
                }
            }
            let lock = this.lock_instance(&new.id).await;
            // Closed while it waited for a machine (the job ended): none is started.
            let wanted = this.store().instance(&new.id).ok().flatten();
            if wanted.is_none_or(|i| i.state != InstanceState::LAUNCHING) {
                return this.machines().capacity().release(&new.id);
            }
            let launch_for = crate::provider::LaunchFor {
                job_id: &new.job_id,
                role: new.role,
            };
            match this
                .machines()
                .provision(&new.id, &machine, launch_for)
                .await
            {
                Ok(()) => this.expect_agent(new.id.clone()),
                Err(e) => {
                    drop(lock);
                    this.instance_failed(&new, e.to_string()).await;
                }
            }
        });
    }

    /// Terminates a replaced (or interrupted, or lost, or failed) instance if
    /// it is still live. Should that leave its deployed job without a live
    /// standby, the job is canceled instead.
    pub(crate) async fn retire(&self, instance_id: &str, reason: &str) {
        if self.mark_retired(instance_id, reason).await == Retirement::Close {
            self.close(instance_id).await;
        }
    }

    /// Records the instance TERMINATING (see [`Control::retire`]).
    async fn mark_retired(&self, instance_id: &str, reason: &str) -> Retirement {
        let Ok(Some(inst)) = self.store().instance(instance_id) else {
            return Retirement::Nothing;
        };
        let retired = self
            .store()
            .update(&inst.job_id, |job, insts| {
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
                let mut note = TimelineNote::phase(instance_id, "instance retired");
                note.message = reason.to_string();
                Ok(vec![note])
            })
            .await;
        match retired {
            Ok(_) => Retirement::Close,
            Err(StoreError::Stale(_)) => Retirement::Nothing,
            Err(e) => {
                tracing::warn!(instance_id, error = %e, "retiring it would leave no standby");
                let why = format!("{reason}, and no replacement could take over ({instance_id})");
                self.cancel(&inst.job_id, why).await;
                Retirement::JobCanceled
            }
        }
    }

    /// A replacement failed (its agent failed, never connected, was lost or
    /// interrupted): it is terminated, and when `retry` and its predecessor
    /// is going away itself (interrupted), another one is launched first, on
    /// the failed one's machine slot. A replacement in progress has a
    /// predecessor that is still live and waiting for it.
    pub(crate) async fn replacement_failed(
        &self,
        inst: &InstanceRecord,
        reason: &str,
        retry: bool,
    ) -> FailedReplacement {
        let Some(old_id) = inst.replaces.clone() else {
            return FailedReplacement::NotOne;
        };
        let released = self
            .store()
            .update(&inst.job_id, |_, insts| {
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
            return FailedReplacement::NotOne;
        };
        tracing::warn!(instance_id = %inst.id, "replacement failed: {reason}");
        let retirement = self
            .mark_retired(&inst.id, &format!("replacement failed: {reason}"))
            .await;
        let old = committed.instances.iter().find(|i| i.id == old_id);
        if let Some(old) = old.filter(|o| retry && !o.reason.is_empty()) {
            // Its machine slot goes back to the predecessor, which lends it on.
            let _ = self.machines().capacity().transfer(&inst.id, &old.id);
            self.replace_logged(old, "the replacement failed", None, MachineSlot::Borrow)
                .await;
        }
        if retirement == Retirement::Close {
            self.close(&inst.id).await;
        }
        FailedReplacement::Dropped
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
        ) || self.replacement_failed(&inst, &reason, false).await == FailedReplacement::Dropped
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

//! Replacing an instance while its job serves: a spot machine the provider
//! interrupts, an agent that went silent, or an on-demand stand-in swapped
//! back to spot once spot capacity returns. The replacement launches beside
//! the old instance (spot when a spot request is fulfilled, on-demand
//! otherwise); when it serves, traffic moves to it and the old one drains and
//! is terminated (see `agents::retire_replaced`). An interrupted instance is
//! terminated when its notice ends at the latest, a lost one at once. A job
//! left without a live standby is canceled with the reason.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::catalog::Market;
use crate::error::{Error, Result};
use crate::provider::Interruption;
use crate::state::{self, InstanceEvent, InstanceState, InstanceStatus, JobKind, JobStatus, Role};
use crate::store::{InstanceRecord, Mark, StoreError};

use super::{instance_mut, new_id, Control};

impl Control {
    /// A spot request for a spot machine id (on-demand ids always pass).
    pub(crate) fn spot_request(&self, machine: &crate::catalog::Machine) -> Result<(), String> {
        if machine.market == Market::OnDemand {
            return Ok(());
        }
        let provider = self.machine_provider(machine).map_err(|e| e.to_string())?;
        if provider.spot_available(&machine.kind) {
            Ok(())
        } else {
            Err(format!(
                "the spot request for `{}` was not fulfilled (spot availability {:.0}%)",
                machine.id,
                100.0 * provider.spot_availability(&machine.kind)
            ))
        }
    }

    /// Handles the providers' interruption notices until shutdown.
    pub fn start_interruptions(&self, mut notices: mpsc::UnboundedReceiver<Interruption>) {
        let this = self.clone();
        self.spawn(async move {
            while let Some(notice) = notices.recv().await {
                let this2 = this.clone();
                this.spawn(async move { this2.interrupted(notice).await });
            }
        });
    }

    /// Every `spot_check`, looks for spot capacity for serving on-demand
    /// instances of deploys, and swaps them back to spot when there is some.
    pub fn start_spot_return(&self) {
        if !self.settings().use_spot {
            return;
        }
        let this = self.clone();
        self.spawn(async move {
            let mut tick = tokio::time::interval(this.settings().spot_check);
            tick.tick().await;
            loop {
                tick.tick().await;
                for inst in this.on_demand_stand_ins() {
                    let Some(od) = this.catalog().resolve(&inst.machine_id) else {
                        continue;
                    };
                    if od.kind.spot_price >= od.kind.on_demand_price {
                        continue;
                    }
                    let available = this
                        .machine_provider(&od)
                        .is_ok_and(|p| p.spot_available(&od.kind));
                    if available {
                        let this2 = this.clone();
                        this.spawn(async move {
                            let spot = od.on_market(Market::Spot);
                            this2.replace(&inst, "back to spot", Some(spot)).await;
                        });
                    }
                }
            }
        });
    }

    /// EXECUTING on-demand instances of deployed jobs, not being replaced.
    fn on_demand_stand_ins(&self) -> Vec<InstanceRecord> {
        let Ok(jobs) = self.store().all_jobs() else {
            return vec![];
        };
        jobs.iter()
            .filter(|j| j.kind == JobKind::Inference && j.state.status == JobStatus::Deployed)
            .filter_map(|j| self.store().instances_of(j).ok())
            .flatten()
            .filter(|i| i.state.status == InstanceStatus::Executing && i.replaced_by.is_none())
            .filter(|i| {
                self.catalog()
                    .resolve(&i.machine_id)
                    .is_some_and(|m| m.market == Market::OnDemand)
            })
            .collect()
    }

    /// Admin: the instance's provider interrupts it now, as its spot market would.
    pub fn interrupt(&self, instance_id: &str, notice: Option<Duration>) -> Result<()> {
        let inst = self.live_instance(instance_id)?;
        let machine = self.catalog().resolve(&inst.machine_id).ok_or_else(|| {
            Error::FailedPrecondition(format!("machine `{}` left the catalog", inst.machine_id))
        })?;
        self.machine_provider(&machine)?
            .interrupt(instance_id, notice)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))
    }

    /// Admin: sets a machine type's emulated spot availability.
    pub fn set_spot_availability(&self, machine_type: &str, availability: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&availability) {
            return Err(Error::InvalidArgument(format!(
                "availability {availability} is not a probability (0.0 to 1.0)"
            )));
        }
        let kind = self
            .catalog()
            .types()
            .find(|t| t.name == machine_type)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown machine type `{machine_type}` (a type, without `.od`)"
                ))
            })?;
        let provider = self.inner.providers.get(&kind.provider).ok_or_else(|| {
            Error::FailedPrecondition(format!("provider `{}` is not running", kind.provider))
        })?;
        provider
            .set_spot_availability(machine_type, availability)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))
    }

    /// A spot interruption notice: replace the instance while it still
    /// serves, and terminate it when the notice ends.
    #[tracing::instrument(skip(self))]
    async fn interrupted(&self, notice: Interruption) {
        let id = &notice.instance_id;
        let deadline = tokio::time::Instant::now() + notice.notice;
        let Ok(Some(inst)) = self.store().instance(id) else {
            return;
        };
        let reason = "spot interruption";
        let marked = self
            .apply(&inst.job_id, |_, insts| {
                let inst = instance_mut(insts, id)?;
                inst.reason = reason.to_string();
                let mut mark = Mark::phase(id, "spot interruption notice");
                mark.message = format!("reclaimed in {:.1}s", notice.notice.as_secs_f64());
                Ok(vec![mark])
            })
            .await;
        let Ok(committed) = marked else { return };
        let job = committed.job;
        if job.state.is_ended() {
            return;
        }
        let serving = job.state.status == JobStatus::Deployed && inst.state.is_serving();
        if serving {
            self.replace(&inst, reason, None).await;
            tokio::time::sleep_until(deadline).await;
            self.retire(id, "spot instance reclaimed").await;
        } else if inst.role.is_primary() {
            let why = format!("its spot instance {id} was interrupted ({reason})");
            self.cancel(&job.id, why).await;
        } else {
            self.close_when_allowed(id, InstanceEvent::Terminate).await;
        }
    }

    /// An agent went silent: a deployed job gets a replacement for the
    /// instance's role and the instance is terminated; otherwise a primary
    /// cancels its job and a cooling instance is stopped.
    pub(crate) async fn lost(&self, inst: &InstanceRecord, reason: String) {
        if inst.state.status == InstanceStatus::Launching
            && self.replacement_failed(inst, &reason).await
        {
            return;
        }
        let deployed = self
            .store()
            .job(&inst.job_id)
            .ok()
            .flatten()
            .is_some_and(|j| j.state.status == JobStatus::Deployed);
        if deployed && inst.role != Role::Trainer {
            if let Ok(Some(job)) = self.store().job(&inst.job_id) {
                // No more requests to it while it is replaced.
                self.router()
                    .remove_backend(&job.owner, &job.model_name, &inst.id);
            }
            self.replace(inst, "agent lost", None).await;
            self.retire(&inst.id, &reason).await;
        } else if inst.role.is_primary() {
            self.cancel(&inst.job_id, reason).await;
        } else {
            self.close_when_allowed(&inst.id, InstanceEvent::Stop).await;
        }
    }

    /// Records a replacement for `old`'s role (on `machine`, else the job's
    /// machine id on the market a request finds now) and launches it in the
    /// background; false when `old` needs none (already replaced, job over).
    pub(crate) async fn replace(
        &self,
        old: &InstanceRecord,
        why: &str,
        machine: Option<crate::catalog::Machine>,
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
                mark.message = format!("replaces {} ({why}) on {}", old.id, machine.id);
                insts.push(new);
                job.instances.push(new_id.clone());
                Ok(vec![mark])
            })
            .await;
        let Ok(committed) = recorded else {
            return false;
        };
        let Some(new) = committed.instances.into_iter().find(|i| i.id == new_id) else {
            return false;
        };
        let wait = Duration::from_secs(job.wait_request_s.into());
        let this = self.clone();
        self.spawn(async move {
            let started = match this.acquire(&new.id, &machine, wait).await {
                Ok(()) => {
                    let _lock = this.lock_instance(&new.id).await;
                    // Closed while it waited for a machine (the job ended): none is started.
                    let wanted = this.store().instance(&new.id).ok().flatten();
                    if wanted.is_none_or(|i| i.state != InstanceState::LAUNCHING) {
                        this.capacity().release(&new.id);
                        return;
                    }
                    this.provision(&new.id, &machine).await
                }
                Err(reason) => Err(reason),
            };
            match started {
                Ok(()) => this.watch_connect(new.id.clone()),
                Err(reason) => {
                    this.replacement_failed(&new, &reason).await;
                }
            }
        });
        true
    }

    /// Terminates a replaced (or interrupted, or lost) instance if it is still
    /// live. Should that leave its deployed job without a live standby, the
    /// job is canceled instead.
    pub(crate) async fn retire(&self, instance_id: &str, reason: &str) {
        let Ok(Some(inst)) = self.store().instance(instance_id) else {
            return;
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
            Ok(_) => self.close(instance_id).await,
            Err(StoreError::Stale(_)) => {}
            Err(e) => {
                tracing::warn!(instance_id, error = %e, "retiring it would leave no standby");
                let why = format!("{reason}, and no replacement could take over ({instance_id})");
                self.cancel(&inst.job_id, why).await;
            }
        }
    }

    /// A replacement failed (its agent failed or never connected): it is
    /// terminated and the instance it was to replace may be replaced again.
    /// True when it was a replacement and has been dealt with.
    pub(crate) async fn replacement_failed(&self, inst: &InstanceRecord, reason: &str) -> bool {
        let Some(old) = inst.replaces.clone() else {
            return false;
        };
        let _ = self
            .apply(&inst.job_id, |_, insts| {
                let old = instance_mut(insts, &old)?;
                if old.replaced_by.as_deref() == Some(inst.id.as_str()) {
                    old.replaced_by = None;
                }
                Ok(vec![])
            })
            .await;
        self.retire(&inst.id, &format!("replacement failed: {reason}"))
            .await;
        true
    }
}

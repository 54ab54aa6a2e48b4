//! Spot capacity for deploys: spot requests, the providers' interruption
//! notices (the instance is replaced while it still serves, and terminated
//! when its notice ends), the swap of on-demand stand-ins back to spot when
//! spot capacity returns, and the admin's controls of an emulated market.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::catalog::Market;
use crate::error::{Error, Result};
use crate::provider::Interruption;
use crate::records::{InstanceRecord, JobRecord, TimelineNote};
use crate::state::{InstanceState, InstanceStatus, JobKind, JobStatus};

use super::replace::{FailedReplacement, MachineSlot};
use super::{instance_mut, Control};

const INTERRUPTION: &str = "spot interruption";
/// How long a rebalance recommendation is taken to leave: EC2 gives an
/// interruption two minutes' notice, and a recommendation comes earlier.
const REBALANCE_NOTICE: Duration = Duration::from_secs(120);

/// What an instance's agent heard from its cloud's metadata service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpotNotice {
    /// The machine is reclaimed (terminated, stopped or hibernated) at this
    /// time, in ms since the Unix epoch.
    Interruption { at_ms: u64 },
    /// An interruption is likely soon: move off the machine.
    Rebalance,
}

impl Control {
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

    /// An agent's notice from its cloud: handled as the providers' notices
    /// are, once per instance (the agent may repeat it).
    pub fn spot_notice(&self, instance_id: &str, notice: SpotNotice) -> Result<()> {
        let inst = self
            .store()
            .instance(instance_id)?
            .ok_or_else(|| Error::NotFound(format!("instance {instance_id}")))?;
        if inst.reason == INTERRUPTION {
            return Ok(());
        }
        let notice = match notice {
            SpotNotice::Interruption { at_ms } => {
                Duration::from_millis(at_ms.saturating_sub(crate::clock::now_ms()))
            }
            SpotNotice::Rebalance => REBALANCE_NOTICE,
        };
        let interruption = Interruption {
            instance_id: instance_id.to_string(),
            notice,
        };
        let this = self.clone();
        self.spawn(async move { this.interrupted(interruption).await });
        Ok(())
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
                        .machines()
                        .provider(&od)
                        .is_ok_and(|p| p.spot_available(&od.kind));
                    if available {
                        let this2 = this.clone();
                        this.spawn(async move {
                            let spot = od.on_market(Market::Spot);
                            this2
                                .replace_logged(
                                    &inst,
                                    "back to spot",
                                    Some(spot),
                                    MachineSlot::FreeNow,
                                )
                                .await;
                        });
                    }
                }
            }
        });
    }

    /// EXECUTING on-demand instances of deployed jobs, not being replaced.
    /// Only active inference jobs are read (the name index), not every job.
    fn on_demand_stand_ins(&self) -> Vec<InstanceRecord> {
        let Ok(jobs) = self.store().active_inference_jobs() else {
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
        self.machines()
            .provider(&machine)?
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
        self.machines()
            .provider_of_type(&kind)?
            .set_spot_availability(machine_type, availability)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))
    }

    /// A spot interruption notice. A replacement still launching is replaced
    /// again; a deployed job's instance is replaced while it serves and
    /// terminated when the notice ends; a cooling instance of a job still
    /// queuing waits for the job to be DEPLOYED first; a primary of a queuing
    /// or training job cancels it.
    #[tracing::instrument(skip(self))]
    async fn interrupted(&self, notice: Interruption) {
        let id = &notice.instance_id;
        let deadline = tokio::time::Instant::now() + notice.notice;
        let marked = match self.store().instance(id) {
            Ok(Some(inst)) => {
                self.store()
                    .update(&inst.job_id, |_, insts| {
                        let inst = instance_mut(insts, id)?;
                        inst.reason = INTERRUPTION.to_string();
                        let mut mark = TimelineNote::phase(id, "spot interruption notice");
                        mark.message = format!("reclaimed in {:.1}s", notice.notice.as_secs_f64());
                        Ok(vec![mark])
                    })
                    .await
            }
            _ => return,
        };
        let Ok(committed) = marked else { return };
        let Some(inst) = committed.instances.into_iter().find(|i| i.id == *id) else {
            return;
        };
        // Already on its way out (stopping, say): nothing to replace.
        if committed.job.state.is_ended()
            || matches!(
                inst.state.status,
                InstanceStatus::Closing | InstanceStatus::Closed
            )
        {
            return;
        }
        if inst.state == InstanceState::LAUNCHING
            && self.replacement_failed(&inst, INTERRUPTION, true).await
                == FailedReplacement::Dropped
        {
            return;
        }
        let Some(job) = self.wait_while_queuing(&inst).await else {
            let why = format!("its spot instance {id} was interrupted ({INTERRUPTION})");
            return self.cancel(&inst.job_id, why).await;
        };
        if job.state.status == JobStatus::Deployed {
            self.replace_logged(&inst, INTERRUPTION, None, MachineSlot::Borrow)
                .await;
            tokio::time::sleep_until(deadline).await;
            self.retire(id, "spot instance reclaimed").await;
        } else if !job.state.is_ended() {
            let why = format!("its spot instance {id} was interrupted ({INTERRUPTION})");
            self.cancel(&job.id, why).await;
        }
    }

    /// The instance's job once it no longer queues; None for a primary of a
    /// queuing job (nothing can replace it while the job queues).
    async fn wait_while_queuing(&self, inst: &InstanceRecord) -> Option<JobRecord> {
        loop {
            let job = self.store().job(&inst.job_id).ok()??;
            if job.state.status != JobStatus::Queuing {
                return Some(job);
            }
            if inst.role.is_primary() {
                return None;
            }
            tokio::time::sleep(self.settings().lifecycle_tick).await;
        }
    }
}

//! Getting and giving back machines: request an instance within the job's
//! `wait_request_s` (catalog capacity), launch or restart it through its
//! provider, give up when its agent never connects, and close instances
//! (stop keeping the disk, or terminate).

use std::time::Duration;

use aibro_proto::v1::StopRequest;

use crate::catalog::{Machine, MachineType, Market};
use crate::state::{self, InstanceEvent, InstanceState, JobEvent, JobStatus, Role};
use crate::store::{InstanceRecord, JobRecord, Mark, StoreError};

use super::{instance_mut, new_id, Control};

/// Why an instance was not launched.
#[derive(Debug)]
pub(crate) enum Launch {
    /// The provider failed; the reason says how.
    Failed(String),
    /// The job ended meanwhile; nothing is left running.
    Abandoned,
}

const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between tries to close an instance the provider failed to.
const CLOSE_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a closing instance waits for requests already sent to it.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl Control {
    /// Launches the job's instances one after the other, the primary first:
    /// no other instance may exist while the job is REQUESTING_SERVER.
    pub(crate) fn start_launch(&self, job: &JobRecord, launches: Vec<(Role, Machine)>) {
        let this = self.clone();
        let job_id = job.id.clone();
        let wait = Duration::from_secs(job.wait_request_s.into());
        self.spawn(async move {
            for (role, machine) in launches {
                if !this.launch(&job_id, role, machine, wait).await {
                    break;
                }
            }
        });
    }

    /// Takes a machine of the type for the instance within `wait`.
    pub(crate) async fn acquire(
        &self,
        instance_id: &str,
        machine: &Machine,
        wait: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + wait;
        let kind = &machine.kind;
        let capacity = || self.live_capacity(kind);
        if self
            .capacity()
            .acquire(&kind.name, capacity, instance_id, deadline)
            .await
        {
            return Ok(());
        }
        let why = match capacity() {
            0 if kind.provider == crate::provider::pool::POOL => {
                "no pool agent of that type has joined".to_string()
            }
            n => format!("all {n} are in use"),
        };
        Err(format!(
            "no `{}` instance could be had within wait_request_s={}s: {why}",
            machine.id,
            wait.as_secs(),
        ))
    }

    /// How many machines of the type exist: the provider's live count (a
    /// pool's joined agents), else the catalog's capacity.
    pub fn live_capacity(&self, kind: &MachineType) -> u32 {
        match self.inner.providers.get(&kind.provider) {
            Some(p) => p.capacity(kind).unwrap_or(kind.capacity),
            // Its provider does not run here: none can be had.
            None => 0,
        }
    }

    /// The probability a spot request for the type is fulfilled now.
    pub fn spot_availability(&self, kind: &MachineType) -> f64 {
        self.inner
            .providers
            .get(&kind.provider)
            .map_or(0.0, |p| p.spot_availability(kind))
    }

    /// The machine to launch for an on-demand id of a deploy: its spot twin
    /// when spot use is on and a spot request is fulfilled now.
    pub(crate) fn market_machine(&self, on_demand: &Machine) -> Machine {
        let spot = self.settings().use_spot
            && on_demand.market == Market::OnDemand
            && on_demand.kind.spot_price < on_demand.kind.on_demand_price
            && self
                .machine_provider(on_demand)
                .is_ok_and(|p| p.spot_available(&on_demand.kind));
        if spot {
            on_demand.on_market(Market::Spot)
        } else {
            on_demand.clone()
        }
    }

    /// Requests and launches one instance; true when it is launching. A
    /// primary that cannot be had cancels the job; a cooling instance that
    /// cannot is left out (the standby serves alone).
    #[tracing::instrument(skip(self, machine, wait), fields(machine = %machine.id))]
    async fn launch(&self, job_id: &str, role: Role, machine: Machine, wait: Duration) -> bool {
        let instance_id = new_id("inst");
        let machine = self.market_machine(&machine);
        let reason = match self.acquire(&instance_id, &machine, wait).await {
            Err(reason) => reason,
            Ok(()) => match self
                .launch_instance(job_id, role, &machine, &instance_id)
                .await
            {
                Ok(()) => return true,
                Err(Launch::Abandoned) => return false,
                Err(Launch::Failed(reason)) => reason,
            },
        };
        if role.is_primary() {
            self.cancel(job_id, reason).await;
        } else {
            tracing::warn!("the job goes on without its {role:?} instance: {reason}");
            let mark = Mark {
                message: reason,
                ..Mark::phase("", "cooling instance not launched")
            };
            let _ = self.apply(job_id, |_, _| Ok(vec![mark.clone()])).await;
        }
        false
    }

    /// Starts the machine of an instance that holds capacity, then records it
    /// LAUNCHING in its job (its agent's registration waits for the record).
    pub(crate) async fn launch_instance(
        &self,
        job_id: &str,
        role: Role,
        machine: &Machine,
        instance_id: &str,
    ) -> Result<(), Launch> {
        let _lock = self.lock_instance(instance_id).await;
        self.provision(instance_id, machine)
            .await
            .map_err(Launch::Failed)?;
        crate::crash::point("launch.provisioned");
        let created = self
            .apply(job_id, |job, insts| {
                if job.state.is_ended() {
                    return Err(StoreError::Stale("job ended while requesting".into()));
                }
                if role.is_primary() {
                    job.state = state::next_job(job.kind, job.state, JobEvent::InstanceLaunched)?;
                }
                let now = crate::store::now_ms();
                insts.push(InstanceRecord::launching(
                    instance_id,
                    &job.id,
                    role,
                    &machine.id,
                    now,
                ));
                job.instances.push(instance_id.to_string());
                let mut mark = Mark::phase(instance_id, "instance requested");
                mark.message = machine.describe();
                Ok(vec![mark])
            })
            .await;
        if let Err(e) = created {
            tracing::info!(error = %e, "launch abandoned");
            self.unprovision(instance_id, machine).await;
            return Err(Launch::Abandoned);
        }
        crate::crash::point("launch.recorded");
        tracing::info!(instance_id, "instance launched");
        self.watch_connect(instance_id.to_string());
        Ok(())
    }

    /// Has the provider start the machine of an instance that holds capacity
    /// (the caller holds the instance lock); undone when it fails.
    pub(crate) async fn provision(
        &self,
        instance_id: &str,
        machine: &Machine,
    ) -> Result<(), String> {
        let launched = match self.machine_provider(machine) {
            Ok(provider) => provider
                .launch(instance_id, machine)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = launched {
            self.unprovision(instance_id, machine).await;
            return Err(format!("launching `{}` failed: {e}", machine.id));
        }
        Ok(())
    }

    /// Ends a machine no record will follow, and gives its capacity back.
    async fn unprovision(&self, instance_id: &str, machine: &Machine) {
        if let Ok(provider) = self.machine_provider(machine) {
            let _ = provider.terminate(instance_id).await;
        }
        self.capacity().release(instance_id);
    }

    /// Gives up on an instance whose agent has not registered in time: the job
    /// is canceled when it is the primary, otherwise the instance is stopped.
    pub(crate) fn watch_connect(&self, instance_id: String) {
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
            if this.replacement_failed(&inst, &reason, false).await {
                tracing::warn!(instance_id, "{reason}");
            } else if inst.role.is_primary() {
                this.cancel(&inst.job_id, reason).await;
            } else {
                tracing::warn!(instance_id, "{reason}; stopping it");
                this.close_when_allowed(&inst.id, InstanceEvent::Stop).await;
            }
        });
    }

    /// Stops one instance, keeping its disk, and returns once it is CLOSED.
    pub(crate) async fn stop_instance(&self, inst: &InstanceRecord) {
        if self.move_instance(inst, InstanceEvent::Stop, None).await {
            self.close(&inst.id).await;
        }
    }

    /// Closes a cooling instance whose agent failed (`Terminate`) or went
    /// silent (`Stop`: it may wake again), once its job allows: while the job
    /// is QUEUING its instances must stay LAUNCHING (the seed's map), so this
    /// waits for it to be DEPLOYED. A job that ends terminates it anyway.
    pub(crate) async fn close_when_allowed(&self, instance_id: &str, event: InstanceEvent) {
        loop {
            let Ok(Some(inst)) = self.store().instance(instance_id) else {
                return;
            };
            match self.store().job(&inst.job_id) {
                Ok(Some(job)) if job.state.status == JobStatus::Queuing => {
                    tokio::time::sleep(self.settings().lifecycle_tick).await;
                }
                Ok(Some(job)) if !job.state.is_ended() => {
                    if self.move_instance(&inst, event, None).await {
                        self.close(instance_id).await;
                    }
                    return;
                }
                _ => return,
            }
        }
    }

    /// Applies one instance event (when still legal) with an optional mark.
    pub(crate) async fn move_instance(
        &self,
        inst: &InstanceRecord,
        event: InstanceEvent,
        mark: Option<&str>,
    ) -> bool {
        let id = inst.id.clone();
        let moved = self
            .apply(&inst.job_id, |_, insts| {
                let inst = instance_mut(insts, &id)?;
                inst.state = state::next_instance(inst.state, event)?;
                if event == InstanceEvent::Start {
                    inst.ready = false;
                    inst.agent_address.clear();
                }
                Ok(mark.map(|m| Mark::phase(&id, m)).into_iter().collect())
            })
            .await;
        if let Err(e) = &moved {
            tracing::info!(instance_id = %inst.id, ?event, error = %e, "instance not moved");
        }
        moved.is_ok()
    }

    /// Closes the instance in the background: see [`Control::close`].
    pub(crate) fn start_close(&self, instance_id: String) {
        let this = self.clone();
        self.spawn(async move { this.close(&instance_id).await });
    }

    /// Does what the instance's CLOSING substatus asks (stop or terminate) and
    /// records it CLOSED. Re-reads the state under the instance lock, so a
    /// terminate that overtook a stop is still carried out, and a second close
    /// of the same instance does nothing.
    #[tracing::instrument(skip(self))]
    pub(crate) async fn close(&self, instance_id: &str) {
        crate::crash::point("close.marked");
        let _lock = self.lock_instance(instance_id).await;
        let mut backoff = Duration::from_millis(200);
        loop {
            let inst = match self.store().instance(instance_id) {
                Ok(Some(inst)) => inst,
                Ok(None) => return,
                Err(e) => return tracing::error!(error = %e, "cannot read the instance"),
            };
            let terminate = match inst.state {
                InstanceState::STOPPING => false,
                InstanceState::TERMINATING => true,
                _ => return,
            };
            if let Ok(Some(job)) = self.store().job(&inst.job_id) {
                if let Some(backend) =
                    self.router()
                        .remove_backend(&job.owner, &job.model_name, &inst.id)
                {
                    backend.drain(DRAIN_LIMIT).await;
                }
            }
            if let Some(agent) = self.link_to(&inst) {
                let _ =
                    tokio::time::timeout(AGENT_STOP_TIMEOUT, agent.stop(StopRequest { terminate }))
                        .await;
            }
            self.forget_agent(&inst.id);
            self.forget_heartbeats(&inst.id);
            let Some(machine) = self.catalog().resolve(&inst.machine_id) else {
                return tracing::error!(machine = inst.machine_id, "machine left the catalog");
            };
            let provider = match self.machine_provider(&machine) {
                Ok(p) => p,
                Err(e) => return tracing::error!(error = %e, "no provider to close the instance"),
            };
            let result = if terminate {
                provider.terminate(&inst.id).await
            } else {
                provider.stop(&inst.id).await
            };
            if result.is_ok() {
                crate::crash::point("close.provider_done");
            }
            if let Err(e) = result {
                // The machine must not be forgotten: try again, less often.
                tracing::error!(error = %e, "provider failed to close the instance; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(CLOSE_RETRY_MAX);
                continue;
            }
            let acted = inst.state;
            let closed = self
                .apply(&inst.job_id, |_, insts| {
                    let inst = instance_mut(insts, instance_id)?;
                    if inst.state != acted {
                        return Err(StoreError::Stale(
                            "the instance was asked to close otherwise".into(),
                        ));
                    }
                    inst.state = state::next_instance(inst.state, InstanceEvent::Closed)?;
                    Ok(vec![])
                })
                .await;
            match closed {
                Ok(_) => {
                    if terminate || !provider.stopped_holds_machine() {
                        self.capacity().release(instance_id);
                    }
                    return;
                }
                Err(StoreError::Stale(_)) => continue,
                Err(e) => return tracing::error!(error = %e, "cannot record the instance closed"),
            }
        }
    }
}

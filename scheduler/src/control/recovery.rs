//! Picking up where a previous scheduler process left off: recount capacity,
//! put deployed jobs back behind their routes (their agents keep running and
//! re-register), and resume launches and closes that were in flight.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::records::{InstanceRecord, JobRecord};
use crate::state::{InstanceState, JobKind, JobStatus, JobSubstatus, Role};

use super::Control;

impl Control {
    /// Recovers from the store at start: every job that is not over with
    /// nothing left gets its route, its instances and its requests back.
    pub async fn recover(&self) -> Result<()> {
        // One pass over the instances: only those not TERMINATED matter here
        // (they hold or keep a machine, or are being closed), so a job that
        // ended with none of them is passed over without reading more.
        let live = self
            .store()
            .instances_where(|i| i.state != InstanceState::TERMINATED)?;
        let known: HashSet<String> = live.iter().map(|i| i.id.clone()).collect();
        self.end_unknown_machines(&known).await;
        let mut by_job: HashMap<String, Vec<InstanceRecord>> = HashMap::new();
        for inst in live {
            by_job.entry(inst.job_id.clone()).or_default().push(inst);
        }
        let mut resumed = 0;
        for job in self.store().each_job() {
            let job = job?;
            // As `instances_of`: the job's own, in launch order.
            let mut instances = by_job.remove(&job.id).unwrap_or_default();
            instances.retain(|i| job.instances.contains(&i.id));
            instances.sort_by_key(|i| job.instances.iter().position(|id| *id == i.id));
            if job.state.is_ended() && instances.is_empty() {
                continue;
            }
            if job.dryrun && !job.state.is_ended() {
                // Its caller went with the previous process.
                self.start_cancel(job.id.clone(), "the scheduler restarted during the dry run");
            }
            self.open_route(&job);
            self.reserve_pool_hosts(&instances);
            for inst in instances.iter().filter(|i| !i.state.is_closed()) {
                self.resume_instance(&job, inst)?;
            }
            if job.state.substatus == JobSubstatus::RequestingServer && !job.dryrun {
                self.request_again(&job);
                resumed += 1;
            }
        }
        tracing::info!(resumed, "recovered state from the store");
        Ok(())
    }

    /// A live instance holds its machine again and picks up what it was
    /// doing: closing, launching, cooling after training, or serving.
    fn resume_instance(&self, job: &JobRecord, inst: &InstanceRecord) -> Result<()> {
        if let Some(m) = self.catalog().resolve(&inst.machine_id) {
            self.machines().capacity().hold(&m.kind.name, &inst.id);
        }
        match inst.state {
            InstanceState::STOPPING | InstanceState::TERMINATING => {
                self.start_close(inst.id.clone())
            }
            InstanceState::LAUNCHING => self.resume_launch(inst),
            InstanceState::COOLING if job.kind == JobKind::Training => {
                self.reconnect(inst)?;
                self.cool_then_terminate(inst.clone(), job.cool_down_period_s);
            }
            s if s.is_serving() && !inst.agent_address.is_empty() => {
                self.reconnect(inst)?;
                // Its agent gets the usual grace to be heard from again.
                self.links().heard(&inst.id, None);
                if job.state.status == JobStatus::Deployed {
                    self.serve(job, inst);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Links the instance to its agent at its stored address.
    fn reconnect(&self, inst: &InstanceRecord) -> Result<()> {
        let link = self
            .connect_agent(&inst.id, &inst.machine_id, &inst.host, &inst.agent_address)
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.links().set(&inst.id, link);
        Ok(())
    }

    /// A request that was never placed is placed again, with a new wait.
    fn request_again(&self, job: &JobRecord) {
        match job.kind {
            JobKind::Training => self.start_requesting_trainer(job),
            JobKind::Inference => {
                let launches = [
                    (Role::Standby, Some(&job.standby)),
                    (Role::Cooling, job.cooling.as_ref()),
                ]
                .into_iter()
                .filter_map(|(role, id)| Some((role, self.catalog().resolve(id?)?)))
                .collect();
                self.start_launch(job, launches);
            }
        }
    }

    /// Machines a provider runs (or disks it keeps) for instances the store
    /// does not know were launched just before a crash, their record never
    /// written: they are ended, never adopted twice. A cloud is asked first
    /// which machines carry this scheduler's tag. `known`: every instance
    /// on record that is not TERMINATED.
    async fn end_unknown_machines(&self, known: &HashSet<String>) {
        for provider in self.machines().providers() {
            if let Err(e) = provider.discover().await {
                tracing::error!(error = %e, "cannot list a provider's machines; none of them is ended");
                continue;
            }
            for id in provider.instance_ids() {
                if known.contains(&id) {
                    continue;
                }
                tracing::warn!(instance_id = id, "a machine without a record: ending it");
                if let Err(e) = provider.terminate(&id).await {
                    tracing::error!(instance_id = id, error = %e, "cannot end it");
                }
            }
        }
    }

    /// A LAUNCHING instance: its agent gets the usual time to connect; a
    /// machine that never started (the crash came between the record and the
    /// provider) is started now.
    fn resume_launch(&self, inst: &InstanceRecord) {
        let machine = self.catalog().resolve(&inst.machine_id);
        let provider = machine
            .as_ref()
            .and_then(|m| self.machines().provider(m).ok());
        let (Some(machine), Some(provider)) = (machine, provider) else {
            return self.expect_agent(inst.id.clone());
        };
        if !inst.agent_address.is_empty() || provider.is_running(&inst.id) != Some(false) {
            return self.expect_agent(inst.id.clone());
        }
        let this = self.clone();
        let id = inst.id.clone();
        self.spawn(async move {
            let lock = this.lock_instance(&id).await;
            tracing::info!(
                instance_id = id,
                "starting the machine a crash left unstarted"
            );
            let started = provider.start(&id, &machine).await;
            drop(lock);
            if let Err(e) = started {
                tracing::error!(instance_id = id, error = %e, "cannot start it");
            }
            this.expect_agent(id);
        });
    }

    /// Pool agents keep the disks of stopped instances: they stay reserved
    /// (and hold their machine's capacity). Those that run an instance get it
    /// back, so that they may speak for it when they register again.
    fn reserve_pool_hosts(&self, instances: &[InstanceRecord]) {
        let Some(pool) = self.machines().pool() else {
            return;
        };
        for inst in instances
            .iter()
            .filter(|i| i.state != InstanceState::TERMINATED && !i.host.is_empty())
        {
            let Some(m) = self.catalog().resolve(&inst.machine_id) else {
                continue;
            };
            if m.kind.provider != crate::provider::pool::POOL {
                continue;
            }
            let parked = matches!(inst.state, InstanceState::STOPPED | InstanceState::STOPPING);
            pool.reserve(&inst.host, &m.kind.name, &inst.id, !parked);
            if inst.state == InstanceState::STOPPED {
                self.machines().capacity().hold(&m.kind.name, &inst.id);
            }
        }
    }
}

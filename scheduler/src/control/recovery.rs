//! Picking up where a previous scheduler process left off: recount capacity,
//! put deployed jobs back behind their routes (their agents keep running and
//! re-register), and resume launches and closes that were in flight.

use crate::error::{Error, Result};
use crate::link;
use crate::state::{InstanceState, JobKind, JobStatus, JobSubstatus, Role};

use super::Control;

impl Control {
    pub async fn recover(&self) -> Result<()> {
        let mut resumed = 0;
        for job in self.store().all_jobs()? {
            self.open_route(&job);
            let instances = self.store().instances_of(&job)?;
            self.reserve_pool_hosts(&instances);
            for inst in instances.iter().filter(|i| !i.state.is_closed()) {
                if let Some(m) = self.catalog().resolve(&inst.machine_id) {
                    self.capacity().hold(&m.kind.name, &inst.id);
                }
                match inst.state {
                    InstanceState::STOPPING | InstanceState::TERMINATING => {
                        self.start_close(inst.id.clone())
                    }
                    InstanceState::LAUNCHING => self.watch_connect(inst.id.clone()),
                    InstanceState::COOLING if job.kind == JobKind::Training => {
                        let link = link::grpc(&inst.agent_address).map_err(Error::Internal)?;
                        self.set_agent(&inst.id, link);
                        self.cool_then_terminate(inst.clone(), job.cool_down_period_s);
                    }
                    s if s.is_serving() && !inst.agent_address.is_empty() => {
                        let link = link::grpc(&inst.agent_address).map_err(Error::Internal)?;
                        self.set_agent(&inst.id, link);
                        // Its agent gets the usual grace to be heard from again.
                        self.last_seen(&inst.id, None);
                        if job.state.status == JobStatus::Deployed {
                            self.serve(&job, inst);
                        }
                    }
                    _ => {}
                }
            }
            if job.state.substatus == JobSubstatus::RequestingServer {
                // The request was never placed: place it again, with a new wait.
                match job.kind {
                    JobKind::Training => self.start_requesting_trainer(&job),
                    JobKind::Inference => {
                        let launches = [
                            (Role::Standby, Some(&job.standby)),
                            (Role::Cooling, job.cooling.as_ref()),
                        ]
                        .into_iter()
                        .filter_map(|(role, id)| Some((role, self.catalog().resolve(id?)?)))
                        .collect();
                        self.start_launch(&job, launches);
                    }
                }
                resumed += 1;
            }
        }
        tracing::info!(resumed, "recovered state from the store");
        Ok(())
    }

    /// Pool agents keep the disks of stopped instances: they stay reserved
    /// (and hold their machine's capacity).
    fn reserve_pool_hosts(&self, instances: &[crate::store::InstanceRecord]) {
        let Some(pool) = self.inner.providers.pool() else {
            return;
        };
        for inst in instances.iter().filter(|i| {
            matches!(i.state, InstanceState::STOPPED | InstanceState::STOPPING)
                && !i.host.is_empty()
        }) {
            if let Some(m) = self.catalog().resolve(&inst.machine_id) {
                pool.reserve(&inst.host, &m.kind.name, &inst.id);
                if inst.state == InstanceState::STOPPED {
                    self.capacity().hold(&m.kind.name, &inst.id);
                }
            }
        }
    }
}

//! Picking up where a previous scheduler process left off: recount capacity,
//! put deployed jobs back behind their routes (their agents keep running and
//! re-register), and resume launches and closes that were in flight.

use crate::error::{Error, Result};
use crate::link;
use crate::state::{InstanceState, JobStatus, JobSubstatus, Role};

use super::Control;

impl Control {
    pub async fn recover(&self) -> Result<()> {
        let mut resumed = 0;
        for job in self.store().all_jobs()? {
            self.open_route(&job);
            let instances = self.store().instances_of(&job)?;
            for inst in instances.iter().filter(|i| !i.state.is_closed()) {
                if let Some(m) = self.catalog().resolve(&inst.machine_id) {
                    self.capacity().hold(&m.kind.name, &inst.id);
                }
                match inst.state {
                    InstanceState::STOPPING | InstanceState::TERMINATING => {
                        self.start_close(inst.id.clone())
                    }
                    InstanceState::LAUNCHING => self.watch_connect(inst.id.clone()),
                    s if s.is_serving() && !inst.agent_address.is_empty() => {
                        let link = link::grpc(&inst.agent_address).map_err(Error::Internal)?;
                        self.set_agent(&inst.id, link);
                        if job.state.status == JobStatus::Deployed {
                            self.serve(&job, inst);
                        }
                    }
                    _ => {}
                }
            }
            if job.state.substatus == JobSubstatus::RequestingServer {
                // The wait starts again: the request was never placed.
                let roles = [
                    (Role::Standby, Some(&job.standby)),
                    (Role::Cooling, job.cooling.as_ref()),
                ];
                for (role, machine) in roles {
                    let launched = instances.iter().any(|i| i.role == role);
                    if let Some(machine) = machine
                        .and_then(|m| self.catalog().resolve(m))
                        .filter(|_| !launched)
                    {
                        self.start_launch(&job, role, machine);
                        resumed += 1;
                    }
                }
            }
        }
        tracing::info!(resumed, "recovered state from the store");
        Ok(())
    }
}

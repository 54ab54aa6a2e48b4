//! Picking up where a previous scheduler process left off: recount capacity,
//! put deployed jobs back behind their routes (their agents keep running and
//! re-register), and resume launches and closes that were in flight.

use crate::error::Result;
use crate::state::{InstanceState, JobStatus, JobSubstatus, Role};

use super::Control;

impl Control {
    pub async fn recover(&self) -> Result<()> {
        let mut resumed = 0;
        for job in self.store().all_jobs()? {
            let instances = self.store().instances_of(&job)?;
            for inst in &instances {
                if inst.state.is_closed() {
                    continue;
                }
                if let Some(m) = self.catalog().resolve(&inst.machine_id) {
                    self.capacity().hold(&m.kind.name);
                }
                match inst.state {
                    InstanceState::STOPPING | InstanceState::TERMINATING => {
                        self.start_close(inst.clone());
                    }
                    InstanceState::LAUNCHING => self.watch_connect(inst.id.clone()),
                    InstanceState::EXECUTING if !inst.agent_address.is_empty() => {
                        let client = self.connect_agent(&inst.id, &inst.agent_address)?;
                        if job.state.status == JobStatus::Deployed {
                            self.route_to(&job, inst, client);
                        }
                    }
                    _ => {}
                }
            }
            if job.state.substatus == JobSubstatus::RequestingServer {
                if let Some(machine) = self.catalog().resolve(&job.standby) {
                    // The wait starts again: the request was never placed.
                    self.start_launch(&job, Role::Standby, machine);
                    resumed += 1;
                }
            }
        }
        tracing::info!(resumed, "recovered state from the store");
        Ok(())
    }
}

//! Getting and giving back machines: request an instance within the job's
//! `wait_request_s` (catalog capacity), launch it through its provider, give
//! up if its agent never connects, and close instances when a job ends.

use std::time::Duration;

use crate::catalog::Machine;
use crate::state::{self, InstanceEvent, InstanceState, JobEvent, Role};
use crate::store::{InstanceRecord, JobRecord, Mark, StoreError, RECORD_VERSION};

use super::{new_id, Control};

const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Control {
    pub(crate) fn start_launch(&self, job: &JobRecord, role: Role, machine: Machine) {
        let this = self.clone();
        let job_id = job.id.clone();
        let wait = Duration::from_secs(job.wait_request_s.into());
        self.spawn(async move { this.launch(&job_id, role, machine, wait).await });
    }

    #[tracing::instrument(skip(self, machine, wait), fields(machine = %machine.id))]
    async fn launch(&self, job_id: &str, role: Role, machine: Machine, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let kind = &machine.kind;
        if !self
            .capacity()
            .acquire(&kind.name, kind.capacity, deadline)
            .await
        {
            let reason = format!(
                "no `{}` instance could be had within wait_request_s={}s: all {} are in use",
                machine.id,
                wait.as_secs(),
                kind.capacity
            );
            return self.cancel(job_id, reason).await;
        }
        let instance_id = new_id("inst");
        let created = self
            .apply(job_id, |job, insts| {
                if job.state.is_ended() {
                    return Err(StoreError::Stale("job ended while requesting".into()));
                }
                if role.is_primary() {
                    job.state = state::next_job(job.kind, job.state, JobEvent::InstanceLaunched)?;
                }
                insts.push(InstanceRecord {
                    v: RECORD_VERSION,
                    id: instance_id.clone(),
                    job_id: job.id.clone(),
                    role,
                    machine_id: machine.id.clone(),
                    state: InstanceState::LAUNCHING,
                    agent_address: String::new(),
                    hardware: None,
                    created_ms: crate::store::now_ms(),
                    updated_ms: 0,
                });
                job.instances.push(instance_id.clone());
                Ok(vec![Mark::phase(&instance_id, "instance requested")])
            })
            .await;
        if let Err(e) = created {
            tracing::info!(error = %e, "launch abandoned");
            self.capacity().release(&kind.name);
            return;
        }
        let launched = match self.machine_provider(&machine) {
            Ok(provider) => provider
                .launch(&instance_id, &machine)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match launched {
            Ok(()) => {
                tracing::info!(instance_id, "instance launched");
                self.watch_connect(instance_id);
            }
            Err(e) => {
                let reason = format!("launching `{}` failed: {e}", machine.id);
                self.cancel(job_id, reason).await;
            }
        }
    }

    /// Cancels the job if the instance's agent has not registered in time.
    pub(crate) fn watch_connect(&self, instance_id: String) {
        let this = self.clone();
        let timeout = self.settings().connect_timeout;
        self.spawn(async move {
            tokio::time::sleep(timeout).await;
            let Ok(Some(inst)) = this.store().instance(&instance_id) else {
                return;
            };
            if inst.state == InstanceState::LAUNCHING && inst.agent_address.is_empty() {
                let reason = format!(
                    "the agent of instance {instance_id} did not connect within {}s",
                    timeout.as_secs()
                );
                this.cancel(&inst.job_id, reason).await;
            }
        });
    }

    /// Stops the agent's work and terminates the machine, then records it CLOSED.
    pub(crate) fn start_close(&self, inst: InstanceRecord) {
        let this = self.clone();
        self.spawn(async move { this.close(inst).await });
    }

    #[tracing::instrument(skip_all, fields(instance_id = %inst.id))]
    async fn close(&self, inst: InstanceRecord) {
        let terminate = inst.state == InstanceState::TERMINATING;
        if let Some(mut agent) = self.agent(&inst.id) {
            let request = aibro_proto::v1::StopRequest { terminate };
            let _ = tokio::time::timeout(AGENT_STOP_TIMEOUT, agent.stop(request)).await;
        }
        self.forget_agent(&inst.id);
        let Some(machine) = self.catalog().resolve(&inst.machine_id) else {
            tracing::error!(machine = inst.machine_id, "machine left the catalog");
            return;
        };
        let result = match self.machine_provider(&machine) {
            Ok(p) if terminate => p.terminate(&inst.id).await,
            Ok(p) => p.stop(&inst.id).await,
            Err(e) => {
                tracing::error!(error = %e, "no provider to close the instance");
                return;
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "provider failed to close the instance");
            return;
        }
        let id = inst.id.clone();
        let closed = self
            .apply(&inst.job_id, |_, insts| {
                let inst = insts
                    .iter_mut()
                    .find(|i| i.id == id)
                    .ok_or_else(|| StoreError::Stale(format!("instance {id} left its job")))?;
                inst.state = state::next_instance(inst.state, InstanceEvent::Closed)?;
                Ok(vec![])
            })
            .await;
        match closed {
            Ok(_) => self.capacity().release(&machine.kind.name),
            Err(e) => tracing::error!(error = %e, "cannot record the instance closed"),
        }
    }
}

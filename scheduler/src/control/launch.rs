//! Launching a job's instances: request a machine within the job's
//! `wait_request_s` (capacity, spot or on-demand market), have its provider
//! start it, record it LAUNCHING and expect its agent. A primary that cannot
//! be had cancels the job; a cooling instance that cannot is left out (the
//! standby serves alone).

use std::time::Duration;

use crate::catalog::Machine;
use crate::provider::LaunchFor;
use crate::records::{InstanceRecord, JobRecord, TimelineNote};
use crate::state::{self, JobEvent, Role};
use crate::store::StoreError;

use super::machines::MachineError;
use super::{new_id, Control};

/// Why an instance was not launched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    /// No machine could be had, or its provider failed to start it.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The job ended meanwhile; nothing is left running.
    #[error("the job ended while its instance was requested")]
    Abandoned,
}

impl Control {
    /// Launches the job's instances one after the other, the primary first:
    /// no other instance may exist while the job is REQUESTING_SERVER.
    pub(crate) fn start_launch(&self, job: &JobRecord, launches: Vec<(Role, Machine)>) {
        let this = self.clone();
        let job_id = job.id.clone();
        let wait = Duration::from_secs(job.wait_request_s.into());
        self.spawn(async move {
            for (role, machine) in launches {
                if let Err(e) = this.launch(&job_id, role, machine, wait).await {
                    this.launch_failed(&job_id, role, e).await;
                    break;
                }
            }
        });
    }

    /// Requests and launches one instance on the market a request finds now.
    #[tracing::instrument(skip(self, machine, wait), fields(machine = %machine.id))]
    async fn launch(
        &self,
        job_id: &str,
        role: Role,
        machine: Machine,
        wait: Duration,
    ) -> Result<(), LaunchError> {
        let market = self.machines().market_machine(&machine);
        let launched = self.request_and_launch(job_id, role, &market, wait).await;
        match launched {
            Err(LaunchError::Machine(e)) if e.is_spot_refusal() => {
                tracing::info!("{e}; launching on-demand instead");
                self.request_and_launch(job_id, role, &machine, wait).await
            }
            launched => launched,
        }
    }

    /// Requests a machine within `wait` and launches an instance on it.
    async fn request_and_launch(
        &self,
        job_id: &str,
        role: Role,
        machine: &Machine,
        wait: Duration,
    ) -> Result<(), LaunchError> {
        let instance_id = new_id("inst");
        self.machines().acquire(&instance_id, machine, wait).await?;
        self.launch_instance(job_id, role, machine, &instance_id)
            .await
    }

    /// A primary that could not be launched cancels its job; the job goes on
    /// without a cooling instance that could not.
    async fn launch_failed(&self, job_id: &str, role: Role, e: LaunchError) {
        let LaunchError::Machine(e) = e else { return };
        let reason = e.to_string();
        if role.is_primary() {
            return self.cancel(job_id, reason).await;
        }
        tracing::warn!("the job goes on without its {role:?} instance: {reason}");
        let note = TimelineNote {
            message: reason,
            ..TimelineNote::phase("", "cooling instance not launched")
        };
        let _ = self
            .store()
            .update(job_id, |_, _| Ok(vec![note.clone()]))
            .await;
    }

    /// Starts the machine of an instance that holds capacity, then records it
    /// LAUNCHING in its job (its agent's registration waits for the record).
    pub(crate) async fn launch_instance(
        &self,
        job_id: &str,
        role: Role,
        machine: &Machine,
        instance_id: &str,
    ) -> Result<(), LaunchError> {
        let _lock = self.lock_instance(instance_id).await;
        let launch_for = LaunchFor { job_id, role };
        self.machines()
            .provision(instance_id, machine, launch_for)
            .await?;
        crate::crash::point("launch.provisioned");
        if let Err(e) = self
            .record_launching(job_id, role, machine, instance_id)
            .await
        {
            tracing::info!(error = %e, "launch abandoned");
            self.machines().unprovision(instance_id, machine).await;
            return Err(LaunchError::Abandoned);
        }
        crate::crash::point("launch.recorded");
        tracing::info!(instance_id, "instance launched");
        self.expect_agent(instance_id.to_string());
        Ok(())
    }

    /// Records the instance LAUNCHING in its job; a primary moves the job on.
    async fn record_launching(
        &self,
        job_id: &str,
        role: Role,
        machine: &Machine,
        instance_id: &str,
    ) -> Result<(), StoreError> {
        self.store()
            .update(job_id, |job, insts| {
                if job.state.is_ended() {
                    return Err(StoreError::Stale("job ended while requesting".into()));
                }
                if role.is_primary() {
                    job.state = state::next_job(job.kind, job.state, JobEvent::InstanceLaunched)?;
                }
                let now = crate::clock::now_ms();
                insts.push(InstanceRecord::launching(
                    instance_id,
                    &job.id,
                    role,
                    &machine.id,
                    now,
                ));
                job.instances.push(instance_id.to_string());
                let mut note = TimelineNote::phase(instance_id, "instance requested");
                note.message = machine.describe();
                Ok(vec![note])
            })
            .await
            .map(drop)
    }
}

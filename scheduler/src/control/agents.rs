//! What agents tell the scheduler: registration (then the job is sent with
//! Prepare), phase reports, heartbeats. Reports may arrive twice (agents
//! re-send after reconnecting), so each is applied only where it still moves
//! the job forward.

use std::time::Instant;

use aibro_proto::v1::{agent_client::AgentClient, AgentPhase, PhaseReport, PrepareRequest};
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::router::Backend;
use crate::state::{self, InstanceEvent, InstanceState, JobEvent, JobKind};
use crate::store::{HardwareRecord, InstanceRecord, JobRecord, Mark, StoreError};

use super::Control;

/// Moves the job on `event` when that is legal from where it is now; a
/// repeated report leaves it as it is.
fn advance(job: &mut JobRecord, event: JobEvent) {
    if let Ok(next) = state::next_job(job.kind, job.state, event) {
        job.state = next;
    }
}

fn instance_mut<'a>(
    insts: &'a mut [InstanceRecord],
    id: &str,
) -> Result<&'a mut InstanceRecord, StoreError> {
    insts
        .iter_mut()
        .find(|i| i.id == id)
        .ok_or_else(|| StoreError::Stale(format!("instance {id} is not part of its job")))
}

impl Control {
    fn live_instance(&self, instance_id: &str) -> Result<InstanceRecord> {
        let inst = self
            .store()
            .instance(instance_id)?
            .ok_or_else(|| Error::NotFound(format!("instance {instance_id} is unknown")))?;
        if inst.state.is_closed() {
            return Err(Error::FailedPrecondition(format!(
                "instance {instance_id} is closed"
            )));
        }
        Ok(inst)
    }

    /// An agent joined: remember where it listens and send it its job.
    #[tracing::instrument(skip(self, hardware))]
    pub async fn register(
        &self,
        instance_id: &str,
        address: &str,
        hardware: HardwareRecord,
    ) -> Result<()> {
        let inst = self.live_instance(instance_id)?;
        let client = self.connect_agent(instance_id, address)?;
        let committed = self
            .apply(&inst.job_id, |_, insts| {
                let inst = instance_mut(insts, instance_id)?;
                inst.agent_address = address.to_string();
                inst.hardware = Some(hardware.clone());
                Ok(vec![Mark::phase(instance_id, "agent connected")])
            })
            .await?;
        let job = committed.job;
        if job.state.is_ended() {
            return Ok(());
        }
        self.last_seen(instance_id);
        let request = PrepareRequest {
            job_id: job.id.clone(),
            artifact_digest: job.artifact_digest.clone(),
            kind: match job.kind {
                JobKind::Inference => aibro_proto::v1::JobKind::Inference,
                JobKind::Training => aibro_proto::v1::JobKind::Training,
            } as i32,
        };
        let this = self.clone();
        self.spawn(async move {
            if let Err(status) = client.clone().prepare(request).await {
                let reason = format!("the agent refused the job: {}", status.message());
                this.cancel(&job.id, reason).await;
            }
        });
        Ok(())
    }

    /// A heartbeat from a live instance's agent.
    pub fn heartbeat(&self, instance_id: &str) -> Result<()> {
        self.live_instance(instance_id)?;
        self.last_seen(instance_id);
        Ok(())
    }

    fn last_seen(&self, instance_id: &str) {
        self.inner
            .heartbeats
            .lock()
            .expect("heartbeats lock")
            .insert(instance_id.to_string(), Instant::now());
    }

    /// A phase report from an agent.
    #[tracing::instrument(skip(self, report), fields(phase = ?report.phase()))]
    pub async fn report(&self, instance_id: &str, report: PhaseReport) -> Result<()> {
        let inst = self.live_instance(instance_id)?;
        self.last_seen(instance_id);
        if report.job_id != inst.job_id {
            return Err(Error::FailedPrecondition(format!(
                "instance {instance_id} works for job {}, not {}",
                inst.job_id, report.job_id
            )));
        }
        let phase = report.phase();
        if phase == AgentPhase::Failed {
            let reason = if report.traceback.is_empty() {
                report.message
            } else {
                report.traceback
            };
            self.cancel(&inst.job_id, reason).await;
            return Ok(());
        }
        let (event, mark) = match phase {
            AgentPhase::GearingUpEnv => (Some(JobEvent::GearingUp), "gearing up env"),
            AgentPhase::ModelLoading => (
                Some(JobEvent::Loading),
                if report.env_cached {
                    "env reused"
                } else {
                    "env geared up"
                },
            ),
            AgentPhase::Serving => (Some(JobEvent::Serving), "model loaded"),
            AgentPhase::Training => (Some(JobEvent::TrainingStarted), "training"),
            AgentPhase::Returning => (Some(JobEvent::Returning), "returning"),
            AgentPhase::Unspecified | AgentPhase::Failed => {
                return Err(Error::InvalidArgument("phase is unspecified".into()))
            }
        };
        let serving = phase == AgentPhase::Serving;
        let committed = self
            .apply(&inst.job_id, |job, insts| {
                if job.state.is_ended() {
                    return Ok(vec![]);
                }
                let inst = instance_mut(insts, instance_id)?;
                if inst.role.is_primary() {
                    if let Some(event) = event {
                        advance(job, event);
                    }
                }
                if serving && inst.state == InstanceState::LAUNCHING {
                    inst.state = state::next_instance(inst.state, InstanceEvent::Ready)?;
                }
                let mut mark = Mark::phase(instance_id, mark);
                mark.message = report.message.clone();
                Ok(vec![mark])
            })
            .await?;
        if serving && !committed.job.state.is_ended() {
            self.serve(&committed.job, instance_id);
        }
        Ok(())
    }

    /// Puts the instance's agent behind the job's route.
    fn serve(&self, job: &JobRecord, instance_id: &str) {
        if let (Some(client), Ok(Some(inst))) =
            (self.agent(instance_id), self.store().instance(instance_id))
        {
            self.route_to(job, &inst, client);
        }
    }

    pub(crate) fn route_to(
        &self,
        job: &JobRecord,
        inst: &InstanceRecord,
        client: AgentClient<Channel>,
    ) {
        let backend = Backend {
            instance_id: inst.id.clone(),
            role: inst.role,
            client,
        };
        self.router().add_backend(
            &job.owner,
            &job.model_name,
            &job.id,
            &job.client_ids,
            backend,
        );
    }
}

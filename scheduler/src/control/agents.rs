//! What agents tell the scheduler: registration (then the job is sent with
//! Prepare), phase reports, heartbeats. Reports may arrive twice (agents
//! re-send after reconnecting), so each is applied only where it still moves
//! the job forward.

use aibro_proto::v1::{AgentPhase, PhaseReport, PrepareRequest};

use crate::error::{Error, Result};
use crate::link::{self, Link};
use crate::provider::pool::POOL;
use crate::router::Backend;
use crate::state::{
    self, InstanceEvent, InstanceState, InstanceStatus, JobEvent, JobKind, JobState, JobStatus,
    JobSubstatus, Role,
};
use crate::store::{HardwareRecord, InstanceRecord, JobRecord, Mark, StoreError};

use super::{instance_mut, Control};

/// An agent's registration.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Empty: an idle pool agent.
    pub instance_id: String,
    pub agent_id: String,
    pub machine_id: String,
    pub address: String,
    pub hardware: HardwareRecord,
}

/// Moves the job on `event` when that is legal from where it is now; a
/// repeated report leaves it as it is.
fn advance(job: &mut JobRecord, event: JobEvent) {
    if let Ok(next) = state::next_job(job.kind, job.state, event) {
        job.state = next;
    }
}

/// Instances whose agents serve and that may now take traffic: EXECUTING
/// while the job is DEPLOYED (a ready cooling instance joins when the standby
/// makes the job DEPLOYED).
fn promote_ready(job: &JobRecord, insts: &mut [InstanceRecord]) -> Result<(), StoreError> {
    if job.state.status != JobStatus::Deployed {
        return Ok(());
    }
    for inst in insts
        .iter_mut()
        .filter(|i| i.ready && i.state == InstanceState::LAUNCHING)
    {
        inst.state = state::next_instance(inst.state, InstanceEvent::Ready)?;
    }
    retire_replaced(insts)
}

/// Instances whose replacement serves now are terminated (they drain first).
fn retire_replaced(insts: &mut [InstanceRecord]) -> Result<(), StoreError> {
    let serving: Vec<(String, String)> = insts
        .iter()
        .filter(|i| i.state == InstanceState::EXECUTING)
        .filter_map(|i| Some((i.replaces.clone()?, i.id.clone())))
        .collect();
    for (old, new) in serving {
        let old = instance_mut(insts, &old)?;
        if matches!(
            old.state.status,
            InstanceStatus::Launching | InstanceStatus::Executing | InstanceStatus::Cooling
        ) {
            old.state = state::next_instance(old.state, InstanceEvent::Terminate)?;
            if old.reason.is_empty() {
                old.reason = format!("replaced by {new}");
            }
        }
    }
    Ok(())
}

impl Control {
    pub(crate) fn live_instance(&self, instance_id: &str) -> Result<InstanceRecord> {
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

    /// A live instance that is not closing: its agent may (re)join and report in.
    fn open_instance(&self, instance_id: &str) -> Result<InstanceRecord> {
        let inst = self.live_instance(instance_id)?;
        if inst.state.status == InstanceStatus::Closing {
            return Err(Error::FailedPrecondition(format!(
                "instance {instance_id} is closing"
            )));
        }
        Ok(inst)
    }

    /// An agent joined over gRPC at `agent.address`: as an instance's agent,
    /// or (no instance id) as an idle pool machine of type `agent.machine_id`.
    pub async fn register(&self, agent: Registration) -> Result<()> {
        if agent.instance_id.is_empty() {
            return self.join_pool(agent);
        }
        let inst = self.open_instance(&agent.instance_id)?;
        let tls = self.settings().agent_tls.as_ref();
        let link = link::grpc(&agent.address, tls).map_err(Error::InvalidArgument)?;
        let pool_type = self
            .catalog()
            .resolve(&inst.machine_id)
            .filter(|m| m.kind.provider == POOL)
            .map(|m| m.kind.name);
        if let (Some(pool), Some(kind)) = (self.inner.providers.pool(), pool_type) {
            if !agent.agent_id.is_empty() {
                pool.join(&agent.agent_id, &kind, &agent.address, &agent.instance_id)
                    .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            }
        }
        self.attach(
            &agent.instance_id,
            &agent.address,
            link,
            agent.hardware,
            &agent.agent_id,
        )
        .await
    }

    fn join_pool(&self, agent: Registration) -> Result<()> {
        let pool = self.inner.providers.pool().ok_or_else(|| {
            Error::FailedPrecondition("this scheduler runs no pool provider".into())
        })?;
        if agent.agent_id.is_empty() {
            return Err(Error::InvalidArgument(
                "a pool agent must send its agent_id".into(),
            ));
        }
        let pool_types: Vec<&str> = self
            .catalog()
            .types()
            .filter(|t| t.provider == POOL)
            .map(|t| t.name.as_str())
            .collect();
        let machine_type = agent.machine_id.trim_end_matches(".od");
        if !pool_types.contains(&machine_type) {
            return Err(Error::InvalidArgument(format!(
                "machine id `{}` is not a pool machine type in the catalog; add a [[machine]] \
                 with provider = \"pool\" to the scheduler's --catalog (pool types now: {})",
                agent.machine_id,
                if pool_types.is_empty() {
                    "none".to_string()
                } else {
                    pool_types.join(", ")
                }
            )));
        }
        pool.join(&agent.agent_id, machine_type, &agent.address, "")
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // Idle, yet the pool has it run an instance that has ended: free it.
        if let Some(ran) = pool.running(&agent.agent_id) {
            if self.open_instance(&ran).is_err() {
                pool.free(&agent.agent_id);
            }
        }
        self.capacity().added();
        Ok(())
    }

    /// Remembers how to reach the instance's agent and sends it its job.
    /// `host`: the pool agent that runs it, if any.
    #[tracing::instrument(skip(self, link, hardware))]
    pub async fn attach(
        &self,
        instance_id: &str,
        address: &str,
        link: Link,
        hardware: HardwareRecord,
        host: &str,
    ) -> Result<()> {
        let inst = self.live_instance(instance_id)?;
        self.set_agent(instance_id, link.clone());
        let known = inst.agent_address == address && inst.host == host && inst.hardware.is_some();
        let job = if known {
            // Registered again (it lost the scheduler for a while): nothing to record.
            self.store()
                .job(&inst.job_id)?
                .ok_or_else(|| Error::NotFound(format!("job {} is gone", inst.job_id)))?
        } else {
            // An agent back at another address: requests must not go to the old one.
            if let Ok(Some(job)) = self.store().job(&inst.job_id) {
                self.router()
                    .remove_backend(&job.owner, &job.model_name, instance_id);
            }
            self.apply(&inst.job_id, |_, insts| {
                let inst = instance_mut(insts, instance_id)?;
                inst.agent_address = address.to_string();
                inst.hardware = Some(hardware.clone());
                inst.host = host.to_string();
                Ok(vec![Mark::phase(instance_id, "agent connected")])
            })
            .await?
            .job
        };
        if job.state.is_ended() {
            return Ok(());
        }
        self.last_seen(instance_id, None);
        self.prepare(&job, instance_id, link);
        Ok(())
    }

    /// Sends the job to its instance's agent (in the background); an agent
    /// that refuses it fails the instance.
    pub(crate) fn prepare(&self, job: &JobRecord, instance_id: &str, link: Link) {
        let request = PrepareRequest {
            job_id: job.id.clone(),
            artifact_digest: job.artifact_digest.clone(),
            kind: match job.kind {
                JobKind::Inference => aibro_proto::v1::JobKind::Inference,
                JobKind::Training => aibro_proto::v1::JobKind::Training,
            } as i32,
            batching: (job.kind == JobKind::Inference).then(|| crate::convert::batching(job)),
        };
        let this = self.clone();
        let instance_id = instance_id.to_string();
        self.spawn(async move {
            if let Err(status) = link.prepare(request).await {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) {
                    // Not a refusal: the connect timeout or the heartbeats
                    // tell whether the agent is gone.
                    return tracing::warn!(
                        instance_id,
                        "Prepare did not reach the agent: {status}"
                    );
                }
                let reason = format!("the agent refused the job: {}", status.message());
                if let Ok(Some(inst)) = this.store().instance(&instance_id) {
                    this.instance_failed(&inst, reason).await;
                }
            }
        });
    }

    /// A heartbeat from a live instance's agent, or from an idle pool agent
    /// (no instance id).
    pub fn heartbeat(
        &self,
        instance_id: &str,
        agent_id: &str,
        heartbeat: &aibro_proto::v1::Heartbeat,
    ) -> Result<()> {
        if instance_id.is_empty() {
            let known = self
                .inner
                .providers
                .pool()
                .is_some_and(|p| p.seen(agent_id));
            return if known {
                Ok(())
            } else {
                Err(Error::NotFound(format!(
                    "pool agent `{agent_id}` is not in the pool; register again"
                )))
            };
        }
        self.open_instance(instance_id)?;
        self.last_seen(instance_id, Some(heartbeat));
        Ok(())
    }

    /// A phase report from an agent.
    #[tracing::instrument(skip(self, report), fields(phase = ?report.phase()))]
    pub async fn report(&self, instance_id: &str, report: PhaseReport) -> Result<()> {
        let inst = self.live_instance(instance_id)?;
        self.last_seen(instance_id, None);
        if report.job_id != inst.job_id {
            return Err(Error::FailedPrecondition(format!(
                "instance {instance_id} works for job {}, not {}",
                inst.job_id, report.job_id
            )));
        }
        let phase = report.phase();
        match phase {
            AgentPhase::Failed => {
                let reason = if report.traceback.is_empty() {
                    report.message
                } else {
                    report.traceback
                };
                // A cooling instance may wait for its job to be DEPLOYED
                // before it can be closed: not in the agent's call.
                let this = self.clone();
                self.spawn(async move { this.instance_failed(&inst, reason).await });
                return Ok(());
            }
            AgentPhase::Returned => {
                return self
                    .returned(&inst, report.result_digest, report.result_size)
                    .await;
            }
            _ => {}
        }
        let (event, mark) = match phase {
            AgentPhase::GearingUpEnv => (JobEvent::GearingUp, "gearing up env"),
            AgentPhase::ModelLoading if report.env_cached => (JobEvent::Loading, "env reused"),
            AgentPhase::ModelLoading => (JobEvent::Loading, "env geared up"),
            AgentPhase::Serving if inst.role == Role::Trainer => {
                (JobEvent::Serving, "ready to train")
            }
            AgentPhase::Serving => (JobEvent::Serving, "model loaded"),
            AgentPhase::Training => (JobEvent::TrainingStarted, "training"),
            AgentPhase::Returning => (JobEvent::Returning, "returning"),
            AgentPhase::Unspecified | AgentPhase::Failed | AgentPhase::Returned => {
                return Err(Error::InvalidArgument("phase is unspecified".into()))
            }
        };
        let serving = phase == AgentPhase::Serving;
        let training = phase == AgentPhase::Training;
        if serving {
            self.serve_before_commit(&inst);
        }
        let committed = self
            .apply(&inst.job_id, |job, insts| {
                if job.state.is_ended() {
                    return Ok(vec![]);
                }
                let inst = instance_mut(insts, instance_id)?;
                if inst.role.is_primary() {
                    advance(job, event);
                }
                if serving {
                    inst.ready = inst.state == InstanceState::LAUNCHING;
                }
                if training && inst.state == InstanceState::LAUNCHING {
                    inst.state = state::next_instance(inst.state, InstanceEvent::Ready)?;
                }
                promote_ready(job, insts)?;
                let mut mark = Mark::phase(instance_id, mark);
                mark.message = report.message.clone();
                Ok(vec![mark])
            })
            .await?;
        crate::crash::point("report.applied");
        let job = &committed.job;
        if serving && job.kind == JobKind::Training {
            if job.state == JobState::new(JobStatus::Queuing, JobSubstatus::SendingModelAndData) {
                self.start_training(job, instance_id);
            }
        } else if serving {
            for inst in committed.instances.iter().filter(|i| i.state.is_serving()) {
                self.serve(job, inst);
            }
            // Traffic has moved to their replacements: drain and terminate.
            for old in committed
                .instances
                .iter()
                .filter(|i| i.state == InstanceState::TERMINATING && i.replaced_by.is_some())
            {
                self.start_close(old.id.clone());
            }
        }
        Ok(())
    }

    /// An inference instance that is about to be recorded EXECUTING (a
    /// standby, or any instance of a DEPLOYED job) takes requests already, so
    /// that whoever sees the record can reach it.
    fn serve_before_commit(&self, inst: &InstanceRecord) {
        let Ok(Some(job)) = self.store().job(&inst.job_id) else {
            return;
        };
        let executing_next = inst.state == InstanceState::LAUNCHING
            && (inst.role == Role::Standby || job.state.status == JobStatus::Deployed);
        if job.kind == JobKind::Inference && executing_next {
            self.serve(&job, inst);
        }
    }

    /// Puts the instance's agent behind the job's route (idempotent).
    pub(crate) fn serve(&self, job: &JobRecord, inst: &InstanceRecord) {
        let Some(route) = self.router().route(&job.owner, &job.model_name) else {
            return;
        };
        if route.job_id != job.id || route.backend(&inst.id).is_some() {
            return;
        }
        if let Some(link) = self.link_to(inst) {
            let backend = Backend::new(&inst.id, inst.role, link);
            self.router()
                .add_backend(&job.owner, &job.model_name, backend);
        }
    }

    /// The instance's agent: as it registered, or (it reported to a
    /// restarted scheduler before registering again) at its stored address.
    pub(crate) fn link_to(&self, inst: &InstanceRecord) -> Option<Link> {
        if let Some(link) = self.agent(&inst.id) {
            return Some(link);
        }
        if inst.agent_address.is_empty() {
            return None;
        }
        let tls = self.settings().agent_tls.as_ref();
        let link = link::grpc(&inst.agent_address, tls).ok()?;
        self.set_agent(&inst.id, link.clone());
        Some(link)
    }

    /// Opens the job's route (no backends until an instance serves).
    pub(crate) fn open_route(&self, job: &JobRecord) {
        if job.kind == JobKind::Inference && !job.state.is_ended() {
            let route = self.router().open(
                &job.owner,
                &job.model_name,
                &job.id,
                &job.client_ids,
                job.cooling.is_some(),
            );
            if job.cooling.is_some() {
                self.supervise_cooling(job.clone(), route);
            }
        }
    }
}

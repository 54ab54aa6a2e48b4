//! What agents tell the scheduler: registration (then the job is sent with
//! Prepare), phase reports, heartbeats. Reports may arrive twice (agents
//! re-send after reconnecting), so each is applied only where it still moves
//! the job forward.

use crate::auth::AgentCaller;
use crate::error::{Error, Result};
use crate::link::Link;
use crate::provider::pool::POOL;
use crate::records::{HardwareRecord, InstanceRecord, JobRecord, TimelineNote};
use crate::state::{
    self, InstanceEvent, InstanceState, InstanceStatus, JobEvent, JobKind, JobState, JobStatus,
    JobSubstatus, Role,
};
use crate::store::{Committed, StoreError};

use super::links::AgentLoad;
use super::{instance_mut, Control};

/// What a registration gives the agent.
#[derive(Debug, Default)]
pub struct Issued {
    /// Its own credential (a pool agent's join, a bootstrap trade).
    pub credential: Option<String>,
    /// Its own certificate (a bootstrap trade over TLS).
    pub tls: Option<AgentTls>,
}

/// A certificate and its key, PEM.
#[derive(Debug)]
pub struct AgentTls {
    pub cert_pem: String,
    pub key_pem: String,
}

/// An agent's registration.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Empty: an idle pool agent.
    pub instance_id: String,
    pub agent_id: String,
    pub machine_id: String,
    pub address: String,
    pub hardware: HardwareRecord,
    /// The sandbox the agent runs user code in.
    pub sandbox: String,
}

/// A phase an agent reports for its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedPhase {
    GearingUpEnv,
    /// `env_cached`: the environment was reused, nothing was installed.
    ModelLoading {
        env_cached: bool,
    },
    Serving,
    Training,
    Returning,
    /// The training outputs are uploaded.
    Returned {
        digest: String,
        size: u64,
    },
    /// The traceback, or what else went wrong.
    Failed {
        reason: String,
    },
}

/// A phase report from an instance's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub job_id: String,
    pub phase: ReportedPhase,
    pub message: String,
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

/// The job event and timeline phase of a report that moves the job on.
fn progress_of(phase: &ReportedPhase, role: Role) -> Option<(JobEvent, &'static str)> {
    Some(match phase {
        ReportedPhase::GearingUpEnv => (JobEvent::GearingUp, "gearing up env"),
        ReportedPhase::ModelLoading { env_cached: true } => (JobEvent::Loading, "env reused"),
        ReportedPhase::ModelLoading { env_cached: false } => (JobEvent::Loading, "env geared up"),
        ReportedPhase::Serving if role == Role::Trainer => (JobEvent::Serving, "ready to train"),
        ReportedPhase::Serving => (JobEvent::Serving, "model loaded"),
        ReportedPhase::Training => (JobEvent::TrainingStarted, "training"),
        ReportedPhase::Returning => (JobEvent::Returning, "returning"),
        ReportedPhase::Returned { .. } | ReportedPhase::Failed { .. } => return None,
    })
}

impl Control {
    /// An agent joined over gRPC at `agent.address`: as an instance's agent,
    /// or (no instance id) as an idle pool machine of type `agent.machine_id`.
    /// `caller` may do so (see `authorize_agent`). Returns the credential
    /// issued to a pool agent that joined with the join token.
    pub async fn register(&self, caller: &AgentCaller, agent: Registration) -> Result<Issued> {
        if agent.instance_id.is_empty() {
            let credential = self.join_pool(caller, agent).await?;
            return Ok(Issued {
                credential,
                tls: None,
            });
        }
        if let AgentCaller::Bootstrapping(token) = caller {
            return self.trade_bootstrap(token, &agent).await;
        }
        let inst = self.open_instance(&agent.instance_id)?;
        let credential = self.agent_credential(&inst.id, &inst.machine_id, &agent.agent_id)?;
        let link = self
            .links()
            .connect(&agent.address, &credential)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let pool_type = self
            .catalog()
            .resolve(&inst.machine_id)
            .filter(|m| m.kind.provider == POOL)
            .map(|m| m.kind.name);
        if let (Some(pool), Some(kind)) = (self.machines().pool(), pool_type) {
            pool.join(
                &agent.agent_id,
                &kind,
                &agent.address,
                &agent.instance_id,
                &credential,
                &agent.hardware,
            )
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        }
        self.attach(&agent, link).await?;
        Ok(Issued::default())
    }

    /// A cloud instance's agent trades its one-time bootstrap token for the
    /// instance's credential (and, when agents are reached over TLS, its own
    /// certificate for its address); it registers again with that (the
    /// scheduler calls only agents that hold their credential).
    async fn trade_bootstrap(&self, token: &str, agent: &Registration) -> Result<Issued> {
        let tls = self.agent_certificate(&agent.address)?;
        let credential = self
            .auth()
            .credentials()
            .redeem_bootstrap(token, &agent.instance_id)
            .await
            .map_err(|e| Error::Auth(e.into()))?;
        tracing::info!(
            instance_id = agent.instance_id,
            tls = tls.is_some(),
            "bootstrap token traded for the agent's credential"
        );
        Ok(Issued {
            credential: Some(credential),
            tls,
        })
    }

    /// A certificate for the agent at `address`, when agents are reached over TLS.
    fn agent_certificate(&self, address: &str) -> Result<Option<AgentTls>> {
        if self.settings().agent_tls.is_none() {
            return Ok(None);
        }
        let issuer = self.settings().agent_issuer.as_ref().ok_or_else(|| {
            Error::FailedPrecondition("this scheduler reaches agents over TLS but holds no CA key (--tls-ca-key) to certify a cloud agent".into())
        })?;
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let (cert_pem, key_pem) = issuer
            .issue_pem("agent", &[host.to_string()])
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Some(AgentTls { cert_pem, key_pem }))
    }

    /// A pool agent joins idle. With the join token it joins as new: it
    /// leaves the pool for good first (what it held is lost; its old
    /// credential is revoked) and gets a new credential, returned.
    async fn join_pool(&self, caller: &AgentCaller, agent: Registration) -> Result<Option<String>> {
        let pool = self.machines().pool().ok_or_else(|| {
            Error::FailedPrecondition("this scheduler runs no pool provider".into())
        })?;
        if agent.agent_id.is_empty() {
            return Err(Error::InvalidArgument(
                "a pool agent must send its agent_id".into(),
            ));
        }
        let machine_type = self.pool_type(&agent.machine_id)?;
        let credentials = self.auth().credentials();
        let issued = match caller {
            AgentCaller::Joining => {
                pool.leave(&agent.agent_id);
                Some(credentials.issue_pool(&agent.agent_id).await?)
            }
            AgentCaller::Bound(_) => None,
            AgentCaller::Bootstrapping(_) => {
                return Err(Error::PermissionDenied(
                    "a bootstrap token is for an instance's agent, not a pool agent".into(),
                ))
            }
        };
        let credential = match &issued {
            Some(c) => c.clone(),
            None => credentials.pool(&agent.agent_id)?.ok_or_else(|| {
                Error::PermissionDenied(format!(
                    "pool agent {} holds no credential",
                    agent.agent_id
                ))
            })?,
        };
        pool.join(
            &agent.agent_id,
            machine_type,
            &agent.address,
            "",
            &credential,
            &agent.hardware,
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        // Idle, yet the pool has it run an instance that has ended: free it.
        if let Some(ran) = pool.running(&agent.agent_id) {
            if self.open_instance(&ran).is_err() {
                pool.free(&agent.agent_id);
            }
        }
        self.machines().capacity().added();
        Ok(issued)
    }

    /// The pool machine type of `machine_id` (its `.od` id too).
    fn pool_type<'a>(&self, machine_id: &'a str) -> Result<&'a str> {
        let pool_types: Vec<String> = self
            .catalog()
            .types()
            .filter(|t| t.provider == POOL)
            .map(|t| t.name)
            .collect();
        let machine_type = machine_id.trim_end_matches(".od");
        if pool_types.iter().any(|t| t == machine_type) {
            return Ok(machine_type);
        }
        Err(Error::InvalidArgument(format!(
            "machine id `{machine_id}` is not a pool machine type in the catalog; add a \
             [[machine]] with provider = \"pool\" to the scheduler's --catalog (pool types \
             now: {})",
            if pool_types.is_empty() {
                "none".to_string()
            } else {
                pool_types.join(", ")
            }
        )))
    }

    /// Remembers how to reach the instance's agent and sends it its job.
    /// `agent.agent_id`: the pool agent that runs it, if any.
    #[tracing::instrument(skip(self, link), fields(instance_id = %agent.instance_id))]
    pub(crate) async fn attach(&self, agent: &Registration, link: Link) -> Result<()> {
        let instance_id = agent.instance_id.as_str();
        let inst = self.live_instance(instance_id)?;
        self.links().set(instance_id, link.clone());
        let known = inst.agent_address == agent.address
            && inst.host == agent.agent_id
            && inst.sandbox == agent.sandbox
            && inst.hardware.is_some();
        let job = if known {
            // Registered again (it lost the scheduler for a while): nothing to record.
            self.store()
                .job(&inst.job_id)?
                .ok_or_else(|| Error::NotFound(format!("job {} is gone", inst.job_id)))?
        } else {
            self.record_agent(&inst, agent).await?
        };
        if job.state.is_ended() {
            return Ok(());
        }
        self.links().heard(instance_id, None);
        if job.dryrun {
            self.dry_run_on(job, link);
        } else {
            self.prepare(&job, instance_id, link);
        }
        Ok(())
    }

    /// Records where the instance's agent is, what it runs on and in which
    /// sandbox. An agent back at another address gets no requests at the old one.
    async fn record_agent(&self, inst: &InstanceRecord, agent: &Registration) -> Result<JobRecord> {
        if let Ok(Some(job)) = self.store().job(&inst.job_id) {
            self.router()
                .remove_backend(&job.owner, &job.model_name, &inst.id);
        }
        let id = inst.id.as_str();
        let committed = self
            .store()
            .update(&inst.job_id, |_, insts| {
                let inst = instance_mut(insts, id)?;
                inst.agent_address = agent.address.clone();
                inst.hardware = Some(agent.hardware.clone());
                inst.host = agent.agent_id.clone();
                inst.sandbox = agent.sandbox.clone();
                Ok(vec![TimelineNote {
                    message: format!("sandbox: {}", agent.sandbox),
                    ..TimelineNote::phase(id, "agent connected")
                }])
            })
            .await?;
        Ok(committed.job)
    }

    /// A heartbeat from a live instance's agent, or from an idle pool agent
    /// (no instance id).
    pub fn heartbeat(&self, instance_id: &str, agent_id: &str, load: AgentLoad) -> Result<()> {
        if instance_id.is_empty() {
            let known = self.machines().pool().is_some_and(|p| p.seen(agent_id));
            return if known {
                Ok(())
            } else {
                Err(Error::NotFound(format!(
                    "pool agent `{agent_id}` is not in the pool; register again"
                )))
            };
        }
        self.open_instance(instance_id)?;
        self.links().heard(instance_id, Some(load));
        Ok(())
    }

    /// A phase report from an instance's agent.
    #[tracing::instrument(skip(self, report), fields(phase = ?report.phase))]
    pub async fn report(&self, instance_id: &str, report: AgentReport) -> Result<()> {
        let inst = self.live_instance(instance_id)?;
        self.links().heard(instance_id, None);
        if report.job_id != inst.job_id {
            return Err(Error::FailedPrecondition(format!(
                "instance {instance_id} works for job {}, not {}",
                inst.job_id, report.job_id
            )));
        }
        match report.phase {
            ReportedPhase::Failed { reason } => {
                // A cooling instance may wait for its job to be DEPLOYED
                // before it can be closed: not in the agent's call.
                let this = self.clone();
                self.spawn(async move { this.instance_failed(&inst, reason).await });
                Ok(())
            }
            ReportedPhase::Returned { digest, size } => self.returned(&inst, digest, size).await,
            phase => self.moved_on(&inst, &phase, &report.message).await,
        }
    }

    /// A report that moves the job on: recorded, then acted upon (a ready
    /// trainer starts training; a serving instance takes traffic and the
    /// instances it replaces drain).
    async fn moved_on(
        &self,
        inst: &InstanceRecord,
        phase: &ReportedPhase,
        message: &str,
    ) -> Result<()> {
        let (event, note) = progress_of(phase, inst.role)
            .ok_or_else(|| Error::InvalidArgument(format!("{phase:?} does not move a job on")))?;
        let serving = *phase == ReportedPhase::Serving;
        if serving {
            self.serve_before_commit(inst);
        }
        let note = TimelineNote {
            message: message.to_string(),
            ..TimelineNote::phase(&inst.id, note)
        };
        let committed = self
            .record_progress(
                inst,
                event,
                serving,
                *phase == ReportedPhase::Training,
                note,
            )
            .await?;
        crate::crash::point("report.applied");
        if serving {
            self.now_serving(&committed, &inst.id);
        }
        Ok(())
    }

    /// Records the report's step in the job and its instances.
    async fn record_progress(
        &self,
        inst: &InstanceRecord,
        event: JobEvent,
        serving: bool,
        training: bool,
        note: TimelineNote,
    ) -> Result<Committed> {
        let id = inst.id.as_str();
        let committed = self
            .store()
            .update(&inst.job_id, |job, insts| {
                if job.state.is_ended() {
                    return Ok(vec![]);
                }
                let inst = instance_mut(insts, id)?;
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
                Ok(vec![note.clone()])
            })
            .await?;
        Ok(committed)
    }

    /// An instance's agent serves: a trainer starts training; inference
    /// instances that may take traffic join the route, and those they
    /// replace drain and are terminated.
    fn now_serving(&self, committed: &Committed, instance_id: &str) {
        let job = &committed.job;
        if job.kind == JobKind::Training {
            if job.state == JobState::new(JobStatus::Queuing, JobSubstatus::SendingModelAndData) {
                self.start_training(job, instance_id);
            }
            return;
        }
        for inst in committed.instances.iter().filter(|i| i.state.is_serving()) {
            self.serve(job, inst);
        }
        for old in committed
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::TERMINATING && i.replaced_by.is_some())
        {
            self.start_close(old.id.clone());
        }
    }
}

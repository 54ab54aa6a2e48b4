//! Agents as callers and as callees: what a gateway call's credential may
//! speak for (the join token only lets a new pool agent join), and the link to
//! an instance's agent, carrying the credential that agent holds (derived
//! again after a scheduler restart).

use crate::auth::AgentCaller;
use crate::error::{Error, Result};
use crate::link::Link;
use crate::provider::pool::POOL;
use crate::records::{AgentBinding, InstanceRecord};

use super::Control;

/// What an agent's gateway call speaks for.
#[derive(Debug, Clone, Copy)]
pub enum AgentClaim<'a> {
    /// Register as this instance ("": an idle pool agent) and agent id.
    Register {
        instance_id: &'a str,
        agent_id: &'a str,
    },
    /// A report or heartbeat of this instance ("": an idle pool agent's heartbeat).
    Report {
        instance_id: &'a str,
        agent_id: &'a str,
    },
    /// FetchArtifact of this digest.
    Artifact(&'a str),
    /// UploadResult of this job.
    Result(&'a str),
}

fn denied(why: String) -> Error {
    Error::PermissionDenied(why)
}

impl Control {
    /// Whether `caller` may make `claim`: an instance credential speaks only
    /// for its instance and that instance's job; a pool credential for its
    /// agent id, the instance the pool gave that agent and its job.
    pub fn authorize_agent(&self, caller: &AgentCaller, claim: AgentClaim<'_>) -> Result<()> {
        let binding = match (caller, claim) {
            (AgentCaller::Bound(binding), _) => binding,
            (
                AgentCaller::Joining,
                AgentClaim::Register {
                    instance_id: "", ..
                },
            ) => return Ok(()),
            (AgentCaller::Bootstrapping(token), AgentClaim::Register { instance_id, .. }) => {
                return self
                    .auth()
                    .credentials()
                    .check_bootstrap(token, instance_id)
                    .map_err(|e| Error::Auth(e.into()))
            }
            (AgentCaller::Bootstrapping(_), _) => {
                return Err(denied(
                    "a bootstrap token only lets an instance's agent trade it for its \
                     credential (Register); every other call needs that credential"
                        .into(),
                ))
            }
            (AgentCaller::Joining, _) => {
                return Err(denied(
                    "the join token only lets a new pool agent join (Register without an \
                     instance id); every other call needs the agent's own credential"
                        .into(),
                ))
            }
        };
        match claim {
            AgentClaim::Register {
                instance_id,
                agent_id,
            }
            | AgentClaim::Report {
                instance_id,
                agent_id,
            } => self.may_speak_for(binding, instance_id, agent_id),
            AgentClaim::Artifact(digest) => match self.job_of(binding)? {
                Some(job) if job.artifact_digest == digest => Ok(()),
                _ => Err(denied(format!(
                    "artifact {digest} is not the job of this agent's instance"
                ))),
            },
            AgentClaim::Result(job_id) => match self.job_of(binding)? {
                Some(job) if job.id == job_id => Ok(()),
                _ => Err(denied(format!("this agent does not run job {job_id}"))),
            },
        }
    }

    fn may_speak_for(
        &self,
        binding: &AgentBinding,
        instance_id: &str,
        agent_id: &str,
    ) -> Result<()> {
        match binding {
            AgentBinding::Instance(own) if own == instance_id => Ok(()),
            AgentBinding::Instance(own) => Err(denied(format!(
                "this credential speaks for instance {own}, not `{instance_id}`"
            ))),
            AgentBinding::Pool(own) if own != agent_id => Err(denied(format!(
                "this credential speaks for pool agent {own}, not `{agent_id}`"
            ))),
            AgentBinding::Pool(_) if instance_id.is_empty() => Ok(()),
            AgentBinding::Pool(own) => {
                let holds = self
                    .machines()
                    .pool()
                    .is_some_and(|p| p.holds(own, instance_id));
                if holds {
                    Ok(())
                } else {
                    Err(denied(format!(
                        "pool agent {own} was not given instance {instance_id}"
                    )))
                }
            }
        }
    }

    /// The job of the instance the credential speaks for now, if any.
    fn job_of(&self, binding: &AgentBinding) -> Result<Option<crate::records::JobRecord>> {
        let instance_id = match binding {
            AgentBinding::Instance(id) => Some(id.clone()),
            AgentBinding::Pool(agent_id) => {
                self.machines().pool().and_then(|p| p.held_by(agent_id))
            }
        };
        let Some(inst) = instance_id.and_then(|id| self.store().instance(&id).transpose()) else {
            return Ok(None);
        };
        Ok(self.store().job(&inst?.job_id)?)
    }

    /// The credential the agent of `instance_id` holds: that of the pool agent
    /// `host` on a pool machine, the instance's own otherwise.
    pub(crate) fn agent_credential(
        &self,
        instance_id: &str,
        machine_id: &str,
        host: &str,
    ) -> Result<String> {
        let credentials = self.auth().credentials();
        let pooled = self
            .catalog()
            .resolve(machine_id)
            .is_some_and(|m| m.kind.provider == POOL);
        if !pooled {
            return Ok(credentials.instance(instance_id));
        }
        credentials.pool(host)?.ok_or_else(|| {
            Error::FailedPrecondition(format!("pool agent `{host}` holds no credential"))
        })
    }

    /// A new link to the agent of `instance_id` at `address`; `host`: the
    /// pool agent that runs it, if any.
    pub(crate) fn connect_agent(
        &self,
        instance_id: &str,
        machine_id: &str,
        host: &str,
        address: &str,
    ) -> Result<Link> {
        let credential = self.agent_credential(instance_id, machine_id, host)?;
        self.links()
            .connect(address, &credential)
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// The instance's agent: as it registered, or (it reported to a
    /// restarted scheduler before registering again) at its stored address.
    pub(crate) fn agent_link(&self, inst: &InstanceRecord) -> Option<Link> {
        if let Some(link) = self.links().get(&inst.id) {
            return Some(link);
        }
        if inst.agent_address.is_empty() {
            return None;
        }
        let link = self
            .connect_agent(&inst.id, &inst.machine_id, &inst.host, &inst.agent_address)
            .ok()?;
        self.links().set(&inst.id, link.clone());
        Some(link)
    }
}

//! The pool provider: agents started by hand (or by systemd) on GPU hosts
//! join as idle machines of a catalog type. Launch assigns an idle agent of
//! the type to the instance (`Agent.Assign`; it registers again under the
//! instance id and gets its job); stop parks it (the agent has already
//! unloaded the model and keeps the environment and the unpacked repo) and
//! keeps it reserved for the instance; start assigns it again; terminate
//! frees it for the next launch. Membership is live state: agents register
//! again after a scheduler restart, and reservations of stopped instances are
//! restored from the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aibro_proto::v1::{AssignRequest, StopRequest};
use futures::future::BoxFuture;
use futures::FutureExt;
use tonic::transport::ClientTlsConfig;

use super::{LaunchFor, Provider, ProviderError};
use crate::catalog::{Machine, MachineType};
use crate::link::Client;
use crate::records::HardwareRecord;

/// The provider name catalog types use.
pub const POOL: &str = "pool";
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a member does for an instance.
#[derive(Debug, Clone, PartialEq)]
enum Holds {
    Nothing,
    /// Runs the instance.
    Running(String),
    /// Keeps the stopped instance's disk.
    Parked(String),
}

struct Member {
    machine_type: String,
    /// What the agent found on its host when it registered (its GPUs).
    hardware: HardwareRecord,
    /// None until the agent registered (a reservation restored at start).
    client: Option<Client>,
    holds: Holds,
    last_seen: Instant,
}

impl Member {
    /// Not heard from yet: no address, holds nothing.
    fn new(machine_type: &str) -> Member {
        Member {
            machine_type: machine_type.to_string(),
            hardware: HardwareRecord::default(),
            client: None,
            holds: Holds::Nothing,
            last_seen: Instant::now(),
        }
    }
}

/// A member as the marketplace shows it: what it is and whether it is free,
/// never which instance (another user's) it runs.
#[derive(Debug, Clone)]
pub struct PoolAgent {
    pub agent_id: String,
    pub machine_type: String,
    /// `idle`, `running` or `parked` (keeps a stopped instance's disk).
    pub state: &'static str,
    pub hardware: HardwareRecord,
    pub seen_ago: Duration,
}

#[derive(Default)]
pub struct Pool {
    members: Mutex<HashMap<String, Member>>,
    /// How agents are reached over TLS; None: plain http.
    tls: Option<ClientTlsConfig>,
}

impl Pool {
    pub fn new(tls: Option<ClientTlsConfig>) -> Pool {
        Pool {
            members: Mutex::default(),
            tls,
        }
    }

    /// An agent registered: idle (`instance_id` empty) or running an instance
    /// it was assigned (before a scheduler restart). Updates a known member;
    /// the pool calls it with `credential`, the agent's own.
    pub fn join(
        &self,
        agent_id: &str,
        machine_type: &str,
        address: &str,
        instance_id: &str,
        credential: &str,
        hardware: &HardwareRecord,
    ) -> Result<(), ProviderError> {
        let client = crate::link::client(address, self.tls.as_ref(), credential)?;
        let mut members = self.members.lock().expect("pool lock");
        let member = members
            .entry(agent_id.to_string())
            .or_insert_with(|| Member::new(machine_type));
        member.machine_type = machine_type.to_string();
        member.client = Some(client);
        member.hardware = hardware.clone();
        member.last_seen = Instant::now();
        if !instance_id.is_empty() {
            member.holds = Holds::Running(instance_id.to_string());
        }
        tracing::info!(agent_id, machine_type, address, holds = ?member.holds, "pool agent joined");
        Ok(())
    }

    /// Every member, by agent id.
    pub fn agents(&self) -> Vec<PoolAgent> {
        let members = self.members.lock().expect("pool lock");
        let mut agents: Vec<PoolAgent> = members
            .iter()
            .map(|(id, m)| PoolAgent {
                agent_id: id.clone(),
                machine_type: m.machine_type.clone(),
                state: match m.holds {
                    Holds::Nothing => "idle",
                    Holds::Running(_) => "running",
                    Holds::Parked(_) => "parked",
                },
                hardware: m.hardware.clone(),
                seen_ago: m.last_seen.elapsed(),
            })
            .collect();
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        agents
    }

    /// The instance the member runs, as far as the pool knows.
    pub fn running(&self, agent_id: &str) -> Option<String> {
        match &self.members.lock().expect("pool lock").get(agent_id)?.holds {
            Holds::Running(instance_id) => Some(instance_id.clone()),
            _ => None,
        }
    }

    /// The member is free again (the instance it ran has ended).
    pub fn free(&self, agent_id: &str) {
        self.set_holds(agent_id, Holds::Nothing);
    }

    /// A heartbeat from an idle member; false if it is not (or no longer) known.
    pub fn seen(&self, agent_id: &str) -> bool {
        match self.members.lock().expect("pool lock").get_mut(agent_id) {
            Some(m) => {
                m.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Whether the pool gave `instance_id` to `agent_id` (to run, or to keep
    /// its disk): only then may the agent speak for it.
    pub fn holds(&self, agent_id: &str, instance_id: &str) -> bool {
        self.members
            .lock()
            .expect("pool lock")
            .get(agent_id)
            .is_some_and(Self::holding(instance_id))
    }

    /// The instance the member runs or keeps the disk of, if any.
    pub fn held_by(&self, agent_id: &str) -> Option<String> {
        match &self.members.lock().expect("pool lock").get(agent_id)?.holds {
            Holds::Running(id) | Holds::Parked(id) => Some(id.clone()),
            Holds::Nothing => None,
        }
    }

    /// Restores, at start, that `agent_id` runs (`running`) or keeps the
    /// disk of a stopped instance.
    pub fn reserve(&self, agent_id: &str, machine_type: &str, instance_id: &str, running: bool) {
        let id = instance_id.to_string();
        self.members
            .lock()
            .expect("pool lock")
            .entry(agent_id.to_string())
            .or_insert_with(|| Member::new(machine_type))
            .holds = if running {
            Holds::Running(id)
        } else {
            Holds::Parked(id)
        };
    }

    /// The agent leaves the pool (it joins again as new).
    pub fn leave(&self, agent_id: &str) {
        self.members.lock().expect("pool lock").remove(agent_id);
    }

    /// Members per (machine type, what they hold: `idle`, `running`, `parked`).
    pub fn census(&self) -> HashMap<(String, &'static str), i64> {
        let mut counts = HashMap::new();
        for m in self.members.lock().expect("pool lock").values() {
            let holds = match m.holds {
                Holds::Nothing => "idle",
                Holds::Running(_) => "running",
                Holds::Parked(_) => "parked",
            };
            *counts.entry((m.machine_type.clone(), holds)).or_default() += 1;
        }
        counts
    }

    /// Forgets idle members silent for `limit`.
    pub fn drop_silent(&self, limit: Duration) {
        let mut members = self.members.lock().expect("pool lock");
        let silent: Vec<String> = members
            .iter()
            .filter(|(_, m)| m.holds == Holds::Nothing && m.last_seen.elapsed() >= limit)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &silent {
            tracing::warn!(agent_id = id, "pool agent silent; it leaves the pool");
            members.remove(id);
        }
    }

    /// Changes what a member holds, with `pick` choosing the member; returns
    /// its client and what it held before, for undoing.
    fn take(
        &self,
        pick: impl Fn(&Member) -> bool,
        holds: Holds,
    ) -> Option<(String, Client, Holds)> {
        let mut members = self.members.lock().expect("pool lock");
        let (id, member) = members
            .iter_mut()
            .filter(|(_, m)| m.client.is_some())
            .find(|(_, m)| pick(m))?;
        let before = std::mem::replace(&mut member.holds, holds);
        Some((id.clone(), member.client.clone()?, before))
    }

    fn set_holds(&self, agent_id: &str, holds: Holds) {
        if let Some(m) = self.members.lock().expect("pool lock").get_mut(agent_id) {
            m.holds = holds;
        }
    }

    /// Tells the member to run as `instance_id` ("" = idle); on failure the
    /// member goes back to holding `before`.
    async fn assign(
        &self,
        agent_id: &str,
        mut client: Client,
        instance_id: &str,
        before: Holds,
    ) -> Result<(), ProviderError> {
        let request = AssignRequest {
            instance_id: instance_id.to_string(),
        };
        let result = tokio::time::timeout(ASSIGN_TIMEOUT, client.assign(request)).await;
        let reason = match result {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(status)) => status.message().to_string(),
            Err(_) => format!("no answer within {ASSIGN_TIMEOUT:?}"),
        };
        self.set_holds(agent_id, before);
        Err(ProviderError::AgentRefused {
            agent_id: agent_id.to_string(),
            instance: if instance_id.is_empty() {
                "nothing".into()
            } else {
                instance_id.to_string()
            },
            reason,
        })
    }

    fn holding(instance_id: &str) -> impl Fn(&Member) -> bool + '_ {
        move |m| matches!(&m.holds, Holds::Running(i) | Holds::Parked(i) if i == instance_id)
    }
}

impl Provider for Pool {
    fn launch<'a>(
        &'a self,
        instance_id: &'a str,
        machine: &'a Machine,
        _launch_for: LaunchFor<'a>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            // An idle agent that does not answer leaves the pool (it joins
            // again when it is back); the next one is tried.
            loop {
                let (agent_id, client, before) = self
                    .take(
                        |m| m.holds == Holds::Nothing && m.machine_type == machine.kind.name,
                        Holds::Running(instance_id.to_string()),
                    )
                    .ok_or_else(|| ProviderError::NoIdleAgent(machine.kind.name.clone()))?;
                // Whatever an earlier job left on it goes first.
                let mut wipe_client = client.clone();
                let wipe = wipe_client.stop(StopRequest { terminate: true });
                let wiped = matches!(tokio::time::timeout(ASSIGN_TIMEOUT, wipe).await, Ok(Ok(_)));
                let assigned = if wiped {
                    self.assign(&agent_id, client, instance_id, before).await
                } else {
                    self.set_holds(&agent_id, before);
                    Err(ProviderError::NotWiped(agent_id.clone()))
                };
                match assigned {
                    Ok(()) => {
                        tracing::info!(agent_id, instance_id, "pool agent assigned");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pool agent unreachable; it leaves the pool");
                        self.leave(&agent_id);
                    }
                }
            }
        }
        .boxed()
    }

    fn stop<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            let parked = Holds::Parked(instance_id.to_string());
            if let Some((agent_id, client, _)) =
                self.take(Self::holding(instance_id), parked.clone())
            {
                // Parked either way: an agent that does not answer is idle
                // when it comes back, and start assigns it again.
                if let Err(e) = self.assign(&agent_id, client, "", parked).await {
                    tracing::warn!(error = %e, "pool agent not told to park");
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn start<'a>(
        &'a self,
        instance_id: &'a str,
        _machine: &'a Machine,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            let running = Holds::Running(instance_id.to_string());
            let (agent_id, client, before) = self
                .take(Self::holding(instance_id), running)
                .ok_or_else(|| ProviderError::KeeperGone(instance_id.to_string()))?;
            self.assign(&agent_id, client, instance_id, before).await
        }
        .boxed()
    }

    fn terminate<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            let Some((agent_id, mut client, _)) =
                self.take(Self::holding(instance_id), Holds::Nothing)
            else {
                // Not known (any more): a reservation without its agent is dropped.
                let mut members = self.members.lock().expect("pool lock");
                members.retain(|_, m| !Self::holding(instance_id)(m));
                return Ok(());
            };
            // Wipes the job's files, also those a parked agent kept.
            let wipe = client.stop(StopRequest { terminate: true });
            let wiped = tokio::time::timeout(ASSIGN_TIMEOUT, wipe).await;
            let freed = match wiped {
                Ok(Ok(_)) => self.assign(&agent_id, client, "", Holds::Nothing).await,
                Ok(Err(_)) | Err(_) => Err(ProviderError::NotWiped(agent_id.clone())),
            };
            if let Err(e) = freed {
                // It may come back with the files: it joins again as new.
                tracing::warn!(agent_id, error = %e, "pool agent unreachable; it leaves the pool");
                self.leave(&agent_id);
            }
            Ok(())
        }
        .boxed()
    }

    fn stopped_holds_machine(&self) -> bool {
        true
    }

    fn capacity(&self, kind: &MachineType) -> Option<u32> {
        let members = self.members.lock().expect("pool lock");
        let n = members
            .values()
            .filter(|m| m.machine_type == kind.name)
            .count();
        Some(n as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Market};

    fn machine() -> Machine {
        let kind = MachineType {
            name: "pool.cpu".into(),
            provider: POOL.into(),
            ..Catalog::shipped().resolve("local.small").unwrap().kind
        };
        Machine {
            id: "pool.cpu.od".into(),
            market: Market::OnDemand,
            kind,
        }
    }

    #[tokio::test]
    async fn members_count_as_capacity_and_a_silent_agent_is_not_assigned() {
        let pool = Pool::default();
        let m = machine();
        assert_eq!(pool.capacity(&m.kind), Some(0));
        // Nothing listens there: Assign fails and the member stays free.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = closed.local_addr().unwrap().to_string();
        drop(closed);
        pool.join(
            "a1",
            "pool.cpu",
            &address,
            "",
            "agent_a1",
            &HardwareRecord::default(),
        )
        .unwrap();
        pool.reserve("a2", "pool.cpu", "inst-stopped", false);
        assert!(pool.holds("a2", "inst-stopped") && !pool.holds("a1", "inst-stopped"));
        assert_eq!(pool.capacity(&m.kind), Some(2));
        let launch_for = LaunchFor {
            job_id: "job-1",
            role: crate::state::Role::Standby,
        };
        let err = pool.launch("inst-1", &m, launch_for).await.unwrap_err();
        assert!(err.to_string().contains("no idle pool agent"), "{err}");
        assert!(!pool.seen("a1"), "an unreachable agent leaves the pool");
        // The reservation has no agent yet: it cannot be started, only dropped.
        assert!(pool.start("inst-stopped", &m).await.is_err());
        pool.join(
            "a3",
            "pool.cpu",
            &address,
            "",
            "agent_a3",
            &HardwareRecord::default(),
        )
        .unwrap();
        pool.drop_silent(Duration::ZERO);
        assert!(!pool.seen("a3"), "a silent idle member leaves");
        assert_eq!(pool.capacity(&m.kind), Some(1), "the reservation stays");
        pool.terminate("inst-stopped").await.unwrap();
        assert_eq!(pool.capacity(&m.kind), Some(0));
    }
}

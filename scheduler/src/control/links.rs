//! The agents the scheduler can reach, by instance: a link to each (as it
//! registered, or at its stored address after a scheduler restart; see
//! `agents`) and when each was last heard from, with the load its last
//! heartbeat carried.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::ClientTlsConfig;

use crate::link::{self, Link};
use crate::records::GpuRecord;

/// What an agent's heartbeat says of its load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentLoad {
    /// Requests being served or waiting for a worker.
    pub in_flight: u32,
    /// Requests waiting for a free worker.
    pub queued: u32,
    /// Python workers alive, and how many the loaded job should have.
    pub workers_alive: u32,
    pub workers: u32,
    /// Every GPU with its memory in use now.
    pub gpus: Vec<GpuRecord>,
}

/// When an instance's agent was last heard from, and its load then.
#[derive(Debug, Clone)]
pub struct LastHeard {
    pub at: Instant,
    /// The same moment on the clock, for users.
    pub at_ms: u64,
    /// The last heartbeat's load (default until one came).
    pub load: AgentLoad,
}

pub(crate) struct AgentLinks {
    /// How agents are reached over TLS (the CA they chain to); None: plain http.
    tls: Option<ClientTlsConfig>,
    links: Mutex<HashMap<String, Link>>,
    heard: Mutex<HashMap<String, LastHeard>>,
}

impl AgentLinks {
    pub(crate) fn new(tls: Option<ClientTlsConfig>) -> Self {
        AgentLinks {
            tls,
            links: Mutex::default(),
            heard: Mutex::default(),
        }
    }

    /// A gRPC link to an agent at `address` (host:port) that holds `credential`.
    pub(crate) fn connect(
        &self,
        address: &str,
        credential: &str,
    ) -> Result<Link, link::BadAddress> {
        link::grpc(address, self.tls.as_ref(), credential)
    }

    pub(crate) fn get(&self, instance_id: &str) -> Option<Link> {
        self.links
            .lock()
            .expect("links lock")
            .get(instance_id)
            .cloned()
    }

    pub(crate) fn set(&self, instance_id: &str, link: Link) {
        self.links
            .lock()
            .expect("links lock")
            .insert(instance_id.to_string(), link);
    }

    /// Forgets the instance's agent (it closed): its link and when it was heard.
    pub(crate) fn forget(&self, instance_id: &str) {
        self.links.lock().expect("links lock").remove(instance_id);
        self.heard.lock().expect("heard lock").remove(instance_id);
    }

    /// The instance's agent was heard from (any call); `load` comes with heartbeats.
    pub(crate) fn heard(&self, instance_id: &str, load: Option<AgentLoad>) {
        let mut heard = self.heard.lock().expect("heard lock");
        let last = heard
            .entry(instance_id.to_string())
            .or_insert_with(|| LastHeard {
                at: Instant::now(),
                at_ms: 0,
                load: AgentLoad::default(),
            });
        last.at = Instant::now();
        last.at_ms = crate::clock::now_ms();
        if let Some(load) = load {
            last.load = load;
        }
    }

    /// What the instance's agent last reported, while it is live.
    pub(crate) fn last_heard(&self, instance_id: &str) -> Option<LastHeard> {
        self.heard
            .lock()
            .expect("heard lock")
            .get(instance_id)
            .cloned()
    }

    /// Every live instance's agent with what it last reported.
    pub(crate) fn all_heard(&self) -> Vec<(String, LastHeard)> {
        let heard = self.heard.lock().expect("heard lock");
        heard
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect()
    }

    /// Instances whose agent has been silent for `limit`; each is reported once.
    pub(crate) fn silent(&self, limit: Duration) -> Vec<String> {
        let mut heard = self.heard.lock().expect("heard lock");
        let silent: Vec<String> = heard
            .iter()
            .filter(|(_, last)| last.at.elapsed() >= limit)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &silent {
            heard.remove(id);
        }
        silent
    }
}

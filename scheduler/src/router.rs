//! The Predict hot path: an in-memory table (owner, model) → route, read
//! without locks (ArcSwap). The cooling instance serves first when it is
//! ready, the standby otherwise. No store access here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aibro_proto::v1::{agent_client::AgentClient, AgentPredictRequest};
use arc_swap::ArcSwap;
use tonic::transport::Channel;

use crate::auth::client_allowed;
use crate::state::Role;

#[derive(Clone)]
pub struct Backend {
    pub instance_id: String,
    pub role: Role,
    pub client: AgentClient<Channel>,
}

pub struct Route {
    pub job_id: String,
    clients: ArcSwap<Vec<String>>,
    backends: ArcSwap<Vec<Backend>>,
    /// Milliseconds since the router started, of the last request.
    last_request_ms: AtomicU64,
}

type Key = (String, String);

pub struct Router {
    table: ArcSwap<HashMap<Key, Arc<Route>>>,
    /// Serialises writers; readers never take it.
    write: Mutex<()>,
    started: std::time::Instant,
}

/// Why a prediction could not be routed.
#[derive(Debug)]
pub enum RouteError {
    NoRoute,
    ClientDenied,
    NoBackend,
    Agent(tonic::Status),
}

pub struct Routed {
    pub output: Vec<u8>,
    pub content_type: String,
    pub instance_id: String,
    pub role: Role,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            table: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            started: std::time::Instant::now(),
        }
    }
}

impl Router {
    fn key(owner: &str, model: &str) -> Key {
        (owner.to_string(), model.to_string())
    }

    fn edit(&self, f: impl FnOnce(&mut HashMap<Key, Arc<Route>>)) {
        let _guard = self.write.lock().expect("router lock");
        let mut next = HashMap::clone(&self.table.load());
        f(&mut next);
        self.table.store(Arc::new(next));
    }

    fn route(&self, owner: &str, model: &str) -> Option<Arc<Route>> {
        self.table.load().get(&Self::key(owner, model)).cloned()
    }

    /// Adds (or replaces) the instance's backend, creating the route if needed.
    pub fn add_backend(
        &self,
        owner: &str,
        model: &str,
        job_id: &str,
        clients: &[String],
        backend: Backend,
    ) {
        self.edit(|table| {
            let route = table.entry(Self::key(owner, model)).or_insert_with(|| {
                Arc::new(Route {
                    job_id: job_id.to_string(),
                    clients: ArcSwap::from_pointee(clients.to_vec()),
                    backends: ArcSwap::from_pointee(Vec::new()),
                    last_request_ms: AtomicU64::new(0),
                })
            });
            let mut backends: Vec<Backend> = route
                .backends
                .load()
                .iter()
                .filter(|b| b.instance_id != backend.instance_id)
                .cloned()
                .collect();
            backends.push(backend);
            // The cooling instance first.
            backends.sort_by_key(|b| b.role != Role::Cooling);
            route.backends.store(Arc::new(backends));
        });
    }

    pub fn set_clients(&self, owner: &str, model: &str, clients: &[String]) {
        if let Some(route) = self.route(owner, model) {
            route.clients.store(Arc::new(clients.to_vec()));
        }
    }

    pub fn remove_route(&self, owner: &str, model: &str) {
        self.edit(|table| {
            table.remove(&Self::key(owner, model));
        });
    }

    pub async fn predict(
        &self,
        owner: &str,
        client_id: &str,
        model: &str,
        payload: Vec<u8>,
        content_type: String,
    ) -> Result<Routed, RouteError> {
        let route = self.route(owner, model).ok_or(RouteError::NoRoute)?;
        if !client_allowed(&route.clients.load(), client_id) {
            return Err(RouteError::ClientDenied);
        }
        route
            .last_request_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let backend = route
            .backends
            .load()
            .first()
            .cloned()
            .ok_or(RouteError::NoBackend)?;
        let request = AgentPredictRequest {
            job_id: route.job_id.clone(),
            payload,
            content_type,
        };
        let response = backend
            .client
            .clone()
            .predict(request)
            .await
            .map_err(RouteError::Agent)?
            .into_inner();
        Ok(Routed {
            output: response.output,
            content_type: response.content_type,
            instance_id: backend.instance_id,
            role: backend.role,
        })
    }
}

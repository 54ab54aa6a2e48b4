//! The Predict hot path: an in-memory table (owner, model) → route, read
//! without locks (ArcSwap). The cooling instance serves first whenever it is
//! ready, the standby otherwise; a request that finds the cooling instance
//! missing asks for it to be woken. No store access here: the lifecycle
//! reads the per-backend atomics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aibro_proto::v1::AgentPredictRequest;
use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::client_allowed;
use crate::clock::now_ms;
use crate::link::Link;
use crate::state::Role;

#[derive(Clone)]
pub struct Backend {
    pub instance_id: String,
    pub role: Role,
    pub link: Link,
    in_flight: Arc<AtomicUsize>,
    /// When a request last reached it (clock ms), or when it began serving.
    last_request_ms: Arc<AtomicU64>,
    /// Requests it has served.
    served: Arc<AtomicU64>,
}

impl Backend {
    pub fn new(instance_id: &str, role: Role, link: Link) -> Self {
        Backend {
            instance_id: instance_id.to_string(),
            role,
            link,
            in_flight: Arc::default(),
            last_request_ms: Arc::new(AtomicU64::new(now_ms())),
            served: Arc::default(),
        }
    }

    pub fn last_request_ms(&self) -> u64 {
        self.last_request_ms.load(Ordering::Relaxed)
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    async fn call(&self, request: AgentPredictRequest) -> Result<Routed, tonic::Status> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(self.in_flight.clone());
        self.last_request_ms.fetch_max(now_ms(), Ordering::Relaxed);
        let response = self.link.predict(request).await?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(Routed {
            output: response.output,
            content_type: response.content_type,
            instance_id: self.instance_id.clone(),
            role: self.role,
        })
    }

    /// Waits until no request is in flight on this backend, or `limit` passed.
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Decrements the in-flight count when a request ends, however it ends.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

pub struct Route {
    pub job_id: String,
    clients: ArcSwap<Vec<String>>,
    backends: ArcSwap<Vec<Backend>>,
    /// The job has a cooling instance that requests should wake.
    has_cooling: bool,
    /// Set when a request found the cooling instance missing; the lifecycle
    /// takes it (so a burst wakes the instance once).
    wake_requested: AtomicBool,
    wake: Notify,
    /// Cancelled when the route closes (the job ended).
    pub closed: CancellationToken,
}

impl Route {
    /// Waits until a request asks for the cooling instance, and takes the ask.
    pub async fn wake_requested(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.wake_requested.swap(false, Ordering::AcqRel) {
                return;
            }
            notified.await;
        }
    }

    /// Forgets asks made while the cooling instance was coming up anyway.
    pub fn clear_wake(&self) {
        self.wake_requested.store(false, Ordering::Release);
    }

    fn request_wake(&self) {
        if !self.wake_requested.swap(true, Ordering::AcqRel) {
            self.wake.notify_waiters();
        }
    }

    pub fn backend(&self, instance_id: &str) -> Option<Backend> {
        self.backends
            .load()
            .iter()
            .find(|b| b.instance_id == instance_id)
            .cloned()
    }
}

type Key = (String, String);

pub struct Router {
    table: ArcSwap<HashMap<Key, Arc<Route>>>,
    /// Serialises writers; readers never take it.
    write: Mutex<()>,
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
        }
    }
}

impl Router {
    fn key(owner: &str, model: &str) -> Key {
        (owner.to_string(), model.to_string())
    }

    fn edit<T>(&self, f: impl FnOnce(&mut HashMap<Key, Arc<Route>>) -> T) -> T {
        let _guard = self.write.lock().expect("router lock");
        let mut next = HashMap::clone(&self.table.load());
        let out = f(&mut next);
        self.table.store(Arc::new(next));
        out
    }

    pub fn route(&self, owner: &str, model: &str) -> Option<Arc<Route>> {
        self.table.load().get(&Self::key(owner, model)).cloned()
    }

    /// The job's route, created (without backends) if it has none yet.
    pub fn open(
        &self,
        owner: &str,
        model: &str,
        job_id: &str,
        clients: &[String],
        has_cooling: bool,
    ) -> Arc<Route> {
        if let Some(route) = self.route(owner, model).filter(|r| r.job_id == job_id) {
            return route;
        }
        self.edit(|table| {
            let route = Arc::new(Route {
                job_id: job_id.to_string(),
                clients: ArcSwap::from_pointee(clients.to_vec()),
                backends: ArcSwap::from_pointee(Vec::new()),
                has_cooling,
                wake_requested: AtomicBool::new(false),
                wake: Notify::new(),
                closed: CancellationToken::new(),
            });
            table.insert(Self::key(owner, model), route.clone());
            route
        })
    }

    /// Adds (or replaces) the instance's backend on an open route.
    pub fn add_backend(&self, owner: &str, model: &str, backend: Backend) {
        let Some(route) = self.route(owner, model) else {
            return;
        };
        let _guard = self.write.lock().expect("router lock");
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
    }

    /// Takes the instance out of its route; new requests go elsewhere.
    pub fn remove_backend(&self, owner: &str, model: &str, instance_id: &str) -> Option<Backend> {
        let route = self.route(owner, model)?;
        let _guard = self.write.lock().expect("router lock");
        let current = route.backends.load();
        let removed = current
            .iter()
            .find(|b| b.instance_id == instance_id)
            .cloned()?;
        let rest: Vec<Backend> = current
            .iter()
            .filter(|b| b.instance_id != instance_id)
            .cloned()
            .collect();
        route.backends.store(Arc::new(rest));
        Some(removed)
    }

    pub fn set_clients(&self, owner: &str, model: &str, clients: &[String]) {
        if let Some(route) = self.route(owner, model) {
            route.clients.store(Arc::new(clients.to_vec()));
        }
    }

    /// Stops serving the job's model at once (a newer job of the same name
    /// keeps its route).
    pub fn close(&self, owner: &str, model: &str, job_id: &str) {
        let key = Self::key(owner, model);
        let removed = self.edit(|table| match table.get(&key) {
            Some(route) if route.job_id == job_id => table.remove(&key),
            _ => None,
        });
        if let Some(route) = removed {
            route.closed.cancel();
        }
    }

    /// Whether `client_id` may call the model and an instance serves it.
    pub fn ready(&self, owner: &str, client_id: &str, model: &str) -> Result<bool, RouteError> {
        let route = self.route(owner, model).ok_or(RouteError::NoRoute)?;
        if !client_allowed(&route.clients.load(), client_id) {
            return Err(RouteError::ClientDenied);
        }
        Ok(!route.backends.load().is_empty())
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
        let backends = route.backends.load();
        let first = backends.first().ok_or(RouteError::NoBackend)?;
        if route.has_cooling && first.role != Role::Cooling {
            route.request_wake();
        }
        let request = AgentPredictRequest {
            job_id: route.job_id.clone(),
            payload,
            content_type,
        };
        // An instance that cannot take the request (unreachable, lost,
        // overloaded) passes it to the next one, if there is one.
        let mut last = None;
        let n = backends.len();
        let mut request = Some(request);
        for (i, backend) in backends.iter().enumerate() {
            // Copied only while another backend may need it.
            let this_try = if i + 1 == n {
                request.take()
            } else {
                request.clone()
            };
            let Some(this_try) = this_try else { break };
            match backend.call(this_try).await {
                Ok(routed) => return Ok(routed),
                Err(status) if status.code() == tonic::Code::Unavailable => last = Some(status),
                Err(status) => return Err(RouteError::Agent(status)),
            }
        }
        Err(RouteError::Agent(
            last.expect("at least one backend was tried"),
        ))
    }
}

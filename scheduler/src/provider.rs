//! Where instances come from. A provider launches, stops, starts and
//! terminates the machine behind an instance id; `local` (the embedded
//! default) runs each instance as an `aibro-agent` process on this host.

pub mod local;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::catalog::Machine;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot start the agent `{0}`: {1}")]
    Spawn(String, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub trait Provider: Send + Sync {
    /// Starts a new machine for `instance_id`; its agent registers by itself.
    fn launch<'a>(
        &'a self,
        instance_id: &'a str,
        machine: &'a Machine,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Stops the machine; its disk is kept for a later `start`.
    fn stop<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Starts a stopped machine again on its kept disk.
    fn start<'a>(
        &'a self,
        instance_id: &'a str,
        machine: &'a Machine,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;
    /// Ends the machine and removes its disk. Idempotent.
    fn terminate<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;
}

/// The providers this scheduler runs, by the name the catalog uses.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: HashMap<String, Arc<dyn Provider>>,
}

impl Providers {
    pub fn with(mut self, name: &str, provider: Arc<dyn Provider>) -> Self {
        self.by_name.insert(name.to_string(), provider);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<_> = self.by_name.keys().map(String::as_str).collect();
        names.sort();
        names
    }
}

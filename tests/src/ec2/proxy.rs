//! The fault proxy: an HTTP server on 127.0.0.1:0 in front of moto, which
//! tests steer in-process: calls counted per action, injected faults, spot
//! prices, state delays, and the played machines behind it. `handler` says
//! what it does to each call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::faults::{FaultRule, Faults};
use super::http::{self, Client};
use super::played::{Played, PlayedMachine};
use super::spot::SpotTerms;
use super::states::{Delays, Transitions};

pub struct FaultProxy {
    url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

/// What the handler works with.
pub(crate) struct Shared {
    pub(crate) moto: String,
    pub(crate) client: Client,
    pub(crate) state: Mutex<ProxyState>,
    pub(crate) played: Arc<Played>,
}

/// What tests set and calls changed; never locked across an await.
#[derive(Default)]
pub(crate) struct ProxyState {
    pub(crate) counts: BTreeMap<String, u64>,
    pub(crate) faults: Faults,
    /// The spot request of each spot instance launched through the proxy.
    pub(crate) spot: HashMap<String, SpotTerms>,
    /// USD per hour by instance type.
    pub(crate) prices: BTreeMap<String, f64>,
    pub(crate) delays: Delays,
    pub(crate) transitions: Transitions,
}

impl FaultProxy {
    /// Serves on a free loopback port, forwarding to `moto`; the machines
    /// launched through it are `played`.
    pub(crate) async fn start(moto: &str, played: Arc<Played>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            moto: moto.to_string(),
            client: http::client(),
            state: Mutex::default(),
            played,
        });
        let app = axum::Router::new()
            .fallback(super::handler::handle)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FaultProxy {
            url,
            shared,
            server,
        })
    }

    /// The EC2 endpoint to give the scheduler (`--ec2-endpoint`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Calls received so far, by action (answered by moto or not).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state().counts.clone()
    }

    pub fn count(&self, action: &str) -> u64 {
        self.state().counts.get(action).copied().unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        self.state().counts.clear();
    }

    /// Answers the calls `rule` matches with its error, in moto's place.
    pub fn fail(&self, rule: FaultRule) {
        self.state().faults.add(rule);
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// The spot price of `instance_type` from now on.
    pub fn set_spot_price(&self, instance_type: &str, usd_per_hour: f64) {
        let mut state = self.state();
        state.prices.insert(instance_type.to_string(), usd_per_hour);
    }

    /// The delays of transitions that begin from now on.
    pub fn set_delays(&self, delays: Delays) {
        self.state().delays = delays;
    }

    /// The metadata endpoint (`AIBRO_IMDS_ENDPOINT`) of each machine booted
    /// from now on, by EC2 id ([`super::Ec2World`] serves one stand-in per
    /// machine); None points it where nothing listens, never at the real
    /// metadata address.
    pub fn set_imds(&self, url_of: impl Fn(&str) -> Option<String> + Send + Sync + 'static) {
        self.shared.played.set_imds(Arc::new(url_of));
    }

    /// The played machine of an instance launched through the proxy.
    pub fn machine(&self, ec2_id: &str) -> Option<PlayedMachine> {
        self.shared.played.machine(ec2_id)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.shared.state.lock().unwrap()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
        self.shared.played.shutdown();
    }
}

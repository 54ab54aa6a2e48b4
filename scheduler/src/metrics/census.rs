//! What the scheduler holds, counted afresh at each scrape from the control
//! plane's state (the store, the agents' last heartbeats, the pool), so no
//! gauge can drift: jobs and instances by status, what instances ran and
//! cost per machine type and market (the ledger's numbers), and agents by
//! state with the age of their last heartbeat.

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, GaugeVec, IntGauge, IntGaugeVec, Opts};

use crate::catalog::Market;
use crate::state::{
    InstanceState, InstanceStatus, InstanceSubstatus, JobKind, JobState, JobStatus, Role,
};

/// The counts of one scrape.
#[derive(Debug, Default)]
pub struct Census {
    pub jobs: HashMap<(JobKind, JobState), i64>,
    pub instances: HashMap<(InstanceState, Role), i64>,
    /// Per (machine type, market): seconds instances held a machine, and what that cost.
    pub machines: HashMap<(String, Market), Accrued>,
    /// Agents of live instances: (instance id, seconds since last heard).
    pub heartbeats: Vec<(String, f64)>,
    /// An agent not heard from for this long is `late` (two heartbeats).
    pub late_after_s: f64,
    /// What the agents' last heartbeats said: requests waiting for a worker, in flight.
    pub agent_queued: i64,
    pub agent_in_flight: i64,
    /// Pool agents per (machine type, what they hold: idle, running, parked).
    pub pool: HashMap<(String, &'static str), i64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Accrued {
    pub seconds: f64,
    pub usd: f64,
}

/// Where the census comes from; None once the control plane is gone.
pub type CensusSource = Box<dyn Fn() -> Option<Census> + Send + Sync>;

/// The families of one scrape, each new (nothing is kept between scrapes).
struct Families {
    jobs: IntGaugeVec,
    instances: IntGaugeVec,
    running: CounterVec,
    cost: CounterVec,
    agents: IntGaugeVec,
    heartbeat_age: GaugeVec,
    agent_queued: IntGauge,
    agent_in_flight: IntGauge,
    pool: IntGaugeVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Families {
    fn new() -> Families {
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(opts(name, help), labels).expect("valid metric")
        };
        let counters = |name: &str, help: &str| {
            CounterVec::new(opts(name, help), &["machine_type", "market"]).expect("valid metric")
        };
        let gauge =
            |name: &str, help: &str| IntGauge::with_opts(opts(name, help)).expect("valid metric");
        Families {
            jobs: gauges(
                "aibro_jobs",
                "Jobs by kind, status and substatus (ended jobs included).",
                &["kind", "status", "substatus"],
            ),
            instances: gauges(
                "aibro_instances",
                "Instances by status, substatus and role (closed ones included).",
                &["status", "substatus", "role"],
            ),
            running: counters(
                "aibro_instance_running_seconds_total",
                "Seconds instances held a machine (not CLOSED), by machine type and market.",
            ),
            cost: counters(
                "aibro_instance_cost_usd_total",
                "What instances cost so far in US dollars, as the ledger charges it (the \
                 machine's price per hour times its running time), by machine type and market.",
            ),
            agents: gauges(
                "aibro_agents",
                "Agents of live instances by state: live (heard within two heartbeats) or late.",
                &["state"],
            ),
            heartbeat_age: GaugeVec::new(
                opts(
                    "aibro_agent_heartbeat_age_seconds",
                    "Seconds since the agent of each live instance was last heard from.",
                ),
                &["instance_id"],
            )
            .expect("valid metric"),
            agent_queued: gauge(
                "aibro_agents_requests_queued",
                "Predictions held on agents waiting for a free worker (last heartbeats); the \
                 scheduler itself holds none.",
            ),
            agent_in_flight: gauge(
                "aibro_agents_requests_in_flight",
                "Predictions on agents, running or queued (last heartbeats).",
            ),
            pool: gauges(
                "aibro_pool_agents",
                "Agents in the pool by machine type and what they hold: idle, running (an \
                 instance) or parked (a stopped instance's disk).",
                &["machine_type", "holds"],
            ),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 9] {
        [
            &self.jobs,
            &self.instances,
            &self.running,
            &self.cost,
            &self.agents,
            &self.heartbeat_age,
            &self.agent_queued,
            &self.agent_in_flight,
            &self.pool,
        ]
    }

    fn fill(&self, census: &Census) {
        for ((kind, state), n) in &census.jobs {
            let labels = [
                kind_name(*kind),
                job_status(state.status),
                state.substatus.name(),
            ];
            self.jobs.with_label_values(&labels).set(*n);
        }
        for ((state, role), n) in &census.instances {
            let labels = [
                instance_status(state.status),
                instance_substatus(state.substatus),
                role_name(*role),
            ];
            self.instances.with_label_values(&labels).set(*n);
        }
        for ((machine_type, market), accrued) in &census.machines {
            let labels = [machine_type.as_str(), market_name(*market)];
            self.running
                .with_label_values(&labels)
                .inc_by(accrued.seconds);
            self.cost.with_label_values(&labels).inc_by(accrued.usd);
        }
        for state in ["live", "late"] {
            self.agents.with_label_values(&[state]).set(0);
        }
        for (instance_id, age) in &census.heartbeats {
            let state = if *age < census.late_after_s {
                "live"
            } else {
                "late"
            };
            self.agents.with_label_values(&[state]).inc();
            self.heartbeat_age
                .with_label_values(&[instance_id.as_str()])
                .set(*age);
        }
        self.agent_queued.set(census.agent_queued);
        self.agent_in_flight.set(census.agent_in_flight);
        for ((machine_type, holds), n) in &census.pool {
            self.pool
                .with_label_values(&[machine_type.as_str(), *holds])
                .set(*n);
        }
    }
}

/// The census as metrics: read from its source at each scrape.
pub(crate) struct CensusCollector {
    source: CensusSource,
    /// The families' descriptions, for the registry.
    shape: Families,
}

impl CensusCollector {
    pub(crate) fn new(source: CensusSource) -> Self {
        CensusCollector {
            source,
            shape: Families::new(),
        }
    }
}

impl Collector for CensusCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.shape
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(census) = (self.source)() else {
            return Vec::new();
        };
        let families = Families::new();
        families.fill(&census);
        families
            .collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

fn kind_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Inference => "inference",
        JobKind::Training => "training",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Standby => "standby",
        Role::Cooling => "cooling",
        Role::Trainer => "trainer",
    }
}

fn market_name(market: Market) -> &'static str {
    match market {
        Market::Spot => "spot",
        Market::OnDemand => "on_demand",
    }
}

/// The SPEC's names, as the API shows them.
fn job_status(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queuing => "QUEUING",
        JobStatus::Deployed => "DEPLOYED",
        JobStatus::Training => "TRAINING",
        JobStatus::Canceled => "CANCELED",
        JobStatus::Completed => "COMPLETED",
    }
}

fn instance_status(status: InstanceStatus) -> &'static str {
    match status {
        InstanceStatus::Launching => "LAUNCHING",
        InstanceStatus::Executing => "EXECUTING",
        InstanceStatus::Cooling => "COOLING",
        InstanceStatus::Closing => "CLOSING",
        InstanceStatus::Closed => "CLOSED",
    }
}

fn instance_substatus(substatus: InstanceSubstatus) -> &'static str {
    match substatus {
        InstanceSubstatus::None => "NONE",
        InstanceSubstatus::Cooling => "COOLING",
        InstanceSubstatus::Stopping => "STOPPING",
        InstanceSubstatus::Terminating => "TERMINATING",
        InstanceSubstatus::Stopped => "STOPPED",
        InstanceSubstatus::Terminated => "TERMINATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_census_becomes_its_families() {
        let mut census = Census {
            late_after_s: 4.0,
            agent_queued: 3,
            ..Census::default()
        };
        census
            .jobs
            .insert((JobKind::Inference, JobState::QUEUED), 2);
        census
            .instances
            .insert((InstanceState::EXECUTING, Role::Standby), 1);
        let accrued = Accrued {
            seconds: 7200.0,
            usd: 1.5,
        };
        census
            .machines
            .insert(("local.small".into(), Market::OnDemand), accrued);
        census.heartbeats = vec![("i-1".into(), 0.5), ("i-2".into(), 9.0)];
        let gone = CensusCollector::new(Box::new(|| None));
        assert_eq!(gone.desc().len(), 9);
        assert!(gone.collect().is_empty());
        let families = Families::new();
        families.fill(&census);
        let jobs = families
            .jobs
            .with_label_values(&["inference", "QUEUING", "REQUESTING_SERVER"]);
        assert_eq!(jobs.get(), 2);
        let cost = families
            .cost
            .with_label_values(&["local.small", "on_demand"]);
        assert_eq!(cost.get(), 1.5);
        assert_eq!(families.agents.with_label_values(&["live"]).get(), 1);
        assert_eq!(families.agents.with_label_values(&["late"]).get(), 1);
        assert_eq!(families.agent_queued.get(), 3);
    }
}

//! The simulated fleet: pool agents that register and heartbeat as
//! `aibro-agent`'s reporter does (same backoff), each over its own gRPC
//! connection, noting when each was last answered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aibro_proto::v1 as pb;
use aibro_scheduler::records::{GpuRecord, HardwareRecord};
use anyhow::{bail, Result};
use tokio::task::JoinSet;

use super::clients::{self, Gateway};
use super::seed::Seeded;
use super::{FleetArgs, MACHINE_ID};

/// As `aibro-agent`'s reporter: register backoff, and the pause after a failed call.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Each host's four GPUs.
const GPU_NAME: &str = "NVIDIA A100-SXM4-80GB";
const GPU_MEMORY: u64 = 80 << 30;

pub fn agent_id(i: usize) -> String {
    format!("fleet-agent-{i:05}")
}

/// Agent `i`'s host.
pub fn hardware_record(i: usize) -> HardwareRecord {
    HardwareRecord {
        cpus: 32,
        memory_bytes: 256 << 30,
        gpus: (0..4)
            .map(|g| GpuRecord {
                index: g,
                name: GPU_NAME.into(),
                memory_total_bytes: GPU_MEMORY,
                memory_used_bytes: 0,
            })
            .collect(),
        hostname: format!("gpu-host-{i:05}"),
    }
}

fn hardware_pb(i: usize) -> pb::Hardware {
    let h = hardware_record(i);
    pb::Hardware {
        cpus: h.cpus,
        memory_bytes: h.memory_bytes,
        gpus: h
            .gpus
            .iter()
            .map(|g| gpu_pb(g.index, g.memory_used_bytes))
            .collect(),
        hostname: h.hostname,
    }
}

fn gpu_pb(index: u32, used: u64) -> pb::Gpu {
    pb::Gpu {
        index,
        name: GPU_NAME.into(),
        memory_total_bytes: GPU_MEMORY,
        memory_used_bytes: used,
    }
}

/// What one simulated agent has done (microseconds since the fleet started,
/// 0 = never).
#[derive(Default)]
pub struct AgentClock {
    registered: AtomicU64,
    heartbeat: AtomicU64,
    /// The first heartbeat answered at or after `FleetState::since`.
    back: AtomicU64,
}

impl AgentClock {
    pub fn registered_at(&self) -> u64 {
        self.registered.load(Ordering::Relaxed)
    }
    pub fn heartbeat_at(&self) -> u64 {
        self.heartbeat.load(Ordering::Relaxed)
    }
    pub fn back_at(&self) -> u64 {
        self.back.load(Ordering::Relaxed)
    }
}

pub struct FleetState {
    epoch: Instant,
    /// Agents note their first answered heartbeat from then on (`back`).
    pub since: AtomicU64,
    pub agents: Vec<AgentClock>,
    pub registrations: AtomicU64,
    /// Register calls that failed (each then backs off).
    pub register_failures: AtomicU64,
    pub heartbeats: AtomicU64,
    pub failures: AtomicU64,
    /// While set, heartbeat round trips are kept in `rtts`.
    pub recording: AtomicBool,
    pub rtts: Mutex<Vec<Duration>>,
    /// The last failed call's status, for the report.
    pub last_error: Mutex<String>,
}

impl FleetState {
    pub fn now_us(&self) -> u64 {
        self.us(Instant::now())
    }
    pub fn us(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }
}

pub struct Fleet {
    pub state: Arc<FleetState>,
    /// Every agent's task; aborted when the fleet is dropped.
    _tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts every agent, staggered over one heartbeat interval.
    pub fn start(
        args: &FleetArgs,
        seeded: &Seeded,
        endpoint: &str,
        join_token: &str,
        address: &str,
    ) -> Result<Fleet> {
        let state = Arc::new(FleetState {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
            agents: (0..args.agents).map(|_| AgentClock::default()).collect(),
            registrations: AtomicU64::new(0),
            register_failures: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            rtts: Mutex::new(Vec::new()),
            last_error: Mutex::new(String::new()),
        });
        let mut tasks = JoinSet::new();
        for i in 0..args.agents {
            let gateway = clients::gateway(endpoint, join_token)?;
            let register = pb::RegisterRequest {
                instance_id: seeded.runs[i].clone().unwrap_or_default(),
                address: address.to_string(),
                hardware: Some(hardware_pb(i)),
                agent_id: agent_id(i),
                machine_id: MACHINE_ID.to_string(),
                sandbox: "none".into(),
            };
            let delay = Duration::from_millis(args.heartbeat_ms) * i as u32 / args.agents as u32;
            tasks.spawn(agent(i, gateway, register, state.clone(), delay));
        }
        Ok(Fleet {
            state,
            _tasks: tasks,
        })
    }

    /// Waits until `done` holds for every agent.
    pub async fn wait_all(
        &self,
        done: impl Fn(&AgentClock) -> bool,
        limit: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let missing = self.state.agents.iter().filter(|a| !done(a)).count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{missing} of {} agents are not there",
                    self.state.agents.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// One agent, as `aibro-agent`'s reporter: Register (backoff 100 ms doubling
/// to 2 s), then a heartbeat every interval the scheduler returned; any
/// failed call → pause 200 ms → register again.
async fn agent(
    i: usize,
    mut gateway: Gateway,
    register: pb::RegisterRequest,
    state: Arc<FleetState>,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let me = &state.agents[i];
    let runs = !register.instance_id.is_empty();
    let failed = |call: &str, status: tonic::Status| {
        *state.last_error.lock().expect("last error") =
            format!("{call}: {:?}: {}", status.code(), status.message());
    };
    loop {
        let mut backoff = BACKOFF_START;
        let interval = loop {
            match gateway.register(register.clone()).await {
                Ok(r) => {
                    break Duration::from_millis(
                        r.into_inner().heartbeat_interval_ms.max(50).into(),
                    )
                }
                Err(status) => {
                    state.register_failures.fetch_add(1, Ordering::Relaxed);
                    failed("Register", status);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
            }
        };
        me.registered.store(state.now_us(), Ordering::Relaxed);
        state.registrations.fetch_add(1, Ordering::Relaxed);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let heartbeat = pb::Heartbeat {
                in_flight: 0,
                workers_alive: if runs { 2 } else { 0 },
                gpus: (0..4)
                    .map(|g| gpu_pb(g, if runs { 30 << 30 } else { 0 }))
                    .collect(),
                queued: 0,
                workers: if runs { 2 } else { 0 },
            };
            let request = pb::ReportRequest {
                instance_id: register.instance_id.clone(),
                agent_id: register.agent_id.clone(),
                body: Some(pb::report_request::Body::Heartbeat(heartbeat)),
            };
            let sent = Instant::now();
            match gateway.report(request).await {
                Ok(_) => {
                    let rtt = sent.elapsed();
                    let now = state.now_us();
                    me.heartbeat.store(now, Ordering::Relaxed);
                    if me.back_at() < state.since.load(Ordering::Relaxed) {
                        me.back.store(now, Ordering::Relaxed);
                    }
                    state.heartbeats.fetch_add(1, Ordering::Relaxed);
                    if state.recording.load(Ordering::Relaxed) {
                        state.rtts.lock().expect("rtts").push(rtt);
                    }
                }
                Err(status) => {
                    failed("heartbeat", status);
                    state.failures.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

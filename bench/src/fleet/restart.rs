//! The scheduler's `kill -9` restart on the same data dir and address, timed
//! until it serves and the whole fleet heartbeats to it again, and a look at
//! it a few seconds later.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aibro_proto::v1 as pb;
use anyhow::Result;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use super::agents::Fleet;
use super::clients;
use super::measure::list_all;
use super::scheduler::SchedulerProcess;
use crate::stats::{dist, Dist};

pub struct Restart {
    /// `kill -9` until the process was reaped.
    pub down: Duration,
    /// Each agent: spawn -> its first heartbeat answered by the new process.
    pub each: Option<Dist>,
    /// Connections the kernel dropped for a full accept queue (system-wide).
    pub overflows: u64,
    /// From the spawn: address file written, health SERVING, ListJobs answered.
    pub listening: Duration,
    pub health: Duration,
    pub list: Duration,
    /// From the spawn: the last agent's first answered heartbeat, or why not.
    pub agents: Result<Duration, String>,
    /// Register calls the fleet made meanwhile.
    pub registrations: u64,
}

/// `kill -9`, then at once the same command on the same data dir and address.
/// Times from the spawn: the address file written (recovery done, serving),
/// the first SERVING health answer, the first ListJobs answer, and every
/// agent's first heartbeat answered by the new process.
pub async fn restart(
    scheduler: &mut SchedulerProcess,
    fleet: &Fleet,
    endpoint: &str,
    token: &str,
) -> Result<Restart> {
    let state = &fleet.state;
    let regs0 = state.registrations.load(Ordering::Relaxed);
    let overflows0 = listen_overflows();
    let t_kill = Instant::now();
    scheduler.kill9();
    let down = t_kill.elapsed();
    let t0 = Instant::now();
    let spawned_us = state.us(t0);
    state.since.store(spawned_us, Ordering::Relaxed);
    scheduler.start()?;

    let health = async {
        loop {
            if let Ok(Ok(true)) =
                tokio::time::timeout(Duration::from_secs(5), serving(endpoint)).await
            {
                return t0.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let health = tokio::time::timeout(Duration::from_secs(60), health)
        .await
        .map_err(|_| anyhow::anyhow!("no health answer after restart; {}", scheduler.log_tail()))?;
    let list = loop {
        if let Ok(mut c) = clients::jobs(endpoint, token) {
            if c.list_jobs(pb::ListJobsRequest::default()).await.is_ok() {
                break t0.elapsed();
            }
        }
    };
    let listening = scheduler.serving_after(t0);
    let agents = fleet
        .wait_all(|a| a.back_at() >= spawned_us, Duration::from_secs(30))
        .await
        .map(|()| {
            // The last agent's first answered heartbeat, not when this loop saw it.
            let last = state.agents.iter().map(|a| a.back_at()).max().unwrap_or(0);
            Duration::from_micros(last.saturating_sub(spawned_us))
        })
        .map_err(|e| e.to_string());
    let each = state
        .agents
        .iter()
        .map(|a| a.back_at())
        .filter(|&b| b >= spawned_us)
        .map(|b| Duration::from_micros(b - spawned_us))
        .collect();
    Ok(Restart {
        down,
        each: dist(each),
        overflows: listen_overflows().saturating_sub(overflows0),
        listening,
        health,
        list,
        agents,
        registrations: state.registrations.load(Ordering::Relaxed) - regs0,
    })
}

/// Whether the scheduler answers a health check of its Inference service with SERVING.
async fn serving(endpoint: &str) -> Result<bool> {
    let r = HealthClient::new(clients::channel(endpoint)?)
        .check(HealthCheckRequest {
            service: "aibro.v1.Inference".into(),
        })
        .await?;
    Ok(r.into_inner().status() == ServingStatus::Serving)
}

/// The kernel's count of connections dropped for a full accept queue
/// (`TcpExt: ListenOverflows` in /proc/net/netstat; system-wide).
fn listen_overflows() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

pub struct After {
    /// Agents heard from within the last 2 s.
    pub heartbeating: usize,
    /// The user's jobs ListJobs returns.
    pub jobs: usize,
    pub cpu_pct: f64,
    pub rss: u64,
}

/// A few seconds after the restart: agents heard from within the last 2 s,
/// the listing, and CPU/RSS over a short window.
pub async fn after_restart(
    scheduler: &SchedulerProcess,
    fleet: &Fleet,
    endpoint: &str,
    token: &str,
) -> Result<After> {
    let (cpu0, t0) = (scheduler.cpu()?, Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = scheduler.cpu()?.saturating_sub(cpu0);
    let cpu_pct = cpu.as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    let now = fleet.state.now_us();
    let heartbeating = fleet
        .state
        .agents
        .iter()
        .filter(|a| now.saturating_sub(a.heartbeat_at()) < 2_000_000)
        .count();
    let (_, pages) = list_all(&mut clients::jobs(endpoint, token)?).await?;
    Ok(After {
        heartbeating,
        jobs: pages.iter().map(|p| p.jobs).sum(),
        cpu_pct,
        rss: scheduler.rss(),
    })
}

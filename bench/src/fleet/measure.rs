//! Steady-state measurements while the fleet heartbeats: the scheduler's CPU
//! and memory and the heartbeat round trips over a window, and ListJobs
//! latency, one call at a time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aibro_proto::v1 as pb;
use anyhow::{Context, Result};
use prost::Message;

use super::agents::Fleet;
use super::clients::{self, Jobs};
use super::scheduler::SchedulerProcess;
use crate::cpu;
use crate::stats::{dist, Dist};

pub struct Steady {
    pub window: Duration,
    /// The scheduler's CPU time over the window, and this bench process's.
    pub cpu: Duration,
    pub bench_cpu: Duration,
    /// The scheduler's RSS at the end, the most sampled, and its peak (VmHWM).
    pub rss: u64,
    pub rss_max: u64,
    pub hwm: u64,
    /// Heartbeats answered and failed over the window.
    pub heartbeats: u64,
    pub failures: u64,
    pub rtt: Option<Dist>,
}

/// Samples the scheduler over `window` while the fleet only heartbeats.
pub async fn steady_state(
    scheduler: &SchedulerProcess,
    fleet: &Fleet,
    window: Duration,
) -> Result<Steady> {
    let bench_cpu = || cpu::process_cpu(std::process::id()).context("no /proc/self/stat");
    let state = &fleet.state;
    state.rtts.lock().expect("rtts").clear();
    state.recording.store(true, Ordering::Relaxed);
    let (hb0, f0) = (
        state.heartbeats.load(Ordering::Relaxed),
        state.failures.load(Ordering::Relaxed),
    );
    let (cpu0, bench0, t0) = (scheduler.cpu()?, bench_cpu()?, Instant::now());
    let mut rss_max = 0;
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(500).min(window)).await;
        rss_max = rss_max.max(scheduler.rss());
    }
    let (cpu1, bench1, elapsed) = (scheduler.cpu()?, bench_cpu()?, t0.elapsed());
    state.recording.store(false, Ordering::Relaxed);
    let rtts = std::mem::take(&mut *state.rtts.lock().expect("rtts"));
    Ok(Steady {
        window: elapsed,
        cpu: cpu1.saturating_sub(cpu0),
        bench_cpu: bench1.saturating_sub(bench0),
        rss: scheduler.rss(),
        rss_max,
        hwm: scheduler.peak_rss(),
        heartbeats: state.heartbeats.load(Ordering::Relaxed) - hb0,
        failures: state.failures.load(Ordering::Relaxed) - f0,
        rtt: dist(rtts),
    })
}

pub struct ListJobs {
    /// Each call (one page).
    pub latency: Option<Dist>,
    /// Every page of the user's listing, one after the other.
    pub listing: Option<Dist>,
    /// The user's jobs (all pages), and the pages it takes.
    pub jobs: usize,
    pub pages: usize,
    pub first: Page,
}

/// One ListJobs answer: its jobs, their instances, and its encoded size.
#[derive(Clone, Copy)]
pub struct Page {
    pub jobs: usize,
    pub instances: usize,
    pub bytes: usize,
}

/// Every page of the caller's jobs, and each call's latency.
pub async fn list_all(client: &mut Jobs) -> Result<(Vec<Duration>, Vec<Page>)> {
    let (mut lat, mut pages) = (vec![], vec![]);
    let mut page_token = String::new();
    loop {
        let t = Instant::now();
        let r = client
            .list_jobs(pb::ListJobsRequest {
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        lat.push(t.elapsed());
        pages.push(Page {
            jobs: r.jobs.len(),
            instances: r.jobs.iter().map(|j| j.instances.len()).sum(),
            bytes: r.encoded_len(),
        });
        if r.next_page_token.is_empty() {
            return Ok((lat, pages));
        }
        page_token = r.next_page_token;
    }
}

/// Pages through the user's listing until `calls` ListJobs calls are timed.
pub async fn list_jobs(endpoint: &str, token: &str, calls: usize) -> Result<ListJobs> {
    let mut client = clients::jobs(endpoint, token)?;
    let (_, pages) = list_all(&mut client).await?;
    for _ in 0..5 {
        list_all(&mut client).await?;
    }
    let (mut lat, mut listing) = (Vec::with_capacity(calls), vec![]);
    while lat.len() < calls {
        let t = Instant::now();
        let (each, _) = list_all(&mut client).await?;
        listing.push(t.elapsed());
        lat.extend(each);
    }
    Ok(ListJobs {
        latency: dist(lat),
        listing: dist(listing),
        jobs: pages.iter().map(|p| p.jobs).sum(),
        pages: pages.len(),
        first: pages[0],
    })
}

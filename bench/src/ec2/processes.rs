//! The played machines and their processes: how many booted, how many run,
//! and which processes (agents, their Python workers) live with
//! `AIBRO_ROOT` under the world's dir, i.e. on a played machine.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use aibro_tests::ec2::{live_processes, Ec2World};
use anyhow::Result;

use super::complete::instance_states;
use crate::cpu;

/// Live processes of played machines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// `aibro-agent` processes.
    pub agents: usize,
    /// The agents' descendants: their Python workers.
    pub workers: usize,
    /// The rest: boot scripts still running.
    pub others: usize,
    /// All of them (their pids).
    pub pids: Vec<u32>,
}

/// The played machines at one moment.
pub struct Census {
    /// Instances moto has.
    pub instances: usize,
    /// Played machines that booted at least once.
    pub booted: usize,
    /// Played machines booted and not stopped or terminated since.
    pub running: usize,
    pub live: Live,
}

impl Census {
    pub async fn take(world: &Ec2World) -> Result<Census> {
        let states = instance_states(world).await?;
        let machines: Vec<_> = states
            .iter()
            .filter_map(|(id, _)| world.proxy().machine(id))
            .collect();
        Ok(Census {
            instances: states.len(),
            booted: machines.iter().filter(|m| m.boots > 0).count(),
            running: machines.iter().filter(|m| m.running).count(),
            live: left_under(world.dir()),
        })
    }
}

/// The live processes whose `AIBRO_ROOT` lies under `dir`, and the
/// agents' descendants (workers may run with an environment of their own).
pub fn left_under(dir: &Path) -> Live {
    let rooted: Vec<u32> = live_processes(dir)
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect();
    let agents: Vec<u32> = rooted
        .iter()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "aibro-agent")
        })
        .collect();
    let workers: BTreeSet<u32> = agents
        .iter()
        .flat_map(|&agent| cpu::tree(agent).into_iter().skip(1))
        .collect();
    let others = rooted
        .iter()
        .filter(|pid| !agents.contains(pid) && !workers.contains(pid))
        .count();
    let mut pids: BTreeSet<u32> = rooted.iter().copied().collect();
    pids.extend(&workers);
    Live {
        agents: agents.len(),
        workers: workers.len(),
        others,
        pids: pids.into_iter().collect(),
    }
}

/// The processes left under `dir`, and those of `seen` (played processes
/// seen earlier) still alive, not zombies.
pub fn left_after(dir: &Path, seen: &[u32]) -> Vec<u32> {
    let mut left: BTreeSet<u32> = left_under(dir).pids.into_iter().collect();
    left.extend(seen.iter().copied().filter(|&pid| alive(pid)));
    left.into_iter().collect()
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(aibro_tests::ec2::alive)
}

/// Waits (up to `limit`) until no played process is left (see
/// [`left_after`]): a terminated machine's units stop in the background
/// (SIGTERM, SIGKILL 10 s later). Those left, and how long it took.
pub async fn wait_gone(dir: &Path, seen: &[u32], limit: Duration) -> (Vec<u32>, Duration) {
    let start = Instant::now();
    loop {
        let left = left_after(dir, seen);
        if left.is_empty() || start.elapsed() > limit {
            return (left, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

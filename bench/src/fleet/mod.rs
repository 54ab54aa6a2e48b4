//! `aibro-bench fleet`: the scheduler at fleet scale. It seeds a data dir with
//! tens of thousands of jobs through the scheduler's own store API
//! ([`seed`]), starts the real `aibro-scheduler` binary on it with a pool
//! machine type ([`scheduler`]), and simulates the fleet over loopback:
//! thousands of pool agents, each its own gRPC connection ([`agents`]),
//! ListJobs callers and WatchJob watchers. It measures the scheduler's CPU and
//! memory in steady state and ListJobs latency ([`measure`]), the fan-out of
//! one job change to every watcher ([`fanout`]), and a `kill -9` restart on
//! the same data dir until the fleet heartbeats again ([`restart`]), then
//! prints a table ([`report`]).
//!
//! `cargo build --release --workspace && ./target/release/aibro-bench fleet`

pub(crate) mod agents;
pub(crate) mod clients;
mod fanout;
mod measure;
mod report;
mod restart;
pub(crate) mod scheduler;
pub(crate) mod seed;
mod stub_agent;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use agents::Fleet;
use report::Report;
use scheduler::SchedulerProcess;
use seed::Seeded;
use stub_agent::StubAgent;

/// The catalog type every simulated agent is, and its one machine.
const MACHINE_TYPE: &str = "fleet.a100";
const MACHINE_ID: &str = "fleet.a100.od";

#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Simulated pool agents, each with its own gRPC connection.
    #[arg(long, default_value_t = 2000)]
    pub agents: usize,
    /// Jobs seeded into the store before the scheduler starts.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// WatchJob streams (each its own connection) on one job for the fan-out.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Steady-state measurement window (CPU, memory, heartbeats), seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Users the jobs are spread over (each gets a token).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// The scheduler's --heartbeat-ms (agents heartbeat at the interval it returns).
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// ListJobs calls timed, one at a time, while the fleet heartbeats.
    #[arg(long, default_value_t = 300)]
    pub list_calls: usize,
    /// Job changes whose fan-out to every watcher is timed.
    #[arg(long, default_value_t = 30)]
    pub fanout_rounds: usize,
    /// Keep the data dir (its path is printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

impl FleetArgs {
    /// The fleet's seed for `aibro-bench console`: `jobs` jobs of one user,
    /// two agents (none started).
    pub fn for_console(jobs: usize) -> FleetArgs {
        FleetArgs {
            agents: 2,
            jobs,
            watchers: 0,
            seconds: 0,
            users: 1,
            heartbeat_ms: 1000,
            list_calls: 0,
            fanout_rounds: 0,
            keep: false,
        }
    }
}

pub async fn run(args: FleetArgs) -> Result<()> {
    if args.agents < 2 || args.users == 0 || args.jobs < 2 * args.users {
        bail!("need at least 2 agents, 1 user and 2 jobs per user");
    }
    let nofile = raise_nofile((args.agents + args.watchers + 256) as u64)?;
    let temp = tempfile::Builder::new().prefix("aibro-fleet-").tempdir()?;
    let dir = temp.path().to_path_buf();
    let stub = StubAgent::start().await?;

    let (seeded, seed_time) = seed_timed(&args, &dir, &stub.address).await?;

    let t = Instant::now();
    let mut scheduler = SchedulerProcess::spawn(&dir, args.heartbeat_ms)?;
    scheduler.wait_listening().await?;
    let first_start = t.elapsed();
    let rss_started = scheduler.rss();
    let join_token = std::fs::read_to_string(dir.join("join-token"))?;
    let endpoint = scheduler.endpoint();

    let (fleet, joined, join_failures) =
        join(&args, &seeded, &scheduler, &join_token, &stub.address).await?;

    // Steady state: only heartbeats, after the join burst has passed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("measuring steady state for {} s ...", args.seconds);
    let window = Duration::from_secs(args.seconds);
    let steady = measure::steady_state(&scheduler, &fleet, window).await?;

    let list_user = if args.users > 1 { 1 } else { 0 };
    let list_token = &seeded.tokens[list_user];
    eprintln!("timing {} ListJobs calls ...", args.list_calls);
    let list = measure::list_jobs(&endpoint, list_token, args.list_calls).await?;

    eprintln!("opening {} watchers ...", args.watchers);
    let fanout = fanout::fanout(&args, &seeded, &endpoint, &join_token).await?;

    eprintln!("kill -9 and restart ...");
    let restart = restart::restart(&mut scheduler, &fleet, &endpoint, list_token).await?;
    // The fleet stays: every agent heartbeats to the restarted scheduler.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = restart::after_restart(&scheduler, &fleet, &endpoint, list_token).await?;

    report::print(&Report {
        args: &args,
        seeded: &seeded,
        seed_time,
        first_start,
        rss_started,
        joined,
        join_failures,
        nofile,
        steady,
        list,
        list_user,
        fanout,
        restart,
        after,
    });
    println!(
        "scheduler log: {} warnings, {} errors ({})",
        scheduler.log_count("WARN"),
        scheduler.log_count("ERROR"),
        dir.join("scheduler.log").display()
    );
    drop(fleet);
    drop(scheduler);
    drop(stub);
    if args.keep {
        let kept = temp.keep();
        println!("data dir kept: {}", kept.display());
    }
    Ok(())
}

/// Seeds the data dir's store; returns what was seeded and how long it took.
async fn seed_timed(args: &FleetArgs, dir: &Path, address: &str) -> Result<(Seeded, Duration)> {
    eprintln!(
        "seeding {} jobs for {} users into {} ...",
        args.jobs,
        args.users,
        dir.display()
    );
    let t = Instant::now();
    let seeded = seed::seed(&dir.join("db"), args, address).await?;
    let seed_time = t.elapsed();
    eprintln!(
        "seeded in {:.1} s ({} timeline events)",
        seed_time.as_secs_f64(),
        seeded.events
    );
    Ok((seeded, seed_time))
}

/// Starts the fleet and waits until every agent registered and heartbeats;
/// returns it, how long that took, and how many Register calls failed.
async fn join(
    args: &FleetArgs,
    seeded: &Seeded,
    scheduler: &SchedulerProcess,
    join_token: &str,
    address: &str,
) -> Result<(Fleet, Duration, u64)> {
    eprintln!("starting {} agents ...", args.agents);
    let t = Instant::now();
    let endpoint = scheduler.endpoint();
    let fleet = Fleet::start(args, seeded, &endpoint, join_token, address)?;
    fleet
        .wait_all(
            |a| a.registered_at() > 0 && a.heartbeat_at() > 0,
            Duration::from_secs(60),
        )
        .await
        .with_context(|| format!("the fleet did not join; {}", scheduler.log_tail()))?;
    let joined = t.elapsed();
    let join_failures = fleet.state.register_failures.load(Ordering::Relaxed);
    let last_error = fleet.state.last_error.lock().expect("last error").clone();
    eprintln!(
        "all agents joined in {:.2} s ({join_failures} failed Register calls{})",
        joined.as_secs_f64(),
        if last_error.is_empty() {
            String::new()
        } else {
            format!("; last: {last_error}")
        }
    );
    Ok((fleet, joined, join_failures))
}

/// Raises the soft open-file limit to the hard one (the scheduler inherits
/// it); fails when that is below `need`.
pub(crate) fn raise_nofile(need: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                bail!("setrlimit: {}", std::io::Error::last_os_error());
            }
        }
    }
    if lim.rlim_cur < need {
        bail!(
            "this run needs about {need} open files per process; the limit is {} (raise `ulimit -Hn` or run fewer agents/watchers)",
            lim.rlim_cur
        );
    }
    Ok(lim.rlim_cur)
}

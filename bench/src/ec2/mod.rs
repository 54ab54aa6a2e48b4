//! `aibro-bench ec2`: the EC2 provider under many concurrent launches. It
//! starts an [`Ec2World`] (moto behind the fault proxy, which counts every
//! EC2 call by action and plays each instance's boot on this host, so that a
//! real `aibro-agent` registers from its user data) and the real scheduler on
//! it; uploads a tiny echo repo once, fires N concurrent Deploys, one standby
//! each, and waits until all are DEPLOYED ([`deploys`]); with `--cooling`,
//! each deploy has a cooling instance too, and it waits until all of them
//! cooled down and were stopped ([`cooling`]); then it completes every job
//! and waits until EC2 shows every instance terminated ([`complete`]). It
//! measures the time per deploy, the EC2 calls by action in each stage, the
//! scheduler process's CPU, and whether any played process outlived its
//! instance or the world ([`processes`]), then prints tables ([`report`]).
//!
//! Needs `moto_server` on PATH (scripts/test-tools.sh installs it). Not part
//! of `aibro-bench all`.
//!
//! `cargo build --release --workspace && ./target/release/aibro-bench ec2`

mod complete;
mod cooling;
mod deploys;
mod processes;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aibro_tests::ec2::{Delays, Ec2World};
use aibro_tests::{repo, Scheduler};
use anyhow::{bail, Context, Result};

use crate::cpu;
use complete::Completed;
use cooling::Cooled;
use deploys::Deploys;
use processes::Census;
use report::Report;

/// The played model: `run` echoes its input; no requirements.txt, so no
/// virtualenv is built.
const ECHO: &str =
    "def load_model():\n    return 'echo'\n\n\ndef run(model, data):\n    return data\n";
/// The scheduler's `--ec2-poll-ms` (as `Scheduler::start_ec2` sets it; given
/// again here so that the per-tick figures hold).
const POLL_MS: u64 = 100;
/// How long a terminated machine's units may take to stop (the fake
/// systemctl's SIGKILL comes 10 s after its SIGTERM).
const UNITS_STOP: Duration = Duration::from_secs(30);
/// How long the idle scheduler's CPU is sampled before the deploys.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug, Clone)]
pub struct Ec2Args {
    /// Concurrent deploys, each on its own standby instance (a played
    /// machine running a real agent and one Python worker).
    #[arg(long, default_value_t = 100)]
    pub deploys: usize,
    /// How long EC2 shows an instance pending, stopping or shutting-down, ms.
    #[arg(long, default_value_t = 300)]
    pub delays_ms: u64,
    /// The catalog machine id of every standby (an EC2 type).
    #[arg(long, default_value = "c5.large.od")]
    pub machine: String,
    /// The spot price (USD/h) EC2 quotes for the machine's type.
    #[arg(long, default_value_t = 0.0312)]
    pub spot_price: f64,
    /// A cooling instance for every deploy too (an EC2 machine id such as
    /// `c5.xlarge.od`): it cools down and is stopped before the Complete,
    /// which exercises StopInstances and the shared DescribeInstances poll.
    #[arg(long)]
    pub cooling: Option<String>,
    /// The deploys' cool-down period, seconds (with --cooling).
    #[arg(long, default_value_t = 2)]
    pub cool_down_s: u32,
    /// Seconds each stage (all deploys, all cool-downs, all completions) may take.
    #[arg(long, default_value_t = 600)]
    pub deadline_s: u64,
}

impl Ec2Args {
    /// The EC2 instance type of the standby's machine id.
    fn instance_type(&self) -> &str {
        instance_type(&self.machine)
    }

    /// The spot price EC2 quotes for each type used: the cooling type's
    /// twice the standby's.
    fn quotes(&self) -> Vec<(&str, f64)> {
        let mut quotes = vec![(self.instance_type(), self.spot_price)];
        quotes.extend(
            self.cooling
                .as_deref()
                .map(|c| (instance_type(c), 2.0 * self.spot_price)),
        );
        quotes
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.deadline_s)
    }
}

/// The EC2 instance type of a machine id (`c5.large.od` → `c5.large`).
fn instance_type(machine: &str) -> &str {
    machine
        .strip_suffix(".od")
        .or_else(|| machine.strip_suffix(".spot"))
        .unwrap_or(machine)
}

/// The proxy's call counts and CPU times at one moment.
struct Snapshot {
    calls: BTreeMap<String, u64>,
    /// The scheduler process's.
    cpu: Duration,
    /// This process's: the proxy, the played machines' bookkeeping, the clients.
    bench_cpu: Duration,
    /// The host's, busy and in all (every core).
    host: (Duration, Duration),
    at: Instant,
}

impl Snapshot {
    fn take(world: &Ec2World, pid: u32) -> Snapshot {
        Snapshot {
            calls: world.proxy().counts(),
            cpu: cpu::process_cpu(pid).unwrap_or_default(),
            bench_cpu: cpu::process_cpu(std::process::id()).unwrap_or_default(),
            host: cpu::host_cpu().unwrap_or_default(),
            at: Instant::now(),
        }
    }
}

/// A stage of the run (deploy, cool-down, complete) and the snapshot at its end.
struct Stage {
    name: &'static str,
    end: Snapshot,
}

/// What the stages did.
struct Driven {
    deploys: Deploys,
    cooled: Option<Cooled>,
    completed: Completed,
    /// The snapshot before the first deploy, then each stage's.
    start: Snapshot,
    stages: Vec<Stage>,
    at_deployed: Census,
    after_complete: Census,
    /// Every played process seen (at all DEPLOYED, before Complete).
    seen: Vec<u32>,
}

pub async fn run(args: Ec2Args) -> Result<()> {
    if args.deploys == 0 {
        bail!("--deploys must be at least 1");
    }
    let nofile = crate::fleet::raise_nofile(8 * args.deploys as u64 + 256)?;
    let world = start_world(&args).await?;
    let (s, token, digest) = start_scheduler(&world, &args).await?;
    let pid = s.child.as_ref().context("the scheduler runs")?.id();
    let idle = idle_cpu(pid).await;
    let driven = drive(&world, &s, &token, &digest, &args).await?;
    let gone = processes::wait_gone(world.dir(), &driven.seen, UNITS_STOP).await;
    let rss_peak = cpu::peak_rss_bytes(pid);
    let log = s.log();
    let count = |level: &str| log.lines().filter(|l| l.contains(level)).count();
    let log_counts = (count("WARN"), count("ERROR"));
    let dir = world.dir().to_path_buf();
    drop(s);
    drop(world);
    let after_drop = processes::left_after(&dir, &driven.seen);
    report::print(&Report {
        args: &args,
        nofile,
        idle,
        driven: &driven,
        gone,
        after_drop,
        rss_peak,
        log_counts,
    });
    Ok(())
}

/// Deploys, cools down (with `--cooling`) and completes, taking a snapshot
/// after each stage.
async fn drive(
    world: &Ec2World,
    s: &Arc<Scheduler>,
    token: &str,
    digest: &str,
    args: &Ec2Args,
) -> Result<Driven> {
    let pid = s.child.as_ref().context("the scheduler runs")?.id();
    let stage = |name| Stage {
        name,
        end: Snapshot::take(world, pid),
    };
    eprintln!("firing {} deploys on {} ...", args.deploys, args.machine);
    let start = Snapshot::take(world, pid);
    let deploys = deploys::deploy_all(s, token, digest, args).await;
    let mut stages = vec![stage("deploy")];
    let at_deployed = Census::take(world).await?;
    eprintln!(
        "{} DEPLOYED, {} failed in {:.1} s",
        deploys.ok.len(),
        deploys.failed.len(),
        deploys.wall.as_secs_f64()
    );
    let mut cooled = None;
    if args.cooling.is_some() {
        eprintln!("waiting for the cooling instances to stop ...");
        cooled = Some(cooling::wait_stopped(s, token, &deploys, args).await);
        stages.push(stage("cool-down"));
    }
    let before_complete = Census::take(world).await?;
    eprintln!("completing them ...");
    let completed = complete::complete_all(s, world, token, &deploys, args).await?;
    stages.push(stage("complete"));
    let after_complete = Census::take(world).await?;
    let seen = [at_deployed.live.pids.clone(), before_complete.live.pids].concat();
    Ok(Driven {
        deploys,
        cooled,
        completed,
        start,
        stages,
        at_deployed,
        after_complete,
        seen,
    })
}

/// The EC2 world with the state delays and the spot price set.
async fn start_world(args: &Ec2Args) -> Result<Ec2World> {
    let world = Ec2World::start().await?;
    let delay = Duration::from_millis(args.delays_ms);
    world.proxy().set_delays(Delays {
        pending: delay,
        stopping: delay,
        shutting_down: delay,
    });
    for (kind, price) in args.quotes() {
        world.proxy().set_spot_price(kind, price);
    }
    Ok(world)
}

/// The scheduler on `world` (agents light enough for 100 on 2 cores), a
/// user's token, the echo repo uploaded, and the spot quote taken.
async fn start_scheduler(
    world: &Ec2World,
    args: &Ec2Args,
) -> Result<(Arc<Scheduler>, String, String)> {
    let poll = POLL_MS.to_string();
    let timeout = args.deadline_s.to_string();
    let flags = [
        ["--agent-sandbox", "none"],
        ["--agent-workers", "1"],
        ["--connect-timeout-s", &timeout],
        ["--ec2-poll-ms", &poll],
    ];
    let s = Scheduler::start_ec2(world, &flags.concat()).await?;
    let token = s.user("bench").await?;
    let dir = repo(ECHO);
    let digest = s.upload_dir(&token, dir.path()).await?;
    wait_quote(&s, &token, args).await?;
    Ok((Arc::new(s), token, digest))
}

/// Waits until the marketplace prices each type used at its spot quote.
async fn wait_quote(s: &Scheduler, token: &str, args: &Ec2Args) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (kind, price) in args.quotes() {
        loop {
            let m = s.machine(token, kind).await?;
            if (m.spot_price_per_hour - price).abs() < 1e-9 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{kind} is not priced at the spot quote {price} ({m:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The idle scheduler's CPU (spot quotes every second, lifecycle ticks), a
/// fraction of one core.
async fn idle_cpu(pid: u32) -> f64 {
    let first = cpu::process_cpu(pid).unwrap_or_default();
    tokio::time::sleep(IDLE_WINDOW).await;
    let used = cpu::process_cpu(pid)
        .unwrap_or_default()
        .saturating_sub(first);
    used.as_secs_f64() / IDLE_WINDOW.as_secs_f64()
}

/// The calls of each action between two snapshots.
/// A stream of the job's events (past, then live).
async fn watch(
    s: &Scheduler,
    token: &str,
    job_id: &str,
) -> Result<tonic::Streaming<aibro_proto::v1::JobEvent>> {
    let request = aibro_proto::v1::WatchJobRequest {
        job_id: job_id.into(),
    };
    Ok(s.jobs(Some(token))
        .await?
        .watch_job(request)
        .await?
        .into_inner())
}

fn calls_between(from: &Snapshot, to: &Snapshot) -> BTreeMap<String, u64> {
    to.calls
        .iter()
        .map(|(action, n)| {
            let before = from.calls.get(action).copied().unwrap_or(0);
            (action.clone(), n - before)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

//! The printed report: deploy times, EC2 calls by action in each half, and
//! a summary of every measure with its target.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{calls_between, Driven, Ec2Args, POLL_MS};
use crate::stats::{dist, print_table, thousands};
use aibro_tests::ec2::MUTATING_ACTIONS;

const TARGET_MUTATING: f64 = 5.0;
/// Phases of the job's timeline, and what each is here.
const PHASES: [(&str, &str); 3] = [
    (
        "REQUESTING_SERVER",
        "REQUESTING_SERVER: job created -> RunInstances answered",
    ),
    (
        "CONNECTING_SERVER",
        "CONNECTING_SERVER: boot played, agent registered",
    ),
    (
        "DEPLOYING_MODEL",
        "DEPLOYING_MODEL: fetch, unpack, worker, load_model()",
    ),
];

pub struct Report<'a> {
    pub args: &'a Ec2Args,
    pub nofile: u64,
    /// The idle scheduler's CPU, a fraction of one core.
    pub idle: f64,
    pub driven: &'a Driven,
    /// Played processes left after Complete once the units had time to
    /// stop, and that time.
    pub gone: (Vec<u32>, Duration),
    /// Played processes alive after the world's drop.
    pub after_drop: Vec<u32>,
    pub rss_peak: u64,
    /// WARN and ERROR lines in the scheduler's log.
    pub log_counts: (usize, usize),
}

/// One stage's share: its calls by action, its time and the scheduler's CPU.
struct Share<'a> {
    name: &'a str,
    calls: BTreeMap<String, u64>,
    wall: Duration,
    cpu: Duration,
    bench_cpu: Duration,
    /// The host's busy share of all its cores.
    host_busy: f64,
}

impl Report<'_> {
    fn shares(&self) -> Vec<Share<'_>> {
        let d = self.driven;
        let ends = d.stages.iter().map(|s| &s.end);
        let starts = std::iter::once(&d.start).chain(ends.clone());
        d.stages
            .iter()
            .zip(starts.zip(ends))
            .map(|(stage, (from, to))| Share {
                name: stage.name,
                calls: calls_between(from, to),
                wall: to.at - from.at,
                cpu: to.cpu.saturating_sub(from.cpu),
                bench_cpu: to.bench_cpu.saturating_sub(from.bench_cpu),
                host_busy: {
                    let busy = to.host.0.saturating_sub(from.host.0).as_secs_f64();
                    busy / to
                        .host
                        .1
                        .saturating_sub(from.host.1)
                        .as_secs_f64()
                        .max(1e-9)
                },
            })
            .collect()
    }

    /// Calls of `action` in all stages.
    fn count(&self, action: &str) -> u64 {
        let shares = self.shares();
        shares.iter().filter_map(|s| s.calls.get(action)).sum()
    }

    /// Instances launched (moto has them all, terminated, at the end).
    fn instances(&self) -> usize {
        self.driven.completed.terminated.max(1)
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", thousands(d.as_secs_f64() * 1000.0))
}

pub fn print(r: &Report) {
    let a = r.args;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cooling = match &a.cooling {
        Some(c) => format!(
            " and one {c} cooling instance ({} s cool-down)",
            a.cool_down_s
        ),
        None => String::new(),
    };
    println!(
        "ec2: {} concurrent deploys of a tiny echo repo (no virtualenv), each on one {} standby{cooling};",
        a.deploys, a.machine
    );
    println!(
        "  moto behind the fault proxy, every boot played on this host ({cores} cores): a real\n  \
         aibro-agent (--sandbox none, --workers 1) per instance. EC2 shows pending, stopping and\n  \
         shutting-down for {} ms; the scheduler polls every {POLL_MS} ms, quotes spot every 1 s.\n  \
         Open-file limit {}.",
        a.delays_ms, r.nofile
    );
    println!();
    print_deploys(r);
    println!();
    print_calls(r);
    println!();
    print_table(&["measure", "value", "target", "met?"], &summary(r));
    print_failures(r);
}

/// Per-deploy times: the client's, and the timeline's phases.
fn print_deploys(r: &Report) {
    let d = &r.driven.deploys;
    let row = |name: &str, samples: Vec<Duration>| -> [String; 4] {
        match dist(samples) {
            Some(x) => [name.into(), ms(x.p50), ms(x.p95), ms(x.max)],
            None => [name.into(), "-".into(), "-".into(), "-".into()],
        }
    };
    let mut rows = vec![row(
        "Deploy sent -> DEPLOYED (the bench's WatchJob)",
        d.ok.iter().map(|x| x.took).collect(),
    )];
    rows.extend(PHASES.iter().map(|(name, what)| row(what, d.phase(name))));
    println!(
        "per deploy, {} of {} DEPLOYED (timeline phases as the scheduler timed them):",
        d.ok.len(),
        r.args.deploys
    );
    print_table(&["per deploy", "p50", "p95", "max"], &rows);
    let spot =
        d.ok.iter()
            .filter(|x| !x.machine_id.ends_with(".od"))
            .count();
    println!(
        "all DEPLOYED {} after the first Deploy; standbys: {spot} spot ({} at ${}/h), {} on-demand.",
        ms(d.wall),
        r.args.instance_type(),
        r.args.spot_price,
        d.ok.len() - spot
    );
}

/// EC2 calls by action in each stage.
fn print_calls(r: &Report) {
    let shares = r.shares();
    let n = r.instances() as f64;
    let actions: BTreeSet<&String> = shares.iter().flat_map(|s| s.calls.keys()).collect();
    let row = |name: &str, counts: Vec<u64>| {
        let total: u64 = counts.iter().sum();
        let mut row = vec![name.to_string()];
        row.extend(counts.iter().map(u64::to_string));
        row.extend([total.to_string(), format!("{:.2}", total as f64 / n)]);
        row
    };
    let mut rows: Vec<Vec<String>> = actions
        .iter()
        .map(|a| {
            let counts = shares.iter().map(|s| s.calls.get(*a).copied().unwrap_or(0));
            row(a, counts.collect())
        })
        .collect();
    rows.push(row(
        "all",
        shares.iter().map(|s| s.calls.values().sum()).collect(),
    ));
    let spans: Vec<String> = shares
        .iter()
        .map(|s| format!("{} {}", s.name, ms(s.wall)))
        .collect();
    println!(
        "EC2 calls by action, counted by the proxy, per stage (complete ends when moto shows\n  \
         all {} instances terminated): {}",
        r.driven.completed.terminated,
        spans.join(", ")
    );
    let mut header = vec!["EC2 action"];
    header.extend(shares.iter().map(|s| s.name));
    header.extend(["total", "per instance"]);
    print_table(&header, &rows);
    let spot = r
        .driven
        .deploys
        .ok
        .iter()
        .any(|d| !d.machine_id.ends_with(".od"));
    if spot && r.count("CancelSpotInstanceRequests") == 0 {
        println!(
            "no CancelSpotInstanceRequests: moto answers a spot RunInstances without a\n  \
             spotInstanceRequestId, so there is no request to cancel; EC2 gives one, so\n  \
             expect one more call per spot instance there."
        );
    }
}

/// measure, value, target, met?
type Row = [String; 4];

fn info(measure: impl Into<String>, value: impl Into<String>) -> Row {
    [measure.into(), value.into(), "-".into(), "-".into()]
}

fn target(measure: impl Into<String>, value: String, target: &str, met: bool) -> Row {
    let met = if met { "yes" } else { "NO" };
    [measure.into(), value, target.into(), met.into()]
}

fn summary(r: &Report) -> Vec<Row> {
    [deploy_rows(r), call_rows(r), cpu_rows(r), process_rows(r)].concat()
}

fn deploy_rows(r: &Report) -> Vec<Row> {
    let d = &r.driven;
    let cooled = d.cooled.as_ref().map_or(0, |c| c.failed.len());
    let mut rows = vec![info(
        format!("time to all {} DEPLOYED", r.args.deploys),
        ms(d.deploys.wall),
    )];
    if let Some(c) = &d.cooled {
        rows.push(info(
            "then until all cooling instances stopped",
            format!("{} ({} stopped)", ms(c.wall), c.stopped),
        ));
    }
    rows.extend([
        info(
            "Complete of all -> moto shows every instance terminated",
            ms(d.completed.wall),
        ),
        target(
            "deploys / cool-downs / Completes failed",
            format!(
                "{} / {cooled} / {}",
                d.deploys.failed.len(),
                d.completed.failed.len()
            ),
            "0 / 0 / 0",
            d.deploys.failed.is_empty() && cooled == 0 && d.completed.failed.is_empty(),
        ),
    ]);
    rows
}

fn call_rows(r: &Report) -> Vec<Row> {
    let n = r.instances() as f64;
    let mutating: u64 = MUTATING_ACTIONS.iter().map(|a| r.count(a)).sum();
    let per = mutating as f64 / n;
    let mut rows = vec![target(
        "mutating calls per instance lifecycle (Run+Stop+Start+Terminate+CancelSpot)",
        format!("{per:.2} ({mutating} for {n} instances)"),
        "<= 5",
        per <= TARGET_MUTATING,
    )];
    let ticks_of = |wall: Duration| (wall.as_millis() as f64 / POLL_MS as f64).max(1.0);
    for s in r.shares() {
        let describes = s.calls.get("DescribeInstances").copied().unwrap_or(0) as f64;
        let ticks = ticks_of(s.wall);
        rows.push(target(
            format!(
                "DescribeInstances per {POLL_MS} ms tick, all instances: {}",
                s.name
            ),
            format!(
                "{:.3} ({describes} calls in {:.1} s = {ticks:.0} ticks)",
                describes / ticks,
                s.wall.as_secs_f64()
            ),
            "<= 1",
            describes <= ticks,
        ));
    }
    let window: Duration = r.shares().iter().map(|s| s.wall).sum();
    let per_tick = r.count("DescribeInstances") as f64 / ticks_of(window) / n;
    rows.push(target(
        "DescribeInstances per instance per tick, all stages",
        format!("{per_tick:.5}"),
        "far below 1",
        per_tick < 0.1,
    ));
    rows
}

fn cpu_rows(r: &Report) -> Vec<Row> {
    let n = r.instances() as f64;
    let per = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0 / n);
    let shares = r.shares();
    let cpu: Duration = shares.iter().map(|s| s.cpu).sum();
    let wall: Duration = shares.iter().map(|s| s.wall).sum();
    let names = shares
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(" / ");
    let each = |f: &dyn Fn(&Share) -> String| shares.iter().map(f).collect::<Vec<_>>().join(" / ");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    vec![
        info(
            "scheduler CPU per instance, all stages, ms",
            format!(
                "{} ({:.2} s of CPU over {:.1} s)",
                per(cpu),
                cpu.as_secs_f64(),
                wall.as_secs_f64()
            ),
        ),
        info(
            format!("  of which {names}, ms per instance"),
            each(&|s| per(s.cpu)),
        ),
        info(
            "  idle scheduler (spot quotes, ticks), % of one core",
            format!("{:.1}%", r.idle * 100.0),
        ),
        info(
            format!("bench process (proxy, played machines, clients): {names}, ms per instance"),
            each(&|s| per(s.bench_cpu)),
        ),
        info(
            format!("host CPU busy, all {cores} cores: {names}"),
            each(&|s| format!("{:.0}%", s.host_busy * 100.0)),
        ),
        info(
            "scheduler peak RSS (VmHWM)",
            format!("{:.0} MB", r.rss_peak as f64 / (1 << 20) as f64),
        ),
        info(
            "scheduler log: WARN / ERROR lines",
            format!("{} / {}", r.log_counts.0, r.log_counts.1),
        ),
    ]
}

fn process_rows(r: &Report) -> Vec<Row> {
    let (at, after) = (&r.driven.at_deployed, &r.driven.after_complete);
    let (gone, waited) = &r.gone;
    vec![
        info(
            "played machines booted / running at all DEPLOYED",
            format!(
                "{} / {} of {} instances",
                at.booted, at.running, at.instances
            ),
        ),
        info(
            "played processes at all DEPLOYED: agents + workers + others",
            format!(
                "{} + {} + {}",
                at.live.agents, at.live.workers, at.live.others
            ),
        ),
        info(
            "played machines running when all were terminated",
            after.running.to_string(),
        ),
        target(
            format!(
                "played processes left after Complete (waited {})",
                ms(*waited)
            ),
            format!("{} {gone:?}", gone.len()),
            "0",
            gone.is_empty(),
        ),
        target(
            "played processes left after the world's drop",
            format!("{} {:?}", r.after_drop.len(), r.after_drop),
            "0",
            r.after_drop.is_empty(),
        ),
    ]
}

/// The reasons of what failed, the first few of each.
fn print_failures(r: &Report) {
    const SHOWN: usize = 20;
    let d = r.driven;
    if !d.deploys.failed.is_empty() {
        println!("\nfailed deploys ({}):", d.deploys.failed.len());
        for f in d.deploys.failed.iter().take(SHOWN) {
            let id = f.job_id.as_deref().unwrap_or("-");
            println!("  {} ({id}): {}", f.model, f.reason);
        }
    }
    let cooled = d.cooled.as_ref().map_or(&[][..], |c| &c.failed);
    for (what, failed) in [("cool-downs", cooled), ("Completes", &d.completed.failed)] {
        if !failed.is_empty() {
            println!("\nfailed {what} ({}):", failed.len());
            for why in failed.iter().take(SHOWN) {
                println!("  {why}");
            }
        }
    }
}

//! The printed report: what was seeded and started, a table of every
//! measure with its target, and notes on how each was taken.

use std::time::Duration;

use super::fanout::Fanout;
use super::measure::{ListJobs, Page, Steady};
use super::restart::{After, Restart};
use super::seed::Seeded;
use super::{FleetArgs, MACHINE_TYPE};
use crate::stats::{self, ms, Dist};

const TARGET_CPU_PCT: f64 = 25.0;
const TARGET_RSS_MB: f64 = 200.0;
const TARGET_LIST_P99: Duration = Duration::from_millis(10);
const TARGET_RESTART: Duration = Duration::from_secs(2);

pub struct Report<'a> {
    pub args: &'a FleetArgs,
    pub seeded: &'a Seeded,
    pub seed_time: Duration,
    pub first_start: Duration,
    pub rss_started: u64,
    pub joined: Duration,
    pub join_failures: u64,
    pub nofile: u64,
    pub steady: Steady,
    pub list: ListJobs,
    pub list_user: usize,
    pub fanout: Fanout,
    pub restart: Restart,
    pub after: After,
}

/// measure, value, target, met?
type Row = [String; 4];

/// A row with no target.
fn info(measure: impl Into<String>, value: impl Into<String>) -> Row {
    [measure.into(), value.into(), "-".into(), "-".into()]
}

/// A row with a target, met or not.
fn target(
    measure: impl Into<String>,
    value: impl Into<String>,
    target: impl Into<String>,
    met: bool,
) -> Row {
    let met = if met { "yes" } else { "NO" };
    [measure.into(), value.into(), target.into(), met.into()]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// `p50 / p99 / max ms`, or `-` without samples.
fn dist_ms(d: &Option<Dist>) -> String {
    match d {
        Some(d) => format!("{} / {} / {} ms", ms(d.p50), ms(d.p99), ms(d.max)),
        None => "-".into(),
    }
}

pub fn print(r: &Report) {
    let a = r.args;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "fleet: {} pool agents, {} jobs, {} watchers on loopback ({cores} cores)",
        a.agents, a.jobs, a.watchers
    );
    println!();
    print_setup(r);
    println!();
    print_table(&rows(r));
    print_notes(r, cores);
}

/// What was seeded, and how the fleet joined.
fn print_setup(r: &Report) {
    let a = r.args;
    println!(
        "store: {} jobs of {} users ({}..{} each), {} timeline events, seeded through the store API in {:.1} s:",
        a.jobs,
        a.users,
        r.seeded.jobs_per_user.iter().min().unwrap_or(&0),
        r.seeded.jobs_per_user.iter().max().unwrap_or(&0),
        r.seeded.events,
        r.seed_time.as_secs_f64()
    );
    for (walk, n) in &r.seeded.mix {
        println!("  {n:>6}  {}", walk.describe());
    }
    let running = r.seeded.runs.iter().filter(|x| x.is_some()).count();
    println!(
        "  Recovery relaunches nothing: no job is QUEUING and no instance LAUNCHING or CLOSING;\n  \
         the {running} active jobs are re-attached (route, agent link, heartbeat grace)."
    );
    println!(
        "fleet: {} agents of pool type {MACHINE_TYPE}, each its own HTTP/2 connection; {} idle in the pool,\n  \
         {running} running the active jobs' instances. Register, then Report{{heartbeat}} every {} ms\n  \
         (staggered over one interval), the real agent's backoff on failure. All joined in {:.2} s\n  \
         ({} Register calls failed and were retried); open-file limit {}.",
        a.agents,
        a.agents - running,
        a.heartbeat_ms,
        r.joined.as_secs_f64(),
        r.join_failures,
        r.nofile
    );
}

/// The table: steady state, ListJobs, fan-out, restart, after the restart.
fn rows(r: &Report) -> Vec<Row> {
    [
        steady_rows(r),
        list_rows(r),
        fanout_rows(r),
        restart_rows(r),
        after_rows(r),
    ]
    .concat()
}

/// Steady state: the scheduler's CPU and memory, heartbeats.
fn steady_rows(r: &Report) -> Vec<Row> {
    let (a, s) = (r.args, &r.steady);
    let cpu_pct = s.cpu.as_secs_f64() / s.window.as_secs_f64() * 100.0;
    vec![
        target(
            format!(
                "scheduler CPU, steady state ({:.0} s window)",
                s.window.as_secs_f64()
            ),
            format!("{cpu_pct:.1}% of one core"),
            format!("<= {TARGET_CPU_PCT:.0}%"),
            cpu_pct <= TARGET_CPU_PCT,
        ),
        target(
            "scheduler RSS at end of window (max sampled)",
            format!("{:.0} MB ({:.0} MB)", mb(s.rss), mb(s.rss_max)),
            format!("<= {TARGET_RSS_MB:.0} MB"),
            mb(s.rss.max(s.rss_max)) <= TARGET_RSS_MB,
        ),
        info(
            "  of which right after start (store recovered, no clients yet)",
            format!("{:.0} MB", mb(r.rss_started)),
        ),
        info(
            "scheduler peak RSS since start (VmHWM)",
            format!("{:.0} MB", mb(s.hwm)),
        ),
        target(
            "heartbeats answered in window",
            format!(
                "{:.0}/s, {} failed",
                s.heartbeats as f64 / s.window.as_secs_f64(),
                s.failures
            ),
            format!("{}/s", a.agents as u64 * 1000 / a.heartbeat_ms.max(1)),
            s.failures == 0,
        ),
        info("heartbeat round trip p50 / p99 / max", dist_ms(&s.rtt)),
    ]
}

/// ListJobs latency, one page and a whole listing.
fn list_rows(r: &Report) -> Vec<Row> {
    let list_p99 = r.list.latency.as_ref().map(|d| d.p99);
    vec![
        target(
            format!(
                "ListJobs call p50 / p99 / max ({} calls, one page each)",
                r.list.latency.as_ref().map_or(0, |d| d.n),
            ),
            dist_ms(&r.list.latency),
            format!("p99 <= {} ms", TARGET_LIST_P99.as_millis()),
            list_p99.is_some_and(|p| p <= TARGET_LIST_P99),
        ),
        info(
            format!(
                "  user-{:03}'s whole listing: {} jobs in {} pages, p50 / p99 / max",
                r.list_user, r.list.jobs, r.list.pages
            ),
            dist_ms(&r.list.listing),
        ),
    ]
}

/// WatchJob fan-out of one change to every watcher.
fn fanout_rows(r: &Report) -> Vec<Row> {
    let a = r.args;
    vec![
        [
            format!(
                "WatchJob fan-out: change -> all {} watchers have it ({} changes)",
                a.watchers,
                r.fanout.rounds.as_ref().map_or(0, |d| d.n)
            ),
            dist_ms(&r.fanout.rounds),
            "report".into(),
            "-".into(),
        ],
        info(
            "  each watcher's delivery latency p50 / p99 / max",
            dist_ms(&r.fanout.each),
        ),
        info(
            "  of which the change's durable commit (Report returns)",
            dist_ms(&r.fanout.commit),
        ),
        info(
            format!(
                "  {} watchers subscribed, history ({} events) replayed",
                a.watchers, r.fanout.history
            ),
            format!("{} ms", ms(r.fanout.subscribed)),
        ),
    ]
}

/// `kill -9` and restart: until it serves, and until the fleet is back.
fn restart_rows(r: &Report) -> Vec<Row> {
    let (restart_value, restart_met) = match &r.restart.agents {
        Ok(d) => (
            format!("{} ms", ms(*d)),
            *d <= TARGET_RESTART && r.restart.list <= TARGET_RESTART,
        ),
        Err(e) => (e.clone(), false),
    };
    vec![
        info(
            "restart: spawn -> serving (address file written)",
            format!("{} ms", ms(r.restart.listening)),
        ),
        info(
            "restart: spawn -> health SERVING",
            format!("{} ms", ms(r.restart.health)),
        ),
        info(
            "restart: spawn -> ListJobs answers",
            format!("{} ms", ms(r.restart.list)),
        ),
        target(
            format!(
                "restart: spawn -> all {} agents heartbeating again",
                r.args.agents
            ),
            restart_value,
            format!("<= {} ms", TARGET_RESTART.as_millis()),
            restart_met,
        ),
        info(
            "  each agent: spawn -> its first heartbeat answered, p50 / p99 / max",
            dist_ms(&r.restart.each),
        ),
        target(
            "  connections dropped for a full accept queue meanwhile",
            r.restart.overflows.to_string(),
            "0",
            r.restart.overflows == 0,
        ),
    ]
}

/// After the restart: the fleet heartbeats, the jobs are all there.
fn after_rows(r: &Report) -> Vec<Row> {
    let a = r.args;
    vec![
        target(
            "after restart: agents heard from in the last 2 s",
            format!(
                "{} of {} ({} registrations)",
                r.after.heartbeating, a.agents, r.restart.registrations
            ),
            a.agents.to_string(),
            r.after.heartbeating == a.agents,
        ),
        target(
            "after restart: ListJobs returns",
            format!("{} jobs", r.after.jobs),
            r.list.jobs.to_string(),
            r.after.jobs == r.list.jobs,
        ),
        info(
            "after restart: scheduler CPU (3 s) / RSS",
            format!("{:.1}% / {:.0} MB", r.after.cpu_pct, mb(r.after.rss)),
        ),
    ]
}

/// The table, with fleet's four columns.
fn print_table(rows: &[Row]) {
    stats::print_table(&["measure", "value", "target", "met?"], rows);
}

/// How each measure was taken.
fn print_notes(r: &Report, cores: usize) {
    let (a, s) = (r.args, &r.steady);
    println!();
    println!(
        "CPU: utime+stime of the scheduler process (/proc/PID/stat) over the window, in which only\n  \
         heartbeats flow; this bench process (agents and all) used {:.1}% of a core meanwhile, on the same {cores} cores.",
        s.bench_cpu.as_secs_f64() / s.window.as_secs_f64() * 100.0
    );
    let Page {
        jobs,
        instances,
        bytes,
    } = r.list.first;
    println!(
        "ListJobs: one call at a time over one connection while the fleet heartbeats, paging through\n  \
         user-{:03}'s jobs with the default page size; one call (page) returns {jobs} jobs with their\n  \
         {instances} instances and cost, {:.0} KiB encoded.",
        r.list_user,
        bytes as f64 / 1024.0
    );
    println!(
        "Fan-out: {} WatchJob streams (one connection each) on one TRAINING job; its trainer's agent sends\n  \
         Report{{progress}}: one durable timeline event. Latency from sending the Report until a watcher\n  \
         has the event; per change, until the last of them has it. One change at a time.",
        a.watchers
    );
    println!(
        "Restart: kill -9 (reaped in {} ms), then the same command on the same data dir and address at once.\n  \
         Times from spawning the process: the first health check answered SERVING, the first ListJobs\n  \
         answered, and the last agent's first heartbeat answered by the new process (idle pool agents\n  \
         must register again first: the pool is live state). An agent, as aibro-agent, notices only\n  \
         at its next heartbeat (up to {} ms after the kill), pauses 200 ms, then registers (backoff\n  \
         100 ms doubling to 2 s while refused), so the last one is back about one interval + 200 ms\n  \
         after the kill however fast the scheduler serves. Watchers are not reopened.",
        ms(r.restart.down),
        a.heartbeat_ms
    );
    println!(
        "First start on the seeded dir (spawn -> serving): {} ms.",
        ms(r.first_start)
    );
}

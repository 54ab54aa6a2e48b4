//! `aibro-bench console`: the web console at scale. Seeds a store with
//! `--jobs` jobs (the fleet's seed: one user owns them all), starts the real
//! scheduler on it, signs in as that user and as the admin (who sees every
//! job), times the jobs page's first page (`GET /console`, 50 rows, one at
//! a time on fresh connections), then holds `--consoles` live streams
//! (`/console/events`) open and measures the scheduler's CPU over a window
//! against the same window without them. No job changes meanwhile: the
//! window measures what open consoles cost at rest.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use aibro_scheduler::auth::Auth;
use aibro_scheduler::store::Store;

use crate::fleet::agents::agent_id;
use crate::fleet::scheduler::SchedulerProcess;
use crate::fleet::{seed, FleetArgs};
use crate::stats::{dist, ms, print_table};

const TARGET_PAGE: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Jobs seeded into the store (all one user's).
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// First-page loads timed per user.
    #[arg(long, default_value_t = 100)]
    pub calls: usize,
    /// Live consoles held open for the CPU window.
    #[arg(long, default_value_t = 100)]
    pub consoles: usize,
    /// The CPU window, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

pub async fn run(args: ConsoleArgs) -> Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("aibro-console-")
        .tempdir()?;
    let dir = temp.path();
    let fleet = FleetArgs::for_console(args.jobs);
    eprintln!("seeding {} jobs ...", args.jobs);
    let seeded = seed::seed(&dir.join("db"), &fleet, "127.0.0.1:9").await?;
    pool_credentials(dir, fleet.agents).await?;
    let mut scheduler = SchedulerProcess::spawn(dir, fleet.heartbeat_ms)?;
    scheduler.wait_listening().await?;
    let admin_token = std::fs::read_to_string(dir.join("admin-token"))?;
    let addr = scheduler.addr.clone();
    let user = sign_in(&addr, &seeded.tokens[0]).await?;
    let admin = sign_in(&addr, admin_token.trim()).await?;

    let mut rows = Vec::new();
    for (who, cookie) in [
        ("user (owns every job)", &user),
        ("admin (sees every job)", &admin),
    ] {
        let d = first_pages(&addr, cookie, args.calls).await?;
        let d = d.context("no samples")?;
        rows.push([
            format!("jobs page, first page of {} jobs: {who}", args.jobs),
            format!("{} / {} / {} ms", ms(d.p50), ms(d.p99), ms(d.max)),
            format!("p99 < {} ms", TARGET_PAGE.as_millis()),
            if d.p99 < TARGET_PAGE { "yes" } else { "NO" }.to_string(),
        ]);
    }
    let window = Duration::from_secs(args.seconds);
    let idle = cpu_over(&scheduler, window).await?;
    let mut streams = Vec::with_capacity(args.consoles);
    for _ in 0..args.consoles {
        streams.push(live(&addr, &user).await?);
    }
    let watched = cpu_over(&scheduler, window).await?;
    let added = (watched - idle).max(0.0);
    rows.push([
        format!(
            "{} open live consoles, no job changes: CPU added",
            args.consoles
        ),
        format!("{:.2}% of a core ({:.2}% vs {:.2}%)", added, watched, idle),
        "< 5% of a core".into(),
        if added < 5.0 { "yes" } else { "NO" }.to_string(),
    ]);
    drop(streams);
    println!(
        "console: the jobs page and live consoles ({} jobs)",
        args.jobs
    );
    print_table(
        &["measure", "p50 / p99 / max, or value", "target", "met"],
        &rows,
    );
    Ok(())
}

/// Credentials for the seeded pool agents (which never start): the
/// scheduler's recovery links their running instances to them.
async fn pool_credentials(dir: &std::path::Path, agents: usize) -> Result<()> {
    let store = Store::open(&dir.join("db"))?;
    let auth = Auth::open(store.clone()).await?;
    for a in 0..agents {
        auth.credentials().issue_pool(&agent_id(a)).await?;
    }
    store.flush().await?;
    Ok(())
}

/// Signs in with `token`; the session cookie (`aibro_session=…`).
async fn sign_in(addr: &str, token: &str) -> Result<String> {
    let body = format!("token={token}");
    let head = format!(
        "POST /console/signin HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(addr, &head).await?;
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .with_context(|| format!("no session cookie: {answer}"))?;
    Ok(cookie.to_string())
}

/// `calls` loads of `GET /console`, each on a fresh connection, after a warm-up.
async fn first_pages(addr: &str, cookie: &str, calls: usize) -> Result<Option<crate::stats::Dist>> {
    let head = format!(
        "GET /console HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls + 5 {
        let t = Instant::now();
        let answer = exchange(addr, &head).await?;
        let took = t.elapsed();
        ensure!(
            answer.starts_with("HTTP/1.1 200"),
            "the jobs page: {answer}"
        );
        ensure!(answer.contains("data-job-id="), "no rows: {answer}");
        if i >= 5 {
            samples.push(took);
        }
    }
    Ok(dist(samples))
}

/// One request on a fresh connection; the whole answer.
async fn exchange(addr: &str, request: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    Ok(answer)
}

/// An open `/console/events` stream, read (and dropped) in the background.
async fn live(addr: &str, cookie: &str) -> Result<tokio::task::JoinHandle<()>> {
    let mut s = TcpStream::connect(addr).await?;
    let head = format!("GET /console/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n");
    s.write_all(head.as_bytes()).await?;
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await?;
    ensure!(
        first.starts_with(b"HTTP/1.1 200"),
        "the live stream was refused"
    );
    Ok(tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    }))
}

/// The scheduler's CPU over `window`, in percent of a core.
async fn cpu_over(scheduler: &SchedulerProcess, window: Duration) -> Result<f64> {
    let cpu0 = scheduler.cpu()?;
    tokio::time::sleep(window).await;
    let used = scheduler.cpu()? - cpu0;
    Ok(100.0 * used.as_secs_f64() / window.as_secs_f64())
}

//! `aibro-bench console`: the web console at scale. Seeds a store with
//! `--jobs` jobs (the fleet's seed: one user owns them all), starts the real
//! scheduler on it, signs in as that user and as the admin (who sees every
//! job), times the jobs page's first page (`GET /console`, 50 rows, one at
//! a time on fresh connections), then holds `--consoles` live streams
//! (`/console/events`) open and measures the scheduler's CPU over a window
//! against the same window without them: at rest, and while the seeded
//! training job changes `--changes-per-s` times a second (its trainer's
//! agent reports progress through the gateway, with the pool credential the
//! bench gave it; every console sees each change).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use aibro_scheduler::auth::Auth;
use aibro_scheduler::store::Store;

use aibro_proto::v1 as pb;

use crate::fleet::agents::agent_id;
use crate::fleet::clients::{self, Gateway};
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
    /// Each CPU window, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Job changes a second in the windows with changes.
    #[arg(long, default_value_t = 10)]
    pub changes_per_s: u64,
}

/// measure, value, target, met?
type Row = [String; 4];

pub async fn run(args: ConsoleArgs) -> Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("aibro-console-")
        .tempdir()?;
    let dir = temp.path();
    let fleet = FleetArgs::for_console(args.jobs);
    eprintln!("seeding {} jobs ...", args.jobs);
    let seeded = seed::seed(&dir.join("db"), &fleet, "127.0.0.1:9").await?;
    let credentials = pool_credentials(dir, fleet.agents).await?;
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
    let w = &seeded.watched;
    let mut trainer = Trainer {
        gateway: clients::gateway(&scheduler.endpoint(), &credentials[w.agent])?,
        job_id: w.job_id.clone(),
        instance_id: w.instance_id.clone(),
        agent_id: agent_id(w.agent),
        seq: w.progress_seq,
    };
    rows.extend(consoles_cpu(&args, &scheduler, &mut trainer, &user).await?);
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

/// The scheduler's CPU without consoles, then with `--consoles` open, each
/// at rest and with job changes; what the consoles received.
async fn consoles_cpu(
    args: &ConsoleArgs,
    scheduler: &SchedulerProcess,
    trainer: &mut Trainer,
    cookie: &str,
) -> Result<Vec<Row>> {
    let window = Duration::from_secs(args.seconds);
    let rest = trainer.cpu_over(scheduler, window, 0).await?;
    let busy = trainer
        .cpu_over(scheduler, window, args.changes_per_s)
        .await?;
    let mut streams = Vec::with_capacity(args.consoles);
    let delivered = Arc::new(AtomicU64::new(0));
    for _ in 0..args.consoles {
        streams.push(live(&scheduler.addr, cookie, delivered.clone()).await?);
    }
    let rest_watched = trainer.cpu_over(scheduler, window, 0).await?;
    let before = trainer.seq;
    let busy_watched = trainer
        .cpu_over(scheduler, window, args.changes_per_s)
        .await?;
    let changes = format!("{} job changes/s", args.changes_per_s);
    let mut rows = Vec::new();
    for (what, with, without) in [
        ("no job changes", rest_watched, rest),
        (changes.as_str(), busy_watched, busy),
    ] {
        let added = (with - without).max(0.0);
        rows.push([
            format!("{} open live consoles, {what}: CPU added", args.consoles),
            format!("{added:.2}% of a core ({with:.2}% vs {without:.2}%)"),
            "< 5% of a core".into(),
            if added < 5.0 { "yes" } else { "NO" }.to_string(),
        ]);
    }
    let expected = (trainer.seq - before) * args.consoles as u64;
    rows.push([
        "job events the consoles had by the window's end".into(),
        delivered.load(Ordering::Relaxed).to_string(),
        format!("{expected} (every change, every console)"),
        "-".into(),
    ]);
    drop(streams);
    Ok(rows)
}

/// Credentials for the seeded pool agents (which never start): the
/// scheduler's recovery links their running instances to them.
async fn pool_credentials(dir: &std::path::Path, agents: usize) -> Result<Vec<String>> {
    let store = Store::open(&dir.join("db"))?;
    let auth = Auth::open(store.clone()).await?;
    let mut credentials = Vec::with_capacity(agents);
    for a in 0..agents {
        credentials.push(auth.credentials().issue_pool(&agent_id(a)).await?);
    }
    drop(auth);
    store.close().await?;
    Ok(credentials)
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

/// An open `/console/events` stream, read in the background; `delivered`
/// counts its `job` events.
async fn live(
    addr: &str,
    cookie: &str,
    delivered: Arc<AtomicU64>,
) -> Result<tokio::task::JoinHandle<()>> {
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
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            let events = buf[..n].windows(10).filter(|w| w == b"event: job").count();
            delivered.fetch_add(events as u64, Ordering::Relaxed);
        }
    }))
}

/// The seeded training job's trainer, as its pool agent: heartbeats (so
/// that it is not taken for lost) and progress reports (job changes).
struct Trainer {
    gateway: Gateway,
    job_id: String,
    instance_id: String,
    agent_id: String,
    seq: u64,
}

impl Trainer {
    /// The scheduler's CPU over `window` (percent of a core) while the
    /// trainer heartbeats every second and reports `changes_per_s` progress.
    async fn cpu_over(
        &mut self,
        scheduler: &SchedulerProcess,
        window: Duration,
        changes_per_s: u64,
    ) -> Result<f64> {
        let ticks_per_s = changes_per_s.max(1);
        let mut tick = tokio::time::interval(Duration::from_secs(1) / ticks_per_s as u32);
        let cpu0 = scheduler.cpu()?;
        let t = Instant::now();
        for i in 0..window.as_secs() * ticks_per_s {
            tick.tick().await;
            if i % ticks_per_s == 0 {
                self.report(pb::report_request::Body::Heartbeat(pb::Heartbeat::default()))
                    .await?;
            }
            if changes_per_s > 0 {
                self.seq += 1;
                let progress = pb::Progress {
                    job_id: self.job_id.clone(),
                    seq: self.seq,
                    epoch: self.seq as u32,
                    total_epochs: u32::MAX,
                    metrics: [("loss".to_string(), 1.0 / self.seq as f64)].into(),
                    ..Default::default()
                };
                self.report(pb::report_request::Body::Progress(progress))
                    .await?;
            }
        }
        let used = scheduler.cpu()? - cpu0;
        Ok(100.0 * used.as_secs_f64() / t.elapsed().as_secs_f64())
    }

    async fn report(&mut self, body: pb::report_request::Body) -> Result<()> {
        let request = pb::ReportRequest {
            instance_id: self.instance_id.clone(),
            agent_id: self.agent_id.clone(),
            body: Some(body),
        };
        self.gateway
            .report(request)
            .await
            .context("the trainer's report")?;
        Ok(())
    }
}

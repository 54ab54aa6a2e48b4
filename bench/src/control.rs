//! The control plane: cold deploy → DEPLOYED with its per-phase breakdown
//! from the job's timeline (and the scheduler's own share of it), the wake-up
//! of a stopped cooling instance vs its cold launch, and Fit → TRAINING on a
//! cold instance vs the warm one it left.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{example, Scheduler};

#[derive(clap::Args)]
pub struct ControlArgs {
    /// Cold deploys to time.
    #[arg(long, default_value_t = 5)]
    pub deploys: usize,
    /// The agents' sandbox level (`auto`: the strongest the machine allows).
    #[arg(long, default_value = "auto")]
    pub sandbox: String,
}

pub async fn run(args: ControlArgs) -> anyhow::Result<()> {
    println!("agents' sandbox: {}", args.sandbox);
    let flags = ["--agent-workers", "2", "--agent-sandbox", &args.sandbox];
    let s = Scheduler::start_with(&flags).await?;
    let token = s.user("bench").await?;
    cold_deploys(&s, &token, args.deploys).await?;
    cooling_wake(&s, &token).await?;
    fit_cold_vs_warm(&s, &token).await
}

/// Wall-clock milliseconds since the epoch (the timeline's clock).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Where the time of one cold deploy went, from the client's clock and the
/// timeline's events (millisecond stamps, one clock: same machine).
struct Breakdown {
    /// Deploy sent → "job created" committed (scheduler).
    accept: i64,
    /// REQUESTING_SERVER: job created → instance launched (scheduler + provider spawn).
    requesting: i64,
    /// CONNECTING_SERVER: the agent process starts and registers, gets Prepare.
    connecting: i64,
    /// GEARING_UP_ENV (0 when the repo needs no virtualenv).
    gearing: i64,
    /// DEPLOYING_MODEL: fetch, unpack, start the workers, load_model().
    loading: i64,
    /// DEPLOYED committed → the client's WatchJob has it (scheduler).
    notify: i64,
    total: i64,
}

impl Breakdown {
    fn of(sent_ms: i64, seen_ms: i64, timeline: &pb::Timeline) -> Breakdown {
        let phase = |name: &str| {
            timeline
                .phases
                .iter()
                .find(|p| p.name == name)
                .map_or(0, |p| p.duration_ms as i64)
        };
        let created = timeline.events.first().map_or(sent_ms, at_ms);
        let deployed = timeline
            .events
            .iter()
            .find(|e| e.status() == JobStatus::Deployed)
            .map_or(seen_ms, at_ms);
        Breakdown {
            accept: (created - sent_ms).max(0),
            requesting: phase("REQUESTING_SERVER"),
            connecting: phase("CONNECTING_SERVER"),
            gearing: phase("GEARING_UP_ENV"),
            loading: phase("DEPLOYING_MODEL"),
            notify: seen_ms - deployed,
            total: seen_ms - sent_ms,
        }
    }

    /// Time not inside an agent phase.
    fn scheduler(&self) -> i64 {
        self.accept + self.requesting + self.notify
    }
}

async fn cold_deploys(s: &Scheduler, token: &str, runs: usize) -> anyhow::Result<()> {
    let digest = s.upload_dir(token, &example("echo")).await?;
    println!("cold deploy -> DEPLOYED, examples/echo (no requirements), local provider, ms");
    println!(
        "{:<4} {:>7} {:>7} {:>10} {:>10} {:>8} {:>8} {:>7} {:>10}",
        "run",
        "total",
        "accept",
        "requesting",
        "connecting",
        "gear-up",
        "loading",
        "notify",
        "scheduler"
    );
    let mut rows = Vec::new();
    for i in 0..runs {
        let sent = now_ms();
        let start = Instant::now();
        let job_id = s.deploy(token, &format!("cold-{i}"), &digest).await?;
        s.wait_status(token, &job_id, JobStatus::Deployed).await?;
        let seen = sent + start.elapsed().as_millis() as i64;
        let b = Breakdown::of(sent, seen, &s.timeline(token, &job_id).await?);
        println!(
            "{:<4} {:>7} {:>7} {:>10} {:>10} {:>8} {:>8} {:>7} {:>9.1}%",
            i + 1,
            b.total,
            b.accept,
            b.requesting,
            b.connecting,
            b.gearing,
            b.loading,
            b.notify,
            100.0 * b.scheduler() as f64 / b.total as f64
        );
        s.complete(token, &job_id).await?;
        rows.push(b);
    }
    rows.sort_by_key(|b| b.total);
    let median = &rows[rows.len() / 2];
    let share: i64 = rows.iter().map(Breakdown::scheduler).sum();
    let total: i64 = rows.iter().map(|b| b.total).sum();
    println!(
        "median cold deploy: {} ms (target <= 1,000); scheduler's own share over all runs: {:.1}% (target <= 5%)\n",
        median.total,
        100.0 * share as f64 / total as f64
    );
    Ok(())
}

/// Time from Fit to TRAINING for a cold instance and for the warm one it left.
async fn fit_cold_vs_warm(s: &Scheduler, token: &str) -> anyhow::Result<()> {
    let repo = repo_with_requirements("train-linear")?;
    let digest = s.upload_dir(token, repo.path()).await?;
    let (channel, bearer) = s.authed(Some(token)).await?;
    let mut training = pb::training_client::TrainingClient::with_interceptor(channel, bearer);
    println!("\ntraining, examples/train-linear + non-empty requirements.txt, Fit -> TRAINING");
    let mut times = Vec::new();
    for run in ["cold", "warm (reused)"] {
        let request = pb::FitRequest {
            artifact_digest: digest.clone(),
            machine_ids: vec!["local.small.od".into()],
            cool_down_period_s: 120,
            ..Default::default()
        };
        let sent = Instant::now();
        let job_id = training.fit(request).await?.into_inner().job_id;
        s.watch_until(token, &job_id, Duration::from_secs(120), |e| {
            e.status() == JobStatus::Training
        })
        .await?;
        let elapsed = sent.elapsed();
        s.watch_until(token, &job_id, Duration::from_secs(120), |e| e.last)
            .await?;
        println!("{:<44} {:>10}", run, format!("{} ms", elapsed.as_millis()));
        times.push(elapsed);
    }
    println!(
        "{:<44} {:>10.1}x",
        "warm vs cold",
        times[0].as_secs_f64() / times[1].as_secs_f64()
    );
    Ok(())
}

/// An example repo with a non-empty requirements.txt, so a cold launch builds
/// a virtualenv (installing nothing: `--no-index` keeps it offline).
fn repo_with_requirements(name: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let src = example(name);
    for sub in ["", "model", "data"]
        .into_iter()
        .filter(|sub| src.join(sub).is_dir())
    {
        std::fs::create_dir_all(dir.path().join(sub))?;
        for entry in std::fs::read_dir(src.join(sub))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name()))?;
            }
        }
    }
    std::fs::write(dir.path().join("requirements.txt"), "--no-index\n")?;
    Ok(dir)
}

fn reached(
    e: &pb::JobEvent,
    id: &str,
    status: pb::InstanceStatus,
    sub: pb::InstanceSubstatus,
) -> bool {
    e.instance_id == id && e.instance_status() == status && e.instance_substatus() == sub
}

fn at_ms(e: &pb::JobEvent) -> i64 {
    e.at.as_ref()
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// Cold launch of a cooling instance vs waking it after its cool-down.
async fn cooling_wake(s: &Scheduler, token: &str) -> anyhow::Result<()> {
    let (job_id, cooling) = deploy_with_cooling(s, token).await?;
    let (cold_ms, last_seq) = cold_launch(s, token, &job_id, &cooling).await?;
    let (wake, woke) = wake_up(s, token, &job_id, &cooling, last_seq).await?;
    print_wake(cold_ms, wake, &woke);
    Ok(())
}

const WAKE_DEADLINE: Duration = Duration::from_secs(120);

/// Deploys echo (with a virtualenv) with a cooling instance and a 2 s
/// cool-down; returns the job and its cooling instance once DEPLOYED.
async fn deploy_with_cooling(s: &Scheduler, token: &str) -> anyhow::Result<(String, String)> {
    let repo = repo_with_requirements("echo")?;
    let digest = s.upload_dir(token, repo.path()).await?;
    let mut request = aibro_tests::deploy_request("wake", &digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: "local.small.od".into(),
        cooling: "local.large.od".into(),
    });
    request.cool_down_period_s = 2;
    let job_id = s
        .inference(Some(token))
        .await?
        .deploy(request)
        .await?
        .into_inner()
        .job_id;
    s.wait_status(token, &job_id, JobStatus::Deployed).await?;
    let job = s.get_job(token, &job_id).await?;
    let cooling = job
        .instances
        .iter()
        .find(|i| i.role() == pb::InstanceRole::Cooling)
        .expect("cooling instance")
        .instance_id
        .clone();
    Ok((job_id, cooling))
}

/// Waits for the cooling instance to cool down (stopped); returns its cold
/// launch (LAUNCHING -> EXECUTING) in ms and the last event's seq.
async fn cold_launch(
    s: &Scheduler,
    token: &str,
    job_id: &str,
    cooling: &str,
) -> anyhow::Result<(i64, u64)> {
    use pb::{InstanceStatus as S, InstanceSubstatus as Sub};
    let events = s
        .watch_until(token, job_id, WAKE_DEADLINE, |e| {
            reached(e, cooling, S::Closed, Sub::Stopped)
        })
        .await?;
    let launched = events
        .iter()
        .find(|e| reached(e, cooling, S::Launching, Sub::None))
        .map(at_ms);
    let serving = events
        .iter()
        .find(|e| reached(e, cooling, S::Executing, Sub::None))
        .map(at_ms);
    let cold_ms = serving.zip(launched).map(|(b, a)| b - a).unwrap_or(0);
    Ok((cold_ms, events.last().map_or(0, |e| e.seq)))
}

/// Sends a request that wakes the stopped cooling instance; returns the time
/// until it is EXECUTING again and its events after `last_seq`.
async fn wake_up(
    s: &Scheduler,
    token: &str,
    job_id: &str,
    cooling: &str,
    last_seq: u64,
) -> anyhow::Result<(Duration, Vec<pb::JobEvent>)> {
    use pb::{InstanceStatus as S, InstanceSubstatus as Sub};
    let sent = Instant::now();
    s.predict("bench", "public", "wake", "{}").await?;
    let woke = s
        .watch_until(token, job_id, WAKE_DEADLINE, |e| {
            e.seq > last_seq && reached(e, cooling, S::Executing, Sub::None)
        })
        .await?;
    let wake = sent.elapsed();
    let woke = woke
        .into_iter()
        .filter(|e| e.seq > last_seq && e.instance_id == cooling)
        .collect();
    let r = s.predict("bench", "public", "wake", "{}").await?;
    assert_eq!(r.instance_id, cooling, "the woken instance serves");
    Ok((wake, woke))
}

fn print_wake(cold_ms: i64, wake: Duration, woke: &[pb::JobEvent]) {
    println!("\ncooling instance, echo + non-empty requirements.txt (virtualenv), local provider");
    println!(
        "{:<44} {:>10}",
        "cold launch: requested -> EXECUTING",
        format!("{cold_ms} ms")
    );
    println!(
        "{:<44} {:>10}",
        "wake: first request -> EXECUTING again",
        format!("{} ms", wake.as_millis())
    );
    println!(
        "{:<44} {:>10.1}x",
        "wake-up vs cold launch",
        cold_ms as f64 / wake.as_secs_f64() / 1000.0
    );
    if let Some(first) = woke.first() {
        println!("wake-up, step by step (scheduler timeline):");
        for e in woke {
            let what = match e.phase.as_str() {
                "" => pb::InstanceStatus::try_from(e.instance_status)
                    .map_or("?", |s| s.as_str_name())
                    .to_string(),
                phase => phase.to_string(),
            };
            println!("  +{:>5} ms  {what}", at_ms(e) - at_ms(first));
        }
    }
}

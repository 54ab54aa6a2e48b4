//! `aibro-bench`: starts the real scheduler (local provider) from the same
//! target dir, measures cold deploy → DEPLOYED of `examples/echo`, predict
//! latency through the scheduler vs straight to the agent, and the wake-up of
//! a stopped cooling instance vs its cold launch, and prints tables.
//!
//! `cargo build --release --workspace && ./target/release/aibro-bench`

use std::time::{Duration, Instant};

use aibro_proto::v1::{self as pb, agent_client::AgentClient, JobStatus};
use aibro_tests::{example, Scheduler};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Cold deploys to time.
    #[arg(long, default_value_t = 5)]
    deploys: usize,
    /// Predict requests per concurrency level.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    per_s: f64,
}

fn stats(mut samples: Vec<Duration>, wall: Duration) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        max: *samples.last().unwrap(),
        per_s: samples.len() as f64 / wall.as_secs_f64(),
    }
}

fn print_row(path: &str, concurrency: usize, st: &Stats) {
    println!(
        "{:<18} {:>5} {:>10} {:>10} {:>10} {:>10.0}",
        path,
        concurrency,
        ms(st.p50),
        ms(st.p99),
        ms(st.max),
        st.per_s
    );
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Runs `requests` calls of `call` at `concurrency`; returns the latencies and wall time.
async fn drive<F, Fut>(
    requests: usize,
    concurrency: usize,
    call: F,
) -> anyhow::Result<(Vec<Duration>, Duration)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let call = call.clone();
        let n = requests / concurrency + usize::from(w < requests % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                call().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, tonic::Status>(lat)
        }));
    }
    let mut all = Vec::with_capacity(requests);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let s = Scheduler::start_with(&["--agent-workers", "2"]).await?;
    let token = s.user("bench").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;

    println!(
        "cold deploy -> DEPLOYED, examples/echo, local provider ({} runs)",
        args.deploys
    );
    println!(
        "{:<6} {:>10} {:>14} {:>14} {:>14}",
        "run", "total ms", "connect ms", "gear-up ms", "load ms"
    );
    let mut totals = Vec::new();
    let mut job_id = String::new();
    for i in 0..args.deploys {
        let start = Instant::now();
        job_id = s.deploy(&token, &format!("echo-{i}"), &digest).await?;
        s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
        let total = start.elapsed();
        totals.push(total);
        let timeline = s.timeline(&token, &job_id).await?;
        let phase = |name: &str| {
            timeline
                .phases
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.duration_ms)
                .unwrap_or(0)
        };
        println!(
            "{:<6} {:>10} {:>14} {:>14} {:>14}",
            i + 1,
            ms(total),
            phase("CONNECTING_SERVER"),
            phase("GEARING_UP_ENV"),
            phase("DEPLOYING_MODEL")
        );
    }
    totals.sort();
    println!("median cold deploy: {} ms\n", ms(totals[totals.len() / 2]));

    let model = format!("echo-{}", args.deploys - 1);
    let job = s.get_job(&token, &job_id).await?;
    let agent_addr = format!("http://{}", job.instances[0].agent_address);
    let payload = br#"{"text": "hello", "n": 1}"#.to_vec();
    println!(
        "predict, echo of a small JSON payload, {} requests per row",
        args.requests
    );
    println!(
        "{:<18} {:>5} {:>10} {:>10} {:>10} {:>10}",
        "path", "conc", "p50 ms", "p99 ms", "max ms", "req/s"
    );
    for &c in &args.concurrency {
        let channel = s.channel().await?;
        let request = pb::PredictRequest {
            owner: "bench".into(),
            client_id: "public".into(),
            model_name: model.clone(),
            payload: payload.clone(),
            content_type: "application/json".into(),
        };
        let via = pb::inference_client::InferenceClient::new(channel);
        let (lat, wall) = drive(args.requests, c, move || {
            let mut client = via.clone();
            let request = request.clone();
            async move { client.predict(request).await.map(drop) }
        })
        .await?;
        print_row("via scheduler", c, &stats(lat, wall));
        let direct = AgentClient::new(
            tonic::transport::Channel::from_shared(agent_addr.clone())?
                .connect()
                .await?,
        );
        let request = pb::AgentPredictRequest {
            job_id: job_id.clone(),
            payload: payload.clone(),
            content_type: "application/json".into(),
        };
        let (lat, wall) = drive(args.requests, c, move || {
            let mut client = direct.clone();
            let request = request.clone();
            async move { client.predict(request).await.map(drop) }
        })
        .await?;
        print_row("direct to agent", c, &stats(lat, wall));
    }
    cooling_wake(&s, &token).await?;
    fit_cold_vs_warm(&s, &token).await
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
    let deadline = Duration::from_secs(120);
    use pb::{InstanceStatus as S, InstanceSubstatus as Sub};
    let events = s
        .watch_until(token, &job_id, deadline, |e| {
            reached(e, &cooling, S::Closed, Sub::Stopped)
        })
        .await?;
    let launched = events
        .iter()
        .find(|e| reached(e, &cooling, S::Launching, Sub::None))
        .map(at_ms);
    let serving = events
        .iter()
        .find(|e| reached(e, &cooling, S::Executing, Sub::None))
        .map(at_ms);
    let cold_ms = serving.zip(launched).map(|(b, a)| b - a).unwrap_or(0);
    let last_seq = events.last().map_or(0, |e| e.seq);

    let sent = Instant::now();
    s.predict("bench", "public", "wake", "{}").await?;
    let woke = s
        .watch_until(token, &job_id, deadline, |e| {
            e.seq > last_seq && reached(e, &cooling, S::Executing, Sub::None)
        })
        .await?;
    let wake = sent.elapsed();
    let woke: Vec<_> = woke
        .iter()
        .filter(|e| e.seq > last_seq && e.instance_id == cooling)
        .collect();
    let r = s.predict("bench", "public", "wake", "{}").await?;
    assert_eq!(r.instance_id, cooling, "the woken instance serves");

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
        for e in &woke {
            let what = match e.phase.as_str() {
                "" => pb::InstanceStatus::try_from(e.instance_status)
                    .map_or("?", |s| s.as_str_name())
                    .to_string(),
                phase => phase.to_string(),
            };
            println!("  +{:>5} ms  {what}", at_ms(e) - at_ms(first));
        }
    }
    Ok(())
}

//! `aibro-bench`: starts the real scheduler (local provider) from the same
//! target dir, measures cold deploy → DEPLOYED of `examples/echo` and predict
//! latency through the scheduler vs straight to the agent, and prints a table.
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
        let timeline = s
            .jobs(Some(&token))
            .await?
            .get_timeline(pb::GetTimelineRequest {
                job_id: job_id.clone(),
            })
            .await?
            .into_inner();
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
        let st = stats(lat, wall);
        println!(
            "{:<18} {:>5} {:>10} {:>10} {:>10} {:>10.0}",
            "via scheduler",
            c,
            ms(st.p50),
            ms(st.p99),
            ms(st.max),
            st.per_s
        );
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
        let st = stats(lat, wall);
        println!(
            "{:<18} {:>5} {:>10} {:>10} {:>10} {:>10.0}",
            "direct to agent",
            c,
            ms(st.p50),
            ms(st.p99),
            ms(st.max),
            st.per_s
        );
    }
    Ok(())
}

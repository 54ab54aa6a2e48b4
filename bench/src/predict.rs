//! The predict path: the same echo model (a small JSON payload) driven in
//! closed loops at each concurrency, through the scheduler and straight to the
//! agent (gRPC, this process as the client), through the scheduler's HTTP
//! predict URL (and OIP infer beside it: [`crate::oip`]), and as a Ray Serve deployment with as many replicas as the
//! agent has workers; `wrk` drives both HTTP sides. CPU per request is the
//! server side's: the scheduler's process tree (it, its agents and their
//! Python workers) or Ray's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aibro_proto::v1::{self as pb, agent_client::AgentClient, JobStatus};
use aibro_tests::{example, Scheduler};

use crate::ray::RayServe;
use crate::stats::{ms, stats, thousands, us};
use crate::wrk;

#[derive(clap::Args)]
pub struct PredictArgs {
    /// How long each row runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub concurrency: Vec<usize>,
    /// Python workers per agent (Ray Serve runs 2 replicas).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Runtime threads of the scheduler and its agents for the aibro rows, one
    /// set of rows each; 0: their default (one per core).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub runtime_threads: Vec<usize>,
    /// Sandbox levels of the agents for the aibro rows (`auto`: the strongest
    /// the machine allows), one set of rows each.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    pub sandbox: Vec<String>,
    /// A python with ray[serve], for the Ray Serve rows (bench/peers/setup-ray.sh makes it).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/peers/ray-venv/bin/python"))]
    pub ray_python: PathBuf,
}

/// One row of the table.
pub(crate) struct Row {
    pub path: String,
    pub concurrency: usize,
    /// Answered successfully.
    pub requests: u64,
    /// Failed or timed out.
    pub errors: u64,
    /// Latency percentiles of the successful requests.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Successful requests per second.
    pub per_s: f64,
    /// The server side's CPU time (user + system) over the run, per successful request.
    pub cpu_per_req: Duration,
}

pub(crate) fn header() {
    println!(
        "{:<42} {:>5} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "path", "conc", "requests", "errors", "p50 ms", "p99 ms", "max ms", "req/s", "CPU us/req"
    );
}

pub(crate) fn print(r: &Row) {
    println!(
        "{:<42} {:>5} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>11}",
        r.path,
        r.concurrency,
        r.requests,
        r.errors,
        ms(r.p50),
        ms(r.p99),
        ms(r.max),
        thousands(r.per_s),
        us(r.cpu_per_req)
    );
}

pub async fn run(args: PredictArgs) -> anyhow::Result<()> {
    let window = Duration::from_secs(args.seconds);
    println!(
        "predict, echo of a small JSON payload, {} s per row, {} workers / replicas",
        args.seconds, args.workers
    );
    wrk::require().await?;
    anyhow::ensure!(
        args.ray_python.is_file(),
        "{} is missing: run {} (or pass --ray-python)",
        args.ray_python.display(),
        wrk::SETUP
    );
    let mut rows = Vec::new();
    for sandbox in &args.sandbox {
        for &threads in &args.runtime_threads {
            rows.extend(aibro_rows(&args, window, threads, sandbox).await?);
        }
    }
    rows.extend(ray_rows(&args.ray_python, &args, window).await?);
    rows.sort_by_key(|r| r.concurrency);
    header();
    rows.iter().for_each(print);
    summary(&rows);
    Ok(())
}

/// Through the scheduler and straight to the agent, at each concurrency, with
/// `threads` runtime threads in the scheduler and the agent (0: their
/// default) and the agent's `sandbox` level; the scheduler (and its agent)
/// are gone when this returns.
async fn aibro_rows(
    args: &PredictArgs,
    window: Duration,
    threads: usize,
    sandbox: &str,
) -> anyhow::Result<Vec<Row>> {
    let workers = args.workers.to_string();
    let n = threads.to_string();
    let mut flags = vec!["--agent-workers", &workers, "--agent-sandbox", sandbox];
    // The same for the agent the bench calls straight.
    let mut agent_flags = vec!["--workers", &workers, "--sandbox", sandbox];
    if threads > 0 {
        flags.extend(["--runtime-threads", &n, "--agent-runtime-threads", &n]);
        agent_flags.extend(["--runtime-threads", &n]);
    }
    let mut suffix = match threads {
        0 => String::new(),
        1 => ", 1 thread".to_string(),
        n => format!(", {n} threads"),
    };
    if args.sandbox.len() > 1 {
        suffix.push_str(&format!(", {sandbox}"));
    }
    let (via_path, direct_path) = (format!("{VIA}{suffix}"), format!("{DIRECT}{suffix}"));
    let http_path = format!("{HTTP}{suffix}");
    let (s, _catalog) = aibro_tests::pool_scheduler(&flags).await?;
    let token = s.user("bench").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job_id = s.deploy(&token, "echo", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let direct = DirectAgent::start(&s, &token, &digest, &agent_flags).await?;
    // The same payload as the Ray Serve peer's.
    let payload = wrk::BODY.as_bytes().to_vec();
    let mut rows = Vec::new();
    for &c in &args.concurrency {
        rows.push(via_scheduler(&s, &via_path, "echo", &payload, c, window).await?);
        rows.push(via_http(&s, &http_path, &ECHO, c, window).await?);
        rows.push(direct.measure(&direct_path, &payload, c, window).await?);
    }
    rows.extend(crate::oip::rows(&s, &token, &args.concurrency, window, &suffix).await?);
    Ok(rows)
}

/// The echo model on an agent of the bench's own (a pool host), called
/// straight, with the credential that agent keeps: the path without the
/// scheduler's hop. Its server side is that agent's process tree.
struct DirectAgent {
    agent: tokio::process::Child,
    address: String,
    credential: String,
    job_id: String,
    _dir: tempfile::TempDir,
}

impl DirectAgent {
    /// Starts the agent with `flags` as a pool host and deploys on it.
    async fn start(
        s: &Scheduler,
        token: &str,
        digest: &str,
        flags: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let host = dir.path().join("host");
        let join = std::fs::read_to_string(s.data_dir.join("join-token"))?;
        let agent = aibro_tests::host_agent_args(s, &host, "pool.cpu", Some(join.trim()), flags)?;
        aibro_tests::wait_pool(s, token, (1, 1)).await?;
        let mut request = aibro_tests::deploy_request("echo-direct", digest);
        request.machine_config = Some(pb::MachineConfig {
            standby: "pool.cpu.od".into(),
            cooling: String::new(),
        });
        let job_id = s.deploy_with(token, request).await?;
        s.wait_status(token, &job_id, JobStatus::Deployed).await?;
        let job = s.get_job(token, &job_id).await?;
        let credential = std::fs::read_to_string(host.join("credential"))?;
        Ok(DirectAgent {
            agent,
            address: format!("http://{}", job.instances[0].agent_address),
            credential: credential.trim().to_string(),
            job_id,
            _dir: dir,
        })
    }

    async fn measure(
        &self,
        path: &str,
        payload: &[u8],
        c: usize,
        window: Duration,
    ) -> anyhow::Result<Row> {
        let channel = tonic::transport::Channel::from_shared(self.address.clone())?
            .connect()
            .await?;
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", self.credential).parse()?;
        let client = AgentClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        });
        let request = pb::AgentPredictRequest {
            job_id: self.job_id.clone(),
            payload: payload.to_vec(),
            content_type: "application/json".into(),
        };
        let server = self.agent.id().expect("the agent runs");
        measure(path, c, window, server, move || {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.predict(request).await.map(drop) }
        })
        .await
    }
}

/// The repository root, where the bench's peers live.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One HTTP POST that rows drive: where, what, and what a right answer
/// holds (spaces aside).
pub(crate) struct Post {
    pub url_path: &'static str,
    pub body: &'static str,
    pub expect: &'static str,
}

/// `bench`'s public echo model through the scheduler's HTTP predict URL.
const ECHO: Post = Post {
    url_path: "/v1/bench/public/echo/predict",
    body: wrk::BODY,
    expect: wrk::ECHOED,
};

/// `post` to the scheduler `s`, checked once, then driven by wrk; CPU is the
/// scheduler's tree's.
pub(crate) async fn via_http(
    s: &Scheduler,
    path: &str,
    post: &Post,
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<Row> {
    wrk::post(&s.addr, post.url_path, post.body, post.expect).await?;
    let server = s.child.as_ref().expect("scheduler running").id();
    let url = format!("http://{}{}", s.addr, post.url_path);
    wrk::drive(
        &repo_root(),
        path,
        &url,
        post.body,
        server,
        concurrency,
        window,
    )
    .await
}

/// The same model as a Ray Serve deployment, driven by wrk.
async fn ray_rows(python: &Path, args: &PredictArgs, window: Duration) -> anyhow::Result<Vec<Row>> {
    let ray = RayServe::start(python, &repo_root()).await?;
    let mut rows = Vec::new();
    for &c in &args.concurrency {
        match ray.drive(c, window).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                let _ = ray.stop().await;
                return Err(e);
            }
        }
    }
    ray.stop().await?;
    Ok(rows)
}

/// What the scheduler adds, what HTTP costs beside gRPC, and the targets.
fn summary(rows: &[Row]) {
    println!("\nthe scheduler's hop (via scheduler vs direct to agent, gRPC):");
    for r in rows.iter().filter(|r| r.path.starts_with(VIA)) {
        let Some(d) = find(rows, &r.path.replacen(VIA, DIRECT, 1), r.concurrency) else {
            continue;
        };
        println!(
            "  {:<32} conc {:>3}: +{} us at p50 (target <= 150), throughput {:+.1}% (target >= -10%)",
            r.path,
            r.concurrency,
            r.p50.as_micros() as i64 - d.p50.as_micros() as i64,
            100.0 * (r.per_s / d.per_s - 1.0)
        );
    }
    http_summary(rows);
    crate::oip::summary(rows);
}

/// The HTTP predict URL against gRPC through the scheduler and Ray Serve.
fn http_summary(rows: &[Row]) {
    println!(
        "\nHTTP via scheduler vs gRPC via scheduler and Ray Serve \
         (targets: conc 64 >= 10,000 req/s, p99 <= 15 ms, no errors; conc 1 p50 <= 0.5 ms):"
    );
    for r in rows.iter().filter(|r| r.path.starts_with(HTTP)) {
        let ratios = |other: Option<&Row>| {
            other.map_or("-".to_string(), |o| {
                format!(
                    "p50 x{:.2}, req/s x{:.2}",
                    r.p50.as_secs_f64() / o.p50.as_secs_f64(),
                    r.per_s / o.per_s
                )
            })
        };
        println!(
            "  {:<32} conc {:>3}: p50 {} ms, p99 {} ms, {} req/s, {} errors; vs gRPC {}; vs Ray Serve {}",
            r.path,
            r.concurrency,
            ms(r.p50),
            ms(r.p99),
            thousands(r.per_s),
            r.errors,
            ratios(find(rows, &r.path.replacen(HTTP, VIA, 1), r.concurrency)),
            ratios(find(rows, RAY, r.concurrency)),
        );
    }
}

pub(crate) fn find<'a>(rows: &'a [Row], path: &str, concurrency: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.path == path && r.concurrency == concurrency)
}

const VIA: &str = "aibro via scheduler, gRPC";
const HTTP: &str = "aibro via scheduler, HTTP";
const DIRECT: &str = "aibro direct to agent, gRPC";
pub(crate) const RAY: &str = "Ray Serve (HTTP, wrk)";

/// Predictions of `bench`'s public `model` through the scheduler `s`, in
/// `concurrency` closed loops for `window`; CPU is the scheduler's tree's.
pub(crate) async fn via_scheduler(
    s: &Scheduler,
    path: &str,
    model: &str,
    payload: &[u8],
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<Row> {
    let client = pb::inference_client::InferenceClient::new(s.channel().await?);
    let server = s.child.as_ref().expect("scheduler running").id();
    let request = pb::PredictRequest {
        owner: "bench".into(),
        client_id: "public".into(),
        model_name: model.into(),
        payload: payload.to_vec(),
        content_type: "application/json".into(),
    };
    measure(path, concurrency, window, server, move || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.predict(request).await.map(drop) }
    })
    .await
}

/// Runs `call` in `concurrency` closed loops for `window`; CPU is `server`'s
/// process tree's.
async fn measure<F, Fut>(
    path: &str,
    concurrency: usize,
    window: Duration,
    server: u32,
    call: F,
) -> anyhow::Result<Row>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    // Warm up the connection and the workers.
    for _ in 0..50 {
        call().await?;
    }
    let cpu = crate::cpu::tree_cpu(server);
    let start = Instant::now();
    let end = start + window;
    let loops: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < end {
                    let t = Instant::now();
                    match call().await {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for l in loops {
        let (l, e) = l.await?;
        lat.extend(l);
        errors += e;
    }
    let wall = start.elapsed();
    let cpu = crate::cpu::tree_cpu(server).saturating_sub(cpu);
    let requests = lat.len() as u64;
    let st = stats(lat, wall);
    Ok(Row {
        path: path.to_string(),
        concurrency,
        requests,
        errors,
        p50: st.p50,
        p99: st.p99,
        max: st.max,
        per_s: st.per_s,
        cpu_per_req: cpu / requests.max(1) as u32,
    })
}

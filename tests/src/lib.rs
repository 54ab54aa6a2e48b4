//! Harness for end-to-end tests: starts the real `aibro-scheduler` binary on
//! 127.0.0.1 port 0 with a temp data dir, gives authenticated gRPC clients,
//! packs and uploads example repos, and waits on WatchJob events with
//! deadlines. Dropping a [`Scheduler`] kills it and every agent it launched.
//! [`ec2`] is the EC2 world: moto behind a fault proxy, with played boots;
//! [`imds::ImdsStandIn`] stands in for EC2's instance metadata service.
//! [`browser::Browser`] is headless Chromium through WebDriver.

#![deny(clippy::too_many_lines)]

pub mod browser;
pub mod ec2;
pub mod imds;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aibro_proto::v1::{
    self as pb, artifacts_client::ArtifactsClient, inference_client::InferenceClient,
    jobs_client::JobsClient, training_client::TrainingClient,
};
use anyhow::{bail, Context, Result};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// Deploys of the pure-Python examples take about a second; this leaves room
/// for a loaded CI machine.
pub const DEPLOY_DEADLINE: Duration = Duration::from_secs(60);

/// A built binary of the workspace (`cargo build --workspace --all-targets` first),
/// beside the running executable or one level up (tests run from `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let here = exe.parent().expect("exe dir");
    let path = [here, here.parent().unwrap_or(here)]
        .iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| here.join(name));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --all-targets` before the tests",
        path.display()
    );
    path
}

/// The Python with the official tritonclient and numpy (for the Open
/// Inference Protocol tests) that `scripts/test-tools.sh` makes.
pub fn test_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test-tools.sh (it installs tritonclient[http,grpc] and numpy)",
        python.display()
    );
    python
}

/// A repo under examples/.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

pub struct Scheduler {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub addr: String,
    pub admin_token: String,
    _temp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    /// The crash point armed for the next start only (`AIBRO_CRASH_AT`).
    crash_at: Option<String>,
    /// With TLS: the CA its certificate chains to (clients connect over https).
    pub tls_ca: Option<PathBuf>,
    /// Environment of every start (the EC2 world's AWS variables).
    env: Vec<(String, String)>,
}

impl Scheduler {
    pub async fn start() -> Result<Self> {
        Self::start_with(&[]).await
    }

    pub async fn start_with(args: &[&str]) -> Result<Self> {
        let mut s = Self::new(args, None)?;
        s.spawn().await?;
        Ok(s)
    }

    /// Starts a scheduler that aborts (as kill -9 would) when it reaches the
    /// named crash point; later starts run without it.
    pub async fn start_crashing_at(point: &str, args: &[&str]) -> Result<Self> {
        let mut s = Self::new(args, Some(point.to_string()))?;
        s.spawn().await?;
        Ok(s)
    }

    fn new(args: &[&str], crash_at: Option<String>) -> Result<Self> {
        let temp = tempfile::tempdir()?;
        Ok(Scheduler {
            child: None,
            data_dir: temp.path().to_path_buf(),
            addr: String::new(),
            admin_token: String::new(),
            _temp: Some(temp),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            crash_at,
            tls_ca: None,
            env: Vec::new(),
        })
    }

    /// Starts a scheduler whose EC2 provider runs against `world` (moto
    /// behind the fault proxy): short polls and ticks, quotes every second.
    pub async fn start_ec2(world: &ec2::Ec2World, args: &[&str]) -> Result<Self> {
        Self::start_ec2_crashing_at(world, None, args).await
    }

    /// As `start_ec2`, aborting (as kill -9 would) at the crash point, if
    /// any, on the first start only.
    pub async fn start_ec2_crashing_at(
        world: &ec2::Ec2World,
        point: Option<&str>,
        args: &[&str],
    ) -> Result<Self> {
        let mut all = vec!["--ec2-ami", world.ami(), "--ec2-endpoint", world.endpoint()];
        all.extend(["--ec2-poll-ms", "100", "--ec2-spot-price-s", "1"]);
        all.extend(["--lifecycle-tick-ms", "100"]);
        all.extend_from_slice(args);
        let mut s = Self::new(&all, point.map(str::to_string))?;
        s.env = ec2::aws_env()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s.spawn().await?;
        Ok(s)
    }

    /// Starts a scheduler serving TLS with `cert`/`key` (PEM), which clients
    /// verify against `ca`.
    pub async fn start_tls(cert: &Path, key: &Path, ca: &Path, args: &[&str]) -> Result<Self> {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let mut all = vec!["--tls-cert", cert, "--tls-key", key, "--tls-ca"];
        all.push(ca.to_str().unwrap());
        all.extend_from_slice(args);
        let mut s = Self::new(&all, None)?;
        s.tls_ca = Some(ca.to_path_buf());
        s.spawn().await?;
        Ok(s)
    }

    /// Waits until the scheduler process has exited (it crashed).
    pub async fn wait_exit(&mut self) -> Result<()> {
        let deadline = Instant::now() + DEPLOY_DEADLINE;
        let child = self.child.as_mut().context("not running")?;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("the scheduler did not crash; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = None;
        Ok(())
    }

    /// Starts the binary on the data dir (on the same address as before, if
    /// it ran already) and waits until it accepts calls.
    pub async fn spawn(&mut self) -> Result<()> {
        let listen = if self.addr.is_empty() {
            "127.0.0.1:0".to_string()
        } else {
            self.addr.clone()
        };
        let addr_file = self.data_dir.join("listen-addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("scheduler.log"))?;
        let child = Command::new(bin("aibro-scheduler"))
            .args(["--listen", &listen, "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--agent-orphan-timeout-s",
                "30",
                "--connect-timeout-s",
                "60",
                // Deploys stay on-demand unless a test asks for spot.
                "--spot-availability",
                "0",
            ])
            .args(&self.extra_args)
            .envs(self.crash_at.take().map(|p| ("AIBRO_CRASH_AT", p)))
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start aibro-scheduler")?;
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        self.addr = loop {
            match std::fs::read_to_string(&addr_file) {
                Ok(addr) if !addr.is_empty() => break addr,
                _ => {}
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!("scheduler exited with {status}; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("scheduler did not start; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.admin_token = std::fs::read_to_string(self.data_dir.join("admin-token"))?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("scheduler.log")).unwrap_or_default()
    }

    /// The log once it holds every one of `needles` (the scheduler writes
    /// its lines from a thread of their own, a moment after the event);
    /// fails after a few seconds, showing the log.
    pub async fn log_with(&self, needles: &[&str]) -> Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if needles.iter().all(|n| log.contains(n)) {
                return Ok(log);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the scheduler's log lacks one of {needles:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs the `aibro` CLI against this scheduler as `token`'s user.
    pub fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        Command::new(bin("aibro"))
            .args(args)
            .env("AIBRO_ENDPOINT", self.endpoint())
            .env("AIBRO_TOKEN", token)
            .output()
            .expect("run aibro")
    }

    pub fn endpoint(&self) -> String {
        aibro_proto::transport::url(&self.addr, self.tls_ca.is_some())
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait()?;
            if !status.success() {
                bail!("scheduler exited with {status}");
            }
        }
        Ok(())
    }

    pub async fn channel(&self) -> Result<Channel> {
        let tls = self
            .tls_ca
            .as_deref()
            .map(aibro_proto::transport::client_tls)
            .transpose()?;
        let endpoint = aibro_proto::transport::endpoint(&self.endpoint(), tls.as_ref())
            .map_err(anyhow::Error::msg)?;
        Ok(endpoint.connect().await?)
    }

    pub async fn authed(&self, token: Option<&str>) -> Result<(Channel, Bearer)> {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse()).transpose()?);
        Ok((self.channel().await?, bearer))
    }

    pub async fn inference(&self, token: Option<&str>) -> Result<InferenceClient<Authed>> {
        let (ch, b) = self.authed(token).await?;
        Ok(InferenceClient::with_interceptor(ch, b))
    }

    pub async fn jobs(&self, token: Option<&str>) -> Result<JobsClient<Authed>> {
        let (ch, b) = self.authed(token).await?;
        Ok(JobsClient::with_interceptor(ch, b))
    }

    pub async fn training(&self, token: Option<&str>) -> Result<TrainingClient<Authed>> {
        let (ch, b) = self.authed(token).await?;
        Ok(TrainingClient::with_interceptor(ch, b))
    }

    pub async fn artifacts(&self, token: Option<&str>) -> Result<ArtifactsClient<Authed>> {
        let (ch, b) = self.authed(token).await?;
        Ok(ArtifactsClient::with_interceptor(ch, b))
    }

    pub async fn admin(&self) -> Result<pb::admin_client::AdminClient<Authed>> {
        let (ch, b) = self.authed(Some(&self.admin_token)).await?;
        Ok(pb::admin_client::AdminClient::with_interceptor(ch, b))
    }

    /// A new user's token.
    pub async fn user(&self, name: &str) -> Result<String> {
        let r = self
            .admin()
            .await?
            .create_token(pb::CreateTokenRequest { user: name.into() })
            .await?;
        Ok(r.into_inner().token)
    }

    /// Packs a repo directory and uploads it; returns the digest.
    pub async fn upload_dir(&self, token: &str, dir: &Path) -> Result<String> {
        let mut bytes = Vec::new();
        aibro_repo::archive::pack_dir(dir, &mut bytes)?;
        self.upload_bytes(token, bytes).await
    }

    pub async fn upload_bytes(&self, token: &str, bytes: Vec<u8>) -> Result<String> {
        let chunks: Vec<pb::Chunk> = bytes
            .chunks(64 << 10)
            .map(|c| pb::Chunk { data: c.to_vec() })
            .collect();
        let r = self
            .artifacts(Some(token))
            .await?
            .upload(tokio_stream::iter(chunks))
            .await?;
        Ok(r.into_inner().digest)
    }

    /// Deploys `digest` on a `local.small.od` standby; returns the job id.
    pub async fn deploy(&self, token: &str, model_name: &str, digest: &str) -> Result<String> {
        self.deploy_with(token, deploy_request(model_name, digest))
            .await
    }

    /// Sends a deploy request; returns the job id.
    pub async fn deploy_with(&self, token: &str, request: pb::DeployRequest) -> Result<String> {
        let r = self.inference(Some(token)).await?.deploy(request).await?;
        Ok(r.into_inner().job_id)
    }

    /// Polls the job until `done` holds for its instances (within the deploy deadline).
    pub async fn wait_instances(
        &self,
        token: &str,
        job_id: &str,
        what: &str,
        done: impl Fn(&[pb::Instance]) -> bool,
    ) -> Result<pb::Job> {
        let deadline = Instant::now() + DEPLOY_DEADLINE;
        loop {
            let job = self.get_job(token, job_id).await?;
            if done(&job.instances) {
                return Ok(job);
            }
            if Instant::now() > deadline {
                bail!("{what} did not happen; instances: {:#?}", job.instances);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The marketplace's entry for a machine type.
    pub async fn machine(&self, token: &str, machine_type: &str) -> Result<pb::Machine> {
        let (ch, b) = self.authed(Some(token)).await?;
        let machines = pb::marketplace_client::MarketplaceClient::with_interceptor(ch, b)
            .available_machines(pb::AvailableMachinesRequest {})
            .await?
            .into_inner()
            .machines;
        machines
            .into_iter()
            .find(|m| m.machine_id == machine_type)
            .ok_or_else(|| anyhow::anyhow!("{machine_type} is not listed"))
    }

    /// Every event of the job until `until` holds for one, within `deadline`.
    pub async fn watch_until(
        &self,
        token: &str,
        job_id: &str,
        deadline: Duration,
        until: impl Fn(&pb::JobEvent) -> bool,
    ) -> Result<Vec<pb::JobEvent>> {
        let mut stream = self
            .jobs(Some(token))
            .await?
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.into(),
            })
            .await?
            .into_inner();
        let mut seen = Vec::new();
        let result = tokio::time::timeout(deadline, async {
            while let Some(event) = stream.next().await {
                let event = event?;
                let done = until(&event);
                seen.push(event);
                if done {
                    return Ok(());
                }
            }
            bail!("the watch ended first")
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(seen),
            Ok(Err(e)) => Err(e.context(format!("events so far: {seen:#?}"))),
            Err(_) => bail!(
                "deadline passed; events so far: {seen:#?}\nlog:\n{}",
                self.log()
            ),
        }
    }

    /// Waits until the job reaches `status` (or ends otherwise: error).
    pub async fn wait_status(
        &self,
        token: &str,
        job_id: &str,
        status: pb::JobStatus,
    ) -> Result<Vec<pb::JobEvent>> {
        let events = self
            .watch_until(token, job_id, DEPLOY_DEADLINE, |e| {
                e.status() == status
                    || matches!(
                        e.status(),
                        pb::JobStatus::Canceled | pb::JobStatus::Completed
                    )
            })
            .await?;
        let last = events.last().expect("at least one event");
        if last.status() != status {
            let job = self.get_job(token, job_id).await?;
            bail!(
                "job ended {:?} instead of {status:?}: {}",
                last.status(),
                job.reason
            );
        }
        Ok(events)
    }

    pub async fn timeline(&self, token: &str, job_id: &str) -> Result<pb::Timeline> {
        Ok(self
            .jobs(Some(token))
            .await?
            .get_timeline(pb::GetTimelineRequest {
                job_id: job_id.into(),
            })
            .await?
            .into_inner())
    }

    /// Completes the job and waits until its instances are shut down.
    pub async fn complete(&self, token: &str, job_id: &str) -> Result<Vec<pb::JobEvent>> {
        let request = pb::CompleteRequest {
            job_id: job_id.into(),
            model_name: String::new(),
        };
        self.inference(Some(token)).await?.complete(request).await?;
        self.watch_until(token, job_id, DEPLOY_DEADLINE, |e| e.last)
            .await
    }

    /// Deploys with a standby and a cooling instance; returns the job id.
    pub async fn deploy_with_cooling(
        &self,
        token: &str,
        model_name: &str,
        digest: &str,
        cooling: &str,
        cool_down_period_s: u32,
    ) -> Result<String> {
        let mut request = deploy_request(model_name, digest);
        request.machine_config = Some(pb::MachineConfig {
            standby: "local.small.od".into(),
            cooling: cooling.into(),
        });
        request.cool_down_period_s = cool_down_period_s;
        self.deploy_with(token, request).await
    }

    pub async fn get_job(&self, token: &str, job_id: &str) -> Result<pb::Job> {
        Ok(self
            .jobs(Some(token))
            .await?
            .get_job(pb::GetJobRequest {
                job_id: job_id.into(),
            })
            .await?
            .into_inner())
    }

    pub async fn predict(
        &self,
        owner: &str,
        client_id: &str,
        model_name: &str,
        payload: &str,
    ) -> Result<pb::PredictResponse, tonic::Status> {
        let mut client = self
            .inference(None)
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        client
            .predict(pb::PredictRequest {
                owner: owner.into(),
                client_id: client_id.into(),
                model_name: model_name.into(),
                payload: payload.as_bytes().to_vec(),
                content_type: "application/json".into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Pids of agents still running from this data dir.
    pub fn live_agents(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("instances")) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("agent.pid")).ok())
            .filter_map(|pid| pid.trim().parse().ok())
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .collect()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.live_agents() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The job substatuses the events passed through, in order, each once.
/// What a process printed, stdout then stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn substatuses(events: &[pb::JobEvent]) -> Vec<pb::JobSubstatus> {
    let mut out: Vec<pb::JobSubstatus> = Vec::new();
    for e in events {
        if out.last() != Some(&e.substatus()) {
            out.push(e.substatus());
        }
    }
    out
}

pub fn deploy_request(model_name: &str, digest: &str) -> pb::DeployRequest {
    pb::DeployRequest {
        model_name: model_name.into(),
        machine_config: Some(pb::MachineConfig {
            standby: "local.small.od".into(),
            cooling: String::new(),
        }),
        artifact_digest: digest.into(),
        ..Default::default()
    }
}

/// Writes a model repo with the given predict.py into a temp dir.
pub fn repo(predict_py: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("predict.py"), predict_py).expect("write predict.py");
    std::fs::create_dir(dir.path().join("data")).expect("data dir");
    std::fs::write(dir.path().join("data/input.json"), "{}").expect("sample");
    dir
}

/// A serving (EXECUTING) instance that replaced `old`, if any.
pub fn serving_replacement_of<'a>(
    instances: &'a [pb::Instance],
    old: &str,
) -> Option<&'a pb::Instance> {
    instances
        .iter()
        .find(|i| i.replaces == old && i.status() == pb::InstanceStatus::Executing)
}

/// A catalog file with one CPU-only machine type (on-demand 0.3, spot 0.1 $/h),
/// for `--catalog`; it lives as long as the value.
pub fn catalog_with(
    machine_type: &str,
    provider: &str,
    capacity: u32,
    spot_availability: f64,
) -> Result<tempfile::NamedTempFile> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(
        file.path(),
        format!(
            r#"[[machine]]
type = "{machine_type}"
provider = "{provider}"
gpu_type = "none"
gpu_count = 0
vcpus = 1
memory_gib = 1.0
spot_price = 0.1
on_demand_price = 0.3
capacity = {capacity}
spot_availability = {spot_availability:?}
"#
        ),
    )?;
    Ok(file)
}

/// A scheduler whose catalog has the `pool.cpu` type (the file lives as long as it).
pub async fn pool_scheduler(args: &[&str]) -> Result<(Scheduler, tempfile::NamedTempFile)> {
    let catalog = catalog_with("pool.cpu", "pool", 0, 0.0)?;
    let mut all = vec![
        "--catalog",
        catalog.path().to_str().unwrap(),
        "--heartbeat-ms",
        "200",
    ];
    all.extend_from_slice(args);
    Ok((Scheduler::start_with(&all).await?, catalog))
}

/// An agent started the way an operator would on a host, with the join token.
pub fn host_agent(s: &Scheduler, dir: &Path, machine_id: &str) -> Result<tokio::process::Child> {
    let join_token = std::fs::read_to_string(s.data_dir.join("join-token"))?;
    host_agent_with(s, dir, machine_id, Some(&join_token))
}

/// An agent started on a host with `join_token`, or none (it has a credential
/// in `dir` already). Its log is `dir` with the extension `log`.
pub fn host_agent_with(
    s: &Scheduler,
    dir: &Path,
    machine_id: &str,
    join_token: Option<&str>,
) -> Result<tokio::process::Child> {
    host_agent_args(s, dir, machine_id, join_token, &[])
}

/// [`host_agent_with`], with more agent flags.
pub fn host_agent_args(
    s: &Scheduler,
    dir: &Path,
    machine_id: &str,
    join_token: Option<&str>,
    flags: &[&str],
) -> Result<tokio::process::Child> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.with_extension("log"))?;
    Ok(tokio::process::Command::new(bin("aibro-agent"))
        .args(["--scheduler", &s.endpoint(), "--machine-id", machine_id])
        .args(["--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .args(flags)
        .envs(join_token.map(|t| ("AIBRO_JOIN_TOKEN", t)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

/// Waits until the marketplace shows `(capacity, available)` for pool.cpu.
pub async fn wait_pool(s: &Scheduler, token: &str, want: (u32, u32)) -> Result<()> {
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    loop {
        let m = s.machine(token, "pool.cpu").await?;
        if (m.capacity, m.available) == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pool.cpu shows {}/{} of {want:?}", m.available, m.capacity);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS connection to `addr` that trusts `cert` and offers `alpn`.
/// A scheduler serving TLS with a fresh self-signed certificate for
/// 127.0.0.1 (its own CA); the certificate, for [`tls_connect`], and the
/// folder of its PEM files, which lives as long as the value.
pub async fn self_signed_scheduler(
    args: &[&str],
) -> Result<(Scheduler, rcgen::CertifiedKey, tempfile::TempDir)> {
    let certs = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let (cert, key) = (certs.path().join("s.pem"), certs.path().join("s.key"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.key_pair.serialize_pem())?;
    let s = Scheduler::start_tls(&cert, &key, &cert, args).await?;
    Ok((s, certified, certs))
}

pub async fn tls_connect(
    addr: &str,
    cert: &rcgen::CertifiedKey,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    Ok(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tokio::net::TcpStream::connect(addr).await?)
            .await?,
    )
}

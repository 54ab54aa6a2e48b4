//! Break-out tests: a hostile repo (tests/fixtures/hostile) whose setup.py (a
//! local package in requirements.txt), load_model(), run() and train() try to
//! read the scheduler's secrets, the agent's credential, the sled files,
//! another user's repo, `/proc/<agent>/environ`, an AWS credentials file and
//! `/etc/shadow`; to write outside their directories; to signal and ptrace
//! the agents and another job's worker; to connect to the scheduler, to
//! agents and to the cloud metadata address. Every attempt must fail at every
//! sandbox level, while the same repo still serves honestly (numpy, its model
//! file, files it writes). Without a sandbox the same probe does find the
//! secrets, so a sandbox that does nothing cannot pass.

use std::path::{Path, PathBuf};

use aibro_proto::v1 as pb;
use aibro_tests::{deploy_request, example, Scheduler};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// What the probe must never find.
struct Secrets {
    values: Vec<String>,
}

impl Secrets {
    /// Every secret `s` holds: its admin and join tokens, and the fake AWS key.
    fn of(s: &Scheduler, aws_key: &str) -> Result<Secrets> {
        let join = std::fs::read_to_string(s.data_dir.join("join-token"))?;
        Ok(Secrets {
            values: vec![
                s.admin_token.clone(),
                join.trim().to_string(),
                aws_key.into(),
            ],
        })
    }

    /// The secrets found in `text`.
    fn found_in(&self, text: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|v| !v.is_empty() && text.contains(v.as_str()))
            .map(String::as_str)
            .collect()
    }
}

/// Another user's deployment the hostile repo targets.
struct Victim {
    instance_dir: PathBuf,
    agent_pid: i32,
    worker_pids: Vec<i32>,
    agent_port: u16,
}

/// A fake `~/.aws/credentials` of the agents' user; returns (file, its key).
fn aws_credentials(dir: &Path) -> Result<(PathBuf, String)> {
    let key = format!("aws_secret_{}", std::process::id());
    let file = dir.join(".aws").join("credentials");
    std::fs::create_dir_all(file.parent().unwrap())?;
    std::fs::write(&file, format!("[default]\naws_secret_access_key = {key}\n"))?;
    Ok((file, key))
}

/// Bob's honest deployment of examples/echo, serving.
async fn victim(s: &Scheduler) -> Result<Victim> {
    let bob = s.user("bob").await?;
    let digest = s.upload_dir(&bob, &example("echo")).await?;
    let job_id = s.deploy(&bob, "victim", &digest).await?;
    let job = s
        .wait_instances(&bob, &job_id, "bob's instance serves", |insts| {
            insts
                .first()
                .is_some_and(|i| i.status() == pb::InstanceStatus::Executing)
        })
        .await?;
    let inst = &job.instances[0];
    let instance_dir = s.data_dir.join("instances").join(&inst.instance_id);
    let agent_pid: i32 = std::fs::read_to_string(instance_dir.join("agent.pid"))?
        .trim()
        .parse()?;
    let agent_port = inst
        .agent_address
        .rsplit(':')
        .next()
        .context("agent address")?
        .parse()?;
    Ok(Victim {
        worker_pids: processes_under(&instance_dir, "python"),
        instance_dir,
        agent_pid,
        agent_port,
    })
}

/// Pids of processes named like `what` whose command line or working dir is
/// under `dir` (a sandboxed worker's cwd shows as its path inside its view,
/// so its command line is looked at too).
fn processes_under(dir: &Path, what: &str) -> Vec<i32> {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
            let ours = cmdline.contains(&dir) || cwd.starts_with(&dir);
            (ours && cmdline.contains(what)).then_some(pid)
        })
        .collect()
}

/// Every file under `dir` (a few levels down), for the probe to try.
fn files_under(dir: &Path, depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && depth > 0 {
            out.extend(files_under(&path, depth - 1));
        } else if path.is_file() {
            out.push(path.to_string_lossy().into_owned());
        }
    }
    out
}

/// What the probe tries, as model/targets.json (and, for the serving agent
/// itself, in a request's `targets`).
fn targets(s: &Scheduler, victim: &Victim, aws: &Path, secrets: &Secrets) -> Value {
    let data = &s.data_dir;
    let scheduler_port: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut read = vec![
        data.join("admin-token"),
        data.join("join-token"),
        aws.to_path_buf(),
        "/etc/shadow".into(),
        format!("/proc/{}/environ", victim.agent_pid).into(),
    ]
    .into_iter()
    .map(|p| p.to_string_lossy().into_owned())
    .collect::<Vec<_>>();
    read.extend(files_under(&data.join("db"), 1));
    read.extend(files_under(&victim.instance_dir, 4));
    let mut pids = vec![victim.agent_pid];
    pids.extend(&victim.worker_pids);
    json!({
        "read": read,
        "list": [data, data.join("instances"), victim.instance_dir, "/root", "/home"],
        "write": [data.join("pwned"), victim.instance_dir.join("pwned")],
        // Written in the process's own temporary dir, which must not be the host's.
        "scratch": scratch_name(s),
        "pids": pids,
        "connect": [
            ["127.0.0.1", scheduler_port],
            ["127.0.0.1", victim.agent_port],
            ["169.254.169.254", 80],
        ],
        "secrets": secrets.values,
    })
}

/// The ids of the user's instances (of every job, dry runs included).
async fn instance_ids(s: &Scheduler, token: &str) -> Result<Vec<String>> {
    let instances = s
        .jobs(Some(token))
        .await?
        .list_instances(pb::ListInstancesRequest::default())
        .await?
        .into_inner()
        .instances;
    Ok(instances.into_iter().map(|i| i.instance_id).collect())
}

/// The file the honest part of the repo writes in its temporary dir (one
/// name per scheduler: the tests run side by side).
fn scratch_name(s: &Scheduler) -> String {
    let data = s.data_dir.file_name().unwrap_or_default().to_string_lossy();
    format!("aibro-scratch{data}")
}

/// The hostile repo with its targets baked in.
fn hostile_repo(targets: &Value) -> Result<tempfile::TempDir> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile");
    let dir = tempfile::tempdir()?;
    copy_tree(&src, dir.path())?;
    std::fs::write(
        dir.path().join("model/targets.json"),
        serde_json::to_vec_pretty(targets)?,
    )?;
    Ok(dir)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Every attempt of the probe's reports in `value` that got something it
/// must not. Writes are judged on the host instead ([`check_no_writes`]: a
/// path may exist in the sandbox's own private /tmp). A listing leaks when it
/// names an entry the host has there other than those on the way to the
/// process's own files (`own`: its instances' ids, and the system Python's
/// path, which may lie under a home directory, as pyenv's does).
fn leaks(value: &Value, own: &[String]) -> Vec<String> {
    let mut allowed = python_prefix_names();
    allowed.extend(own.iter().cloned());
    allowed.push("instances".into());
    let mut out = Vec::new();
    for key in ["at_load", "at_run", "at_build", "at_train"] {
        let Some(report) = value.get(key).and_then(Value::as_object) else {
            continue;
        };
        for (what, outcome) in report {
            let outcome = outcome.as_str().unwrap_or_default();
            let leaked = match what.split_once(' ') {
                _ if outcome.starts_with("blocked") => false,
                Some(("write", _)) => false,
                Some(("list", dir)) => listed(outcome).is_none_or(|names| {
                    names
                        .iter()
                        .any(|n| !allowed.contains(n) && Path::new(dir).join(n).exists())
                }),
                _ => true,
            };
            if leaked {
                out.push(format!("{key}: {what}: {outcome}"));
            }
        }
    }
    out
}

/// The names in a probe's "LEAKED ['a', 'b']" listing.
fn listed(outcome: &str) -> Option<Vec<String>> {
    let list = outcome.strip_prefix("LEAKED [")?.strip_suffix(']')?;
    Some(
        list.split(", ")
            .map(|n| n.trim_matches('\'').to_string())
            .filter(|n| !n.is_empty())
            .collect(),
    )
}

/// The path components of the system Python's prefix (what the sandbox shows).
fn python_prefix_names() -> Vec<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.base_prefix)"])
        .output()
        .expect("python3 runs");
    let prefix = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&prefix)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect()
}

/// The reports were all made: load, run and the package build each probed.
fn check_probed(value: &Value, keys: &[&str]) -> Result<()> {
    for key in keys {
        let n = value
            .get(*key)
            .and_then(Value::as_object)
            .map_or(0, |r| r.len());
        ensure!(n > 10, "the probe did not run {key}: {value:#}");
    }
    Ok(())
}

/// The writes the probe tried left nothing on the host.
fn check_no_writes(s: &Scheduler, victim: &Victim) -> Result<()> {
    for path in [
        s.data_dir.join("pwned"),
        victim.instance_dir.join("pwned"),
        std::env::temp_dir().join(scratch_name(s)),
    ] {
        ensure!(!path.exists(), "user code wrote {}", path.display());
    }
    Ok(())
}

/// The victim's agent and workers are alive and its model still answers.
async fn check_victim(s: &Scheduler, victim: &Victim) -> Result<()> {
    for pid in std::iter::once(&victim.agent_pid).chain(&victim.worker_pids) {
        ensure!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of bob's job is gone"
        );
    }
    s.predict("bob", "public", "victim", r#"{"x": 1}"#).await?;
    Ok(())
}

/// Deploys the hostile repo as alice and returns a prediction's answer.
async fn serve_hostile(s: &Scheduler, alice: &str, digest: &str) -> Result<Value> {
    let job_id = s.deploy(alice, "hostile", digest).await?;
    s.wait_status(alice, &job_id, pb::JobStatus::Deployed)
        .await
        .context("the hostile repo does not serve")?;
    let answer = s
        .predict("alice", "public", "hostile", r#"{"x": [1, 1, 1]}"#)
        .await?;
    Ok(serde_json::from_slice(&answer.output)?)
}

/// Trains the hostile repo as alice; returns its report.json.
async fn train_hostile(s: &Scheduler, alice: &str, digest: &str) -> Result<Value> {
    let mut training = s.training(Some(alice)).await?;
    let job_id = training
        .fit(pb::FitRequest {
            artifact_digest: digest.into(),
            machine_ids: vec!["local.small.od".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .job_id;
    s.wait_status(alice, &job_id, pb::JobStatus::Completed)
        .await?;
    let mut stream = training
        .download_result(pb::DownloadResultRequest { job_id })
        .await?
        .into_inner();
    let mut tar = Vec::new();
    while let Some(chunk) = stream.message().await? {
        tar.extend(chunk.data);
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tar[..]));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.ends_with("report.json") {
            return Ok(serde_json::from_reader(&mut entry)?);
        }
    }
    bail!("the training outputs have no report.json")
}

/// Dry-runs the hostile repo as alice (not the admin); returns run()'s output.
async fn dry_run_hostile(s: &Scheduler, alice: &str, digest: &str) -> Result<Value> {
    let mut request = deploy_request("hostile-dry", digest);
    request.dryrun = true;
    let result = s
        .inference(Some(alice))
        .await?
        .deploy(request)
        .await?
        .into_inner()
        .dryrun
        .context("no dry-run result")?;
    ensure!(result.ok, "the dry run failed: {}", result.traceback);
    Ok(serde_json::from_slice(&result.output)?)
}

/// A scheduler whose agents run user code at sandbox `level`, bob's job
/// serving, and the hostile repo uploaded by alice.
struct Attack {
    s: Scheduler,
    secrets: Secrets,
    victim: Victim,
    alice: String,
    digest: String,
    _home: tempfile::TempDir,
}

impl Attack {
    async fn prepare(level: &str) -> Result<Attack> {
        let s = Scheduler::start_with(&["--agent-sandbox", level]).await?;
        let home = tempfile::tempdir()?;
        let (aws, aws_key) = aws_credentials(home.path())?;
        let secrets = Secrets::of(&s, &aws_key)?;
        let victim = victim(&s).await?;
        let repo = hostile_repo(&targets(&s, &victim, &aws, &secrets))?;
        let alice = s.user("alice").await?;
        let digest = s.upload_dir(&alice, repo.path()).await?;
        Ok(Attack {
            s,
            secrets,
            victim,
            alice,
            digest,
            _home: home,
        })
    }
}

/// The whole attack at one sandbox level: serving, training and a dry run.
async fn contained_at(level: &str) -> Result<()> {
    let Attack {
        s,
        secrets,
        victim,
        alice,
        digest,
        _home,
    } = Attack::prepare(level).await?;
    let served = serve_hostile(&s, &alice, &digest).await?;
    ensure!(
        served["dot"] == json!(6.0),
        "numpy served wrong: {served:#}"
    );
    ensure!(served["own_file"] == "mine" && served["tmp_file"] == "scratch");
    check_probed(&served, &["at_load", "at_run", "at_build"])?;
    let trained = train_hostile(&s, &alice, &digest).await?;
    check_probed(&trained, &["at_train"])?;
    let dry = dry_run_hostile(&s, &alice, &digest).await?;
    check_probed(&dry, &["at_load", "at_run", "at_build"])?;

    let own = instance_ids(&s, &alice).await?;
    for (what, value) in [
        ("serving", &served),
        ("training", &trained),
        ("dry run", &dry),
    ] {
        check_contained(&format!("{level}, {what}"), value, &own, &secrets)?;
    }
    check_no_writes(&s, &victim)?;
    check_victim(&s, &victim).await
}

/// Nothing leaked into `value`: every attempt blocked, no secret in it.
fn check_contained(what: &str, value: &Value, own: &[String], secrets: &Secrets) -> Result<()> {
    let leaked = leaks(value, own);
    ensure!(leaked.is_empty(), "{what}: {leaked:#?}");
    let found = secrets.found_in(&value.to_string());
    ensure!(found.is_empty(), "{what}: secrets in the output: {found:?}");
    Ok(())
}

#[tokio::test]
async fn a_hostile_repo_is_contained_at_level_full() -> Result<()> {
    contained_at("full").await
}

#[tokio::test]
async fn a_hostile_repo_is_contained_at_level_namespaces() -> Result<()> {
    contained_at("namespaces").await
}

#[tokio::test]
async fn a_hostile_repo_is_contained_at_level_landlock() -> Result<()> {
    contained_at("landlock").await
}

/// The probe is not toothless: without a sandbox it reads the admin token.
#[tokio::test]
async fn without_a_sandbox_the_probe_finds_the_secrets() -> Result<()> {
    let a = Attack::prepare("none").await?;
    let served = serve_hostile(&a.s, &a.alice, &a.digest).await?;
    let found = a.secrets.found_in(&served.to_string());
    ensure!(
        found.contains(&a.s.admin_token.as_str()),
        "the probe missed the admin token without a sandbox: {served:#}"
    );
    Ok(())
}

/// The same attack on a pool agent (a host started by hand, as on a GPU
/// machine): its stored credential, its data dir and its process are out of
/// reach too.
#[tokio::test]
async fn a_hostile_repo_is_contained_on_a_pool_agent() -> Result<()> {
    let (s, _catalog) = aibro_tests::pool_scheduler(&[]).await?;
    let hosts = tempfile::tempdir()?;
    let host_dir = hosts.path().join("host-1");
    let agent = aibro_tests::host_agent(&s, &host_dir, "pool.cpu")?;
    let alice = s.user("alice").await?;
    aibro_tests::wait_pool(&s, &alice, (1, 1)).await?;
    let credential = wait_for_file(&host_dir.join("credential")).await?;
    let home = tempfile::tempdir()?;
    let (aws, aws_key) = aws_credentials(home.path())?;
    let mut secrets = Secrets::of(&s, &aws_key)?;
    secrets.values.push(credential);
    let victim = victim(&s).await?;
    let mut targets = targets(&s, &victim, &aws, &secrets);
    let reads = targets["read"].as_array_mut().context("reads")?;
    // The agent's own scripts there are what its workers run: not secret.
    let host_files = files_under(&host_dir, 1)
        .into_iter()
        .filter(|f| !f.ends_with(".py"));
    reads.extend(host_files.map(Value::from));
    let pids = targets["pids"].as_array_mut().context("pids")?;
    pids.push(json!(agent.id().context("the pool agent's pid")?));
    let repo = hostile_repo(&targets)?;
    let digest = s.upload_dir(&alice, repo.path()).await?;

    let mut request = deploy_request("hostile", &digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: "pool.cpu.od".into(),
        cooling: String::new(),
    });
    let job_id = s.deploy_with(&alice, request).await?;
    s.wait_status(&alice, &job_id, pb::JobStatus::Deployed)
        .await?;
    let answer = s
        .predict("alice", "public", "hostile", r#"{"x": [1, 1, 1]}"#)
        .await?;
    let served: Value = serde_json::from_slice(&answer.output)?;
    check_probed(&served, &["at_load", "at_run", "at_build"])?;
    let own = instance_ids(&s, &alice).await?;
    check_contained("pool agent", &served, &own, &secrets)?;
    check_no_writes(&s, &victim)?;
    check_victim(&s, &victim).await
}

/// The file's content once it exists (within the deploy deadline).
async fn wait_for_file(path: &Path) -> Result<String> {
    let deadline = std::time::Instant::now() + aibro_tests::DEPLOY_DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

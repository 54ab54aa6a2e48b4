//! The local provider: each instance is an `aibro-agent` process with its own
//! directory `<data-dir>/instances/<id>`. Stop kills the process and keeps the
//! directory (environment, unpacked repo); terminate also removes it. The pid
//! is kept in the directory so a restarted scheduler can still end it.
//! Spot machines come from an emulated [`SpotMarket`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::process::{Child, Command};

use super::spot::SpotMarket;
use super::{LaunchFor, Provider, ProviderError};
use crate::auth::Credentials;
use crate::catalog::{Machine, MachineType, Market};

const PID_FILE: &str = "agent.pid";
const LOG_FILE: &str = "agent.log";
/// The agent reads (and deletes) it at start.
const CREDENTIAL_FILE: &str = "credential";

pub struct LocalProvider {
    agent_bin: PathBuf,
    instances_dir: PathBuf,
    scheduler_url: String,
    credentials: Credentials,
    /// Extra flags for every agent (workers, python, pip options, timeouts).
    agent_args: Vec<String>,
    children: Mutex<HashMap<String, Child>>,
    spot: Arc<SpotMarket>,
}

impl LocalProvider {
    pub fn new(
        agent_bin: PathBuf,
        instances_dir: PathBuf,
        scheduler_url: String,
        credentials: Credentials,
        agent_args: Vec<String>,
        spot: Arc<SpotMarket>,
    ) -> Self {
        LocalProvider {
            agent_bin,
            instances_dir,
            scheduler_url,
            credentials,
            agent_args,
            children: Mutex::new(HashMap::new()),
            spot,
        }
    }

    fn dir(&self, instance_id: &str) -> PathBuf {
        self.instances_dir.join(instance_id)
    }

    /// Writes the instance's credential for its agent, readable only by
    /// this user; returns the file.
    async fn credential_file(
        &self,
        instance_id: &str,
        dir: &Path,
    ) -> Result<PathBuf, ProviderError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let credential = self.credentials.issue_instance(instance_id).await?;
        let path = dir.join(CREDENTIAL_FILE);
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?
            .write_all(credential.as_bytes())?;
        Ok(path)
    }

    async fn spawn(&self, instance_id: &str, machine: &Machine) -> Result<(), ProviderError> {
        let dir = self.dir(instance_id);
        tokio::fs::create_dir_all(&dir).await?;
        let credential_file = self.credential_file(instance_id, &dir).await?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))?;
        let child = Command::new(&self.agent_bin)
            .arg("--scheduler")
            .arg(&self.scheduler_url)
            .arg("--instance-id")
            .arg(instance_id)
            .arg("--dir")
            .arg(&dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--credential-file")
            .arg(&credential_file)
            .args(&self.agent_args)
            .env_remove("AIBRO_JOIN_TOKEN")
            .env("AIBRO_MACHINE_ID", &machine.id)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| ProviderError::Spawn(self.agent_bin.display().to_string(), e))?;
        let pid = child.id();
        // Kept before anything else can fail, so that terminate can end it.
        self.children
            .lock()
            .expect("children lock")
            .insert(instance_id.to_string(), child);
        if machine.market == Market::Spot {
            self.spot.running(instance_id);
        }
        if let Some(pid) = pid {
            tokio::fs::write(dir.join(PID_FILE), pid.to_string()).await?;
        }
        Ok(())
    }

    /// Ends the instance's agent, whether this process started it or an
    /// earlier scheduler did (then only the pid file knows it).
    async fn kill(&self, instance_id: &str) -> Result<(), ProviderError> {
        self.spot.gone(instance_id);
        let child = self
            .children
            .lock()
            .expect("children lock")
            .remove(instance_id);
        match child {
            Some(mut child) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            None => {
                let pid_file = self.dir(instance_id).join(PID_FILE);
                if let Ok(pid) = tokio::fs::read_to_string(&pid_file).await {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        kill_pid(pid, &self.agent_bin).await;
                    }
                }
            }
        }
        let _ = tokio::fs::remove_file(self.dir(instance_id).join(PID_FILE)).await;
        Ok(())
    }
}

/// Whether `pid` runs our agent binary.
fn is_our_agent(pid: i32, agent_bin: &std::path::Path) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    exe.as_deref()
        .zip(agent_bin.canonicalize().ok())
        .is_some_and(|(a, b)| a == b)
}

/// Kills `pid` if it is still our agent (its executable matches), and waits
/// until it is gone.
async fn kill_pid(pid: i32, agent_bin: &std::path::Path) {
    if !is_our_agent(pid, agent_bin) {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl Provider for LocalProvider {
    fn launch<'a>(
        &'a self,
        instance_id: &'a str,
        machine: &'a Machine,
        _launch_for: LaunchFor<'a>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.spawn(instance_id, machine).boxed()
    }

    fn stop<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.kill(instance_id).boxed()
    }

    fn start<'a>(
        &'a self,
        instance_id: &'a str,
        machine: &'a Machine,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.spawn(instance_id, machine).boxed()
    }

    fn terminate<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        async move {
            self.kill(instance_id).await?;
            self.credentials.revoke_instance(instance_id).await?;
            match tokio::fs::remove_dir_all(self.dir(instance_id)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn is_running(&self, instance_id: &str) -> Option<bool> {
        let pid = std::fs::read_to_string(self.dir(instance_id).join(PID_FILE)).ok();
        let pid = pid.and_then(|p| p.trim().parse::<i32>().ok());
        Some(pid.is_some_and(|pid| is_our_agent(pid, &self.agent_bin)))
    }

    fn instance_ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.instances_dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    fn spot_availability(&self, kind: &MachineType) -> f64 {
        self.spot.availability(kind)
    }

    fn spot_available(&self, kind: &MachineType) -> bool {
        self.spot.fulfilled(kind)
    }

    fn interrupt(&self, instance_id: &str, notice: Option<Duration>) -> Result<(), ProviderError> {
        self.spot.interrupt(instance_id, notice)
    }

    fn set_spot_availability(&self, machine_type: &str, p: f64) -> Result<(), ProviderError> {
        self.spot.set_availability(machine_type, p);
        Ok(())
    }
}

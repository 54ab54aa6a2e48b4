//! The `aibro-scheduler` process under test: spawned on the seeded data dir
//! with the fleet's catalog, killed with `kill -9`, started again on the
//! same address, and read for CPU, memory and its log.
//!
//! `aibro_tests::Scheduler` starts the same binary, but on a temp data dir of
//! its own, with the e2e tests' timeouts, and it waits for the address file
//! in `spawn`, where the restart here must time that wait itself; so only its
//! [`aibro_tests::bin`] is shared.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::MACHINE_TYPE;
use crate::cpu;

/// Milliseconds without a heartbeat before the scheduler takes an agent as
/// lost: its default, well above any restart measured here.
const AGENT_LOST_AFTER_MS: u64 = 15_000;

pub struct SchedulerProcess {
    child: Option<Child>,
    dir: PathBuf,
    heartbeat_ms: u64,
    /// Where it serves, once it has written its address file.
    pub addr: String,
}

impl SchedulerProcess {
    /// Writes the fleet's catalog into `dir` and starts the scheduler there
    /// on a free port.
    pub fn spawn(dir: &Path, heartbeat_ms: u64) -> Result<Self> {
        std::fs::write(dir.join("fleet-catalog.toml"), catalog_toml())?;
        let mut s = SchedulerProcess {
            child: None,
            dir: dir.to_path_buf(),
            heartbeat_ms,
            addr: String::new(),
        };
        s.start()?;
        Ok(s)
    }

    /// Starts the binary on the data dir: on the address it served before,
    /// if it ran already. Does not wait for it to serve.
    pub fn start(&mut self) -> Result<()> {
        let listen = if self.addr.is_empty() {
            "127.0.0.1:0"
        } else {
            &self.addr
        };
        let _ = std::fs::remove_file(self.addr_file());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("scheduler.log"))?;
        let child = Command::new(aibro_tests::bin("aibro-scheduler"))
            .args(["--listen", listen, "--data-dir"])
            .arg(&self.dir)
            .arg("--catalog")
            .arg(self.dir.join("fleet-catalog.toml"))
            .args([
                "--heartbeat-ms",
                &self.heartbeat_ms.to_string(),
                "--agent-lost-after-ms",
                &AGENT_LOST_AFTER_MS.to_string(),
                "--spot-availability",
                "0",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start aibro-scheduler")?;
        self.child = Some(child);
        Ok(())
    }

    /// The address file it writes once serving (recovery done).
    fn addr_file(&self) -> PathBuf {
        self.dir.join("listen-addr")
    }

    /// Waits for the address file.
    pub async fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = std::fs::read_to_string(self.addr_file()) {
                if !addr.is_empty() {
                    self.addr = addr;
                    return Ok(());
                }
            }
            if let Some(status) = self.child.as_mut().context("not running")?.try_wait()? {
                bail!("the scheduler exited with {status}; {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("the scheduler did not start; {}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Once it serves again: how long after `t0` it wrote its address file
    /// (by the file's mtime), which it then serves on.
    pub fn serving_after(&mut self, t0: Instant) -> Duration {
        let file = self.addr_file();
        if let Ok(addr) = std::fs::read_to_string(&file) {
            self.addr = addr;
        }
        std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .map(|ago| t0.elapsed().saturating_sub(ago))
            .unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its CPU time (user + system) so far; an error once it is gone.
    pub fn cpu(&self) -> Result<Duration> {
        cpu::process_cpu(self.pid())
            .with_context(|| format!("the scheduler is gone; {}", self.log_tail()))
    }

    /// Its resident set size (0 once it is gone).
    pub fn rss(&self) -> u64 {
        cpu::rss_bytes(self.pid())
    }

    /// Its peak resident set size since it started (0 once it is gone).
    pub fn peak_rss(&self) -> u64 {
        cpu::peak_rss_bytes(self.pid())
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("scheduler.log")).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "scheduler log tail:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// Lines of its log that hold `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The fleet's catalog: one pool type, which every simulated agent is.
fn catalog_toml() -> String {
    format!(
        r#"[[machine]]
type = "{MACHINE_TYPE}"
provider = "pool"
gpu_type = "NVIDIA A100"
gpu_count = 4
vcpus = 32
memory_gib = 256.0
spot_price = 0.0
on_demand_price = 4.10
capacity = 0
spot_availability = 0.0
"#
    )
}

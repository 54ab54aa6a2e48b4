//! Ray Serve peer of the predict-path bench: `bench/peers/ray_echo.py` serves
//! `examples/echo` with two replicas over HTTP, and [`wrk`] drives it.
//! `bench/peers/setup-ray.sh` makes a python with `ray[serve]`.
//!
//! The app runs with `RAY_TMPDIR` set to a directory of its own, so Ray's
//! sessions and logs land there and every Ray process (gcs_server, raylet,
//! monitors, agents, controller, proxy, replicas) carries that variable in
//! its environment. They are all descendants of the app's python process, so
//! [`cpu::tree_cpu`] of it measures all of Ray; [`RayServe::start`] checks
//! that on every run, and [`RayServe::stop`] uses the variable to find any
//! process left behind.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::cpu;
use crate::predict::{Row, RAY};
use crate::wrk;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const POST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a clean shutdown (stdin EOF, then SIGTERM) may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `ray_echo.py`. Dropping it without [`RayServe::stop`] closes
/// the app's stdin, which still shuts Ray down, unchecked.
pub struct RayServe {
    child: Child,
    /// Closing it tells the app to shut down.
    stdin: Option<ChildStdin>,
    pid: u32,
    port: u16,
    repo_root: PathBuf,
    /// `RAY_TMPDIR` of the app; also holds its stderr, `ray_echo.log`.
    tmp: tempfile::TempDir,
}

impl RayServe {
    /// Starts bench/peers/ray_echo.py with `python` (a venv python with
    /// ray[serve]), waits for READY (deadline 120 s), then for one successful
    /// HTTP POST.
    pub async fn start(python: &Path, repo_root: &Path) -> anyhow::Result<RayServe> {
        let script = repo_root.join("bench/peers/ray_echo.py");
        ensure!(script.is_file(), "{} is missing", script.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let tmp = tempfile::Builder::new().prefix("aibro-ray").tempdir()?;
        let log = fs::File::create(tmp.path().join("ray_echo.log"))?;
        let mut child = Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .env("RAY_TMPDIR", tmp.path())
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (bench/peers/setup-ray.sh prints a python with ray[serve])",
                    python.display()
                )
            })?;
        let pid = child.id().context("ray_echo.py exited at once")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut ray = RayServe {
            stdin: child.stdin.take(),
            child,
            pid,
            port,
            repo_root: repo_root.to_path_buf(),
            tmp,
        };
        match ray.ready(stdout).await {
            Ok(()) => Ok(ray),
            Err(e) => {
                let mut msg = format!("Ray Serve did not start: {e:#}\n{}", ray.log_tail());
                if let Err(stop) = ray.shutdown().await {
                    msg += &format!("\nand stopping it: {stop:#}");
                }
                Err(anyhow!(msg))
            }
        }
    }

    async fn ready(&self, stdout: ChildStdout) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match timeout_at(deadline, lines.next_line()).await {
                Err(_) => bail!("no READY within {READY_TIMEOUT:?}"),
                Ok(line) => match line.context("reading ray_echo.py's stdout")? {
                    Some(l) if l.trim() == "READY" => break,
                    Some(_) => {}
                    None => bail!("ray_echo.py closed its stdout before READY"),
                },
            }
        }
        // Keeps the pipe drained so that no print can block the app.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        // Ray processes first, then the tree: one that is not in the tree yet
        // still lives is not a descendant.
        let ray = self.ray_pids();
        let tree = cpu::tree(self.pid);
        ensure!(
            ray.contains(&self.pid),
            "cannot read the environment of the app's processes in /proc"
        );
        let stray: Vec<u32> = ray
            .into_iter()
            .filter(|p| !tree.contains(p) && Path::new(&format!("/proc/{p}")).exists())
            .collect();
        ensure!(
            stray.is_empty(),
            "Ray processes {stray:?} are not descendants of the app (pid {}), \
             so its process tree would not measure all of Ray's CPU",
            self.pid
        );

        let addr = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + POST_TIMEOUT;
        loop {
            match timeout_at(deadline, wrk::post_echo(&addr, "/")).await {
                Err(_) => bail!("no successful POST within {POST_TIMEOUT:?} of READY"),
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if Instant::now() + Duration::from_millis(200) > deadline => {
                    return Err(e.context("POST after READY"))
                }
                Ok(Err(_)) => sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// [`wrk::drive`] against the app; CPU is Ray's process tree's.
    pub async fn drive(&self, concurrency: usize, duration: Duration) -> anyhow::Result<Row> {
        let url = format!("http://127.0.0.1:{}/", self.port);
        wrk::drive(
            &self.repo_root,
            RAY,
            &url,
            wrk::BODY,
            self.pid,
            concurrency,
            duration,
        )
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", self.log_tail()))
    }

    /// Ends the app (stdin EOF, which runs `serve.shutdown(); ray.shutdown()`;
    /// SIGTERM after half of [`STOP_TIMEOUT`], SIGKILL after all of it) and
    /// checks that no Ray process of it is left; any left 15 s later are
    /// killed and reported as an error.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = self.shutdown().await?;
        ensure!(
            status.success(),
            "ray_echo.py exited with {status}\n{}",
            self.log_tail()
        );
        Ok(())
    }

    /// [`RayServe::stop`] short of judging the app's exit status.
    async fn shutdown(&mut self) -> anyhow::Result<ExitStatus> {
        drop(self.stdin.take());
        let status = match timeout(STOP_TIMEOUT / 2, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                // SAFETY: signals our own child, not yet reaped.
                unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
                match timeout(STOP_TIMEOUT / 2, self.child.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        self.child.kill().await?;
                        self.child.wait().await?
                    }
                }
            }
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.ray_pids();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let names: Vec<String> = left.iter().map(|&p| describe(p)).collect();
                for &p in &left {
                    // SAFETY: kills a process that carries our RAY_TMPDIR.
                    unsafe { libc::kill(p as i32, libc::SIGKILL) };
                }
                bail!(
                    "Ray processes outlived ray_echo.py; killed: {}",
                    names.join(", ")
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
        Ok(status)
    }

    /// Live processes whose environment holds our `RAY_TMPDIR`.
    fn ray_pids(&self) -> Vec<u32> {
        let mut marker = b"RAY_TMPDIR=".to_vec();
        marker.extend_from_slice(self.tmp.path().as_os_str().as_bytes());
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let pid = e.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
            let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
            env.split(|&b| b == 0).any(|v| v == marker).then_some(pid)
        })
        .collect()
    }

    /// The last lines of the app's stderr, for error messages.
    fn log_tail(&self) -> String {
        let path = self.tmp.path().join("ray_echo.log");
        let log = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            path.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }
}

fn describe(pid: u32) -> String {
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
    format!("{pid} ({})", cmd.trim())
}

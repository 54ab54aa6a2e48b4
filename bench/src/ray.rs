//! Ray Serve peer of the predict-path bench: `bench/peers/ray_echo.py` serves
//! `examples/echo` with two replicas over HTTP, and `wrk` (with
//! `bench/peers/wrk-report.lua`) drives it. `bench/peers/setup-ray.sh` makes
//! a python with `ray[serve]`.
//!
//! The app runs with `RAY_TMPDIR` set to a directory of its own, so Ray's
//! sessions and logs land there and every Ray process (gcs_server, raylet,
//! monitors, agents, controller, proxy, replicas) carries that variable in
//! its environment. They are all descendants of the app's python process, so
//! [`cpu::tree_cpu`] of it measures all of Ray; [`RayServe::start`] checks
//! that on every run, and [`RayServe::stop`] uses the variable to find any
//! process left behind.

use std::collections::HashMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::cpu;
use crate::predict::Row;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const POST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a clean shutdown (stdin EOF, then SIGTERM) may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The payload of every request (wrk-report.lua sends the same).
pub(crate) const BODY: &str = r#"{"text": "hello", "n": 1}"#;

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

        let deadline = Instant::now() + POST_TIMEOUT;
        loop {
            match timeout_at(deadline, post(self.port)).await {
                Err(_) => bail!("no successful POST within {POST_TIMEOUT:?} of READY"),
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if Instant::now() + Duration::from_millis(200) > deadline => {
                    return Err(e.context("POST after READY"))
                }
                Ok(Err(_)) => sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Runs `wrk -t min(concurrency, 2) -c concurrency -d duration --latency
    /// --timeout 30s -s bench/peers/wrk-report.lua` against the app and
    /// measures the CPU of Ray's process tree meanwhile. `duration` is
    /// rounded to whole seconds (at least 1), which is what wrk takes.
    /// The row's `requests` are responses with a status below 400 within the
    /// timeout; `errors` the others, plus connect, read, write and timeout
    /// errors. The timeout (30 s) is far above any latency a run of this
    /// length can see, so the tail is measured, not cut off.
    pub async fn drive(&self, concurrency: usize, duration: Duration) -> anyhow::Result<Row> {
        ensure!(concurrency > 0, "concurrency must be at least 1");
        let secs = duration.as_secs_f64().round().max(1.0) as u64;
        let script = self.repo_root.join("bench/peers/wrk-report.lua");
        let cpu0 = cpu::tree_cpu(self.pid);
        let out = Command::new("wrk")
            .args(["-t", &concurrency.min(2).to_string()])
            .args(["-c", &concurrency.to_string()])
            .args([
                "-d",
                &format!("{secs}s"),
                "--latency",
                "--timeout",
                "30s",
                "-s",
            ])
            .arg(&script)
            .arg(format!("http://127.0.0.1:{}/", self.port))
            .stdin(Stdio::null())
            .output()
            .await
            .context("running wrk (is it installed? apt-get install wrk)")?;
        let cpu = cpu::tree_cpu(self.pid).saturating_sub(cpu0);
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "wrk failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let wrk = parse_wrk(&stdout)?;
        let requests = wrk["requests"].saturating_sub(wrk["status_errors"] + wrk["timeouts"]);
        ensure!(
            requests > 0,
            "no request succeeded:\n{stdout}\n{}",
            self.log_tail()
        );
        let us = Duration::from_micros;
        Ok(Row {
            path: "Ray Serve (HTTP, wrk)".into(),
            concurrency,
            requests,
            errors: wrk["errors"],
            p50: us(wrk["p50_us"]),
            p99: us(wrk["p99_us"]),
            max: us(wrk["max_us"]),
            per_s: requests as f64 / us(wrk["duration_us"]).as_secs_f64(),
            cpu_per_req: cpu / u32::try_from(requests).unwrap_or(u32::MAX),
        })
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

/// One POST of [`BODY`]; Ok when the app echoes it back.
async fn post(port: u16) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    ensure!(
        resp.starts_with("HTTP/1.1 200") && resp.contains(r#""echo":{"text":"hello","n":1}"#),
        "unexpected answer: {resp}"
    );
    Ok(())
}

/// The `WRK key=value ...` line that wrk-report.lua prints.
fn parse_wrk(stdout: &str) -> anyhow::Result<HashMap<&str, u64>> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK "))
        .with_context(|| format!("no WRK line in wrk's output:\n{stdout}"))?;
    let map: HashMap<&str, u64> = line
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').context(kv.to_string())?;
            Ok((k, v.parse().with_context(|| format!("{kv} in {line}"))?))
        })
        .collect::<anyhow::Result<_>>()?;
    let keys = [
        "requests",
        "status_errors",
        "timeouts",
        "errors",
        "p50_us",
        "p99_us",
        "max_us",
        "duration_us",
    ];
    if let Some(k) = keys.iter().find(|k| !map.contains_key(*k)) {
        bail!("{k} missing from the WRK line: {line}");
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrk_line() {
        let out = "Running 2s test\n  1281 requests in 2.00s\nWRK requests=1281 status_errors=1 \
                   timeouts=1 errors=3 p50_us=2750 p99_us=8768 max_us=9796 duration_us=2001815\n";
        let w = parse_wrk(out).unwrap();
        assert_eq!((w["requests"], w["errors"], w["p99_us"]), (1281, 3, 8768));
        assert!(parse_wrk("WRK requests=1 errors=0").is_err());
        assert!(parse_wrk("Requests/sec: 5").is_err());
    }
}

//! HTTP load with `wrk` (and `bench/peers/wrk-report.lua`): the one load
//! generator of every HTTP row, Ray Serve's and the scheduler's predict URL
//! alike, so both sides are measured the same way. [`SETUP`] installs wrk.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::predict::Row;

/// The script that installs wrk and the Ray Serve venv.
pub(crate) const SETUP: &str = "bench/peers/setup-ray.sh";
/// The payload of every request (wrk-report.lua sends the same).
pub(crate) const BODY: &str = r#"{"text": "hello", "n": 1}"#;

/// Fails, naming [`SETUP`], when `wrk` is not installed.
pub(crate) async fn require() -> anyhow::Result<()> {
    match Command::new("wrk").arg("--version").output().await {
        Ok(_) => Ok(()),
        Err(e) => bail!("wrk does not run ({e}): run {SETUP}, which installs it"),
    }
}

/// Runs `wrk -t min(concurrency, 2) -c concurrency -d duration --latency
/// --timeout 30s -s bench/peers/wrk-report.lua url body`, POSTs of the JSON
/// `body` to `url` (HTTP/1.1
/// keep-alive, one connection per closed loop) and measures the CPU of
/// `server`'s process tree meanwhile. `duration` is rounded to whole seconds
/// (at least 1), which is what wrk takes. The row's `requests` are responses
/// with a 2xx status within the timeout; `errors` the others, plus connect,
/// read, write and timeout errors. The timeout (30 s) is far above any
/// latency a run of this length can see, so the tail is measured, not cut off.
pub(crate) async fn drive(
    repo_root: &Path,
    path: &str,
    url: &str,
    body: &str,
    server: u32,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Row> {
    ensure!(concurrency > 0, "concurrency must be at least 1");
    let secs = duration.as_secs_f64().round().max(1.0) as u64;
    let script = repo_root.join("bench/peers/wrk-report.lua");
    let cpu0 = crate::cpu::tree_cpu(server);
    let out = Command::new("wrk")
        .args(["-t", &concurrency.min(2).to_string()])
        .args(["-c", &concurrency.to_string()])
        .args(["-d", &format!("{secs}s"), "--latency", "--timeout", "30s"])
        .arg("-s")
        .arg(&script)
        .args([url, body])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running wrk (run {SETUP}, which installs it)"))?;
    let cpu = crate::cpu::tree_cpu(server).saturating_sub(cpu0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let wrk = parse(&stdout)?;
    let requests = wrk["requests"].saturating_sub(wrk["status_errors"] + wrk["timeouts"]);
    ensure!(requests > 0, "no request to {url} succeeded:\n{stdout}");
    let us = Duration::from_micros;
    Ok(Row {
        path: path.to_string(),
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

/// One POST of [`BODY`] to `http://{addr}{path}`; Ok when the echo model's
/// answer comes back with status 200.
pub(crate) async fn post_echo(addr: &str, path: &str) -> anyhow::Result<()> {
    post(addr, path, BODY, ECHOED).await
}

/// What the echo model's answer to [`BODY`] holds (spaces aside).
pub(crate) const ECHOED: &str = r#""echo":{"text":"hello","n":1}"#;

/// One POST of the JSON `body` to `http://{addr}{path}`; Ok when the answer
/// has status 200 and, spaces aside, contains `expect`.
pub(crate) async fn post(addr: &str, path: &str, body: &str, expect: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let compact: String = resp.chars().filter(|c| *c != ' ').collect();
    ensure!(
        resp.starts_with("HTTP/1.1 200") && compact.contains(expect),
        "unexpected answer from http://{addr}{path}: {resp}"
    );
    Ok(())
}

/// The `WRK key=value ...` line that wrk-report.lua prints.
fn parse(stdout: &str) -> anyhow::Result<HashMap<&str, u64>> {
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
        let w = parse(out).unwrap();
        assert_eq!((w["requests"], w["errors"], w["p99_us"]), (1281, 3, 8768));
        assert!(parse("WRK requests=1 errors=0").is_err());
        assert!(parse("Requests/sec: 5").is_err());
    }
}

//! Prometheus metrics of the scheduler and of an agent, scraped over HTTP:
//! predictions over HTTP and gRPC move the counters and histograms with the
//! model and outcome labels (never the client id), the census gauges count
//! jobs, instances, costs and agents, `/metrics` on the listen address needs
//! the admin token (401 without a token, 403 with a user's), the operator's
//! `--metrics-listen` address needs none, an agent's `--metrics-listen`
//! serves its workers' numbers, and both outputs pass `promtool check metrics`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{example, host_agent_args, pool_scheduler, wait_pool, Scheduler};
use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A client id distinctive enough to search the exposition for.
const CLIENT: &str = "c-metrics-x7q-secret";

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    fn assert_error(&self, status: u16, code: &str) {
        let json: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body));
        assert_eq!(
            (self.status, json["code"].as_str()),
            (status, Some(code)),
            "{json}"
        );
    }
}

/// One HTTP/1.1 request on a fresh connection.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<Reply> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "x");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body.to_string())))?)
        .await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok(Reply {
        status,
        content_type,
        body: String::from_utf8(body)?,
    })
}

/// The samples of a text exposition: (name, labels) → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("label=value");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        samples.insert((name.to_string(), labels), value.parse().expect("a number"));
    }
    samples
}

/// The value of the series `name` with exactly `labels`.
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_string(), labels)).copied()
}

/// `promtool check metrics` on `text`: it must find nothing to say.
fn promtool_check(text: &str, what: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context(
            "promtool is missing: run scripts/test-tools.sh (apt-get install -y \
             --no-install-recommends prometheus)",
        )?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool on the {what}'s metrics:\n{said}"
    );
    Ok(())
}

/// Waits for a file a process writes once listening.
async fn address_in(file: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::fs::read_to_string(file) {
            Ok(addr) if !addr.is_empty() => return Ok(addr),
            _ if Instant::now() > deadline => bail!("{} never appeared", file.display()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn scrape(addr: &str, token: Option<&str>) -> Result<String> {
    let r = http(addr, "GET", "/metrics", token, "").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    Ok(r.body)
}

#[tokio::test]
async fn scheduler_and_agent_metrics() -> Result<()> {
    let (s, _catalog) = pool_scheduler(&["--metrics-listen", "127.0.0.1:0"]).await?;
    let alice = s.user("alice").await?;
    let hosts = tempfile::tempdir()?;
    let host = hosts.path().join("gpu-1");
    let join_token = std::fs::read_to_string(s.data_dir.join("join-token"))?;
    let flags = ["--metrics-listen", "127.0.0.1:0", "--workers", "2"];
    let _agent = host_agent_args(&s, &host, "pool.cpu", Some(&join_token), &flags)?;
    wait_pool(&s, &alice, (1, 1)).await?;

    let digest = s.upload_dir(&alice, &example("echo")).await?;
    let mut request = aibro_tests::deploy_request("echo", &digest);
    request.client_ids = vec![CLIENT.into()];
    request.machine_config = Some(pb::MachineConfig {
        standby: "pool.cpu.od".into(),
        cooling: String::new(),
    });
    let job = s.deploy_with(&alice, request).await?;
    s.wait_status(&alice, &job, JobStatus::Deployed).await?;

    let predict = format!("/v1/alice/{CLIENT}/echo/predict");
    for i in 0..3 {
        let r = http(&s.addr, "POST", &predict, None, &format!(r#"{{"i": {i}}}"#)).await?;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for _ in 0..2 {
        s.predict("alice", CLIENT, "echo", r#"{"g": 1}"#).await?;
    }
    let denied = "/v1/alice/intruder/echo/predict";
    http(&s.addr, "POST", denied, None, "{}")
        .await?
        .assert_error(403, "client_not_allowed");
    // A name nobody deployed gets no label of its own.
    let nobody = format!("/v1/alice/{CLIENT}/made-up-9f2/predict");
    http(&s.addr, "POST", &nobody, None, "{}")
        .await?
        .assert_error(404, "model_not_found");

    // The listen address: the admin only.
    http(&s.addr, "GET", "/metrics", None, "")
        .await?
        .assert_error(401, "unauthenticated");
    http(&s.addr, "GET", "/metrics", Some(&alice), "")
        .await?
        .assert_error(403, "not_admin");
    http(&s.addr, "POST", "/metrics", Some(&s.admin_token), "")
        .await?
        .assert_error(405, "method_not_allowed");
    let text = scrape(&s.addr, Some(&s.admin_token)).await?;
    assert!(
        !text.contains(CLIENT) && !text.contains("intruder"),
        "a client id in:\n{text}"
    );
    assert!(
        !text.contains("made-up-9f2"),
        "an unknown model's name in:\n{text}"
    );
    check_scheduler(&parse(&text), &text)?;
    promtool_check(&text, "scheduler")?;

    // The operator's address: no token, and nothing but /metrics.
    let operator = address_in(&s.data_dir.join("metrics-addr")).await?;
    let open = scrape(&operator, None).await?;
    assert!(open.contains("aibro_predict_requests_total"), "{open}");
    http(&operator, "GET", "/v1/alice/x/echo/predict", None, "")
        .await?
        .assert_error(404, "unknown_path");

    let agent = address_in(&host.join("metrics-addr")).await?;
    let agent_text = scrape(&agent, None).await?;
    check_agent(&parse(&agent_text), &agent_text);
    promtool_check(&agent_text, "agent")?;

    // A completed model's series go with it.
    s.complete(&alice, &job).await?;
    let after = scrape(&operator, None).await?;
    assert!(
        !after.contains("alice/echo"),
        "series of an ended model:\n{after}"
    );
    Ok(())
}

fn check_scheduler(m: &Samples, text: &str) -> Result<()> {
    let ok = [("model", "alice/echo"), ("outcome", "ok")];
    assert_eq!(
        value(m, "aibro_predict_requests_total", &ok),
        Some(5.0),
        "{text}"
    );
    let count = value(m, "aibro_predict_duration_seconds_count", &ok);
    assert_eq!(count, Some(5.0), "{text}");
    let inf = [("model", "alice/echo"), ("outcome", "ok"), ("le", "+Inf")];
    assert_eq!(
        value(m, "aibro_predict_duration_seconds_bucket", &inf),
        Some(5.0)
    );
    let forbidden = [("model", "alice/echo"), ("outcome", "forbidden")];
    assert_eq!(
        value(m, "aibro_predict_requests_total", &forbidden),
        Some(1.0)
    );
    let unknown = [("model", "unknown"), ("outcome", "not_found")];
    assert_eq!(
        value(m, "aibro_predict_requests_total", &unknown),
        Some(1.0)
    );
    assert_eq!(value(m, "aibro_predict_requests_in_flight", &[]), Some(0.0));
    let deployed = [
        ("kind", "inference"),
        ("status", "DEPLOYED"),
        ("substatus", "DEPLOYED_MODEL"),
    ];
    assert_eq!(value(m, "aibro_jobs", &deployed), Some(1.0), "{text}");
    let serving = [
        ("role", "standby"),
        ("status", "EXECUTING"),
        ("substatus", "NONE"),
    ];
    assert_eq!(value(m, "aibro_instances", &serving), Some(1.0), "{text}");
    let machine = [("machine_type", "pool.cpu"), ("market", "on_demand")];
    let ran =
        value(m, "aibro_instance_running_seconds_total", &machine).context("no running time")?;
    let cost = value(m, "aibro_instance_cost_usd_total", &machine).context("no cost")?;
    // pool.cpu costs $0.30 an hour on demand.
    assert!(
        ran > 0.0 && (cost - ran * 0.3 / 3600.0).abs() < 1e-9,
        "{ran} s, ${cost}"
    );
    assert_eq!(
        value(m, "aibro_agents", &[("state", "live")]),
        Some(1.0),
        "{text}"
    );
    let running = [("machine_type", "pool.cpu"), ("holds", "running")];
    assert_eq!(value(m, "aibro_pool_agents", &running), Some(1.0), "{text}");
    assert!(
        m.keys()
            .any(|(n, _)| n == "aibro_agent_heartbeat_age_seconds"),
        "{text}"
    );
    for store in [
        "aibro_store_transaction_duration_seconds_count",
        "aibro_store_flush_duration_seconds_count",
    ] {
        assert!(
            value(m, store, &[]).is_some_and(|n| n > 0.0),
            "{store}: {text}"
        );
    }
    Ok(())
}

fn check_agent(m: &Samples, text: &str) {
    let ok = [("outcome", "ok")];
    assert_eq!(
        value(m, "aibro_agent_predictions_total", &ok),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        value(m, "aibro_agent_prediction_duration_seconds_count", &ok),
        Some(5.0)
    );
    assert_eq!(
        value(m, "aibro_agent_batch_size_count", &[]),
        Some(5.0),
        "{text}"
    );
    assert_eq!(value(m, "aibro_agent_workers", &[]), Some(2.0), "{text}");
    assert_eq!(value(m, "aibro_agent_workers_alive", &[]), Some(2.0));
    assert_eq!(value(m, "aibro_agent_workers_busy", &[]), Some(0.0));
    assert_eq!(value(m, "aibro_agent_requests_queued", &[]), Some(0.0));
    assert_eq!(
        value(m, "aibro_agent_worker_restarts_total", &[]),
        Some(0.0)
    );
    // No GPU here: no GPU series (one per GPU where there are some).
    assert!(
        !text.contains("aibro_agent_gpu_memory_used_bytes{"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_off_records_nothing_and_serves_nothing() -> Result<()> {
    let s = Scheduler::start_with(&["--metrics", "off"]).await?;
    http(&s.addr, "GET", "/metrics", Some(&s.admin_token), "")
        .await?
        .assert_error(404, "metrics_off");
    let refused =
        Scheduler::start_with(&["--metrics", "off", "--metrics-listen", "127.0.0.1:0"]).await;
    let Err(e) = refused else {
        bail!("--metrics-listen with --metrics off started")
    };
    assert!(format!("{e:#}").contains("--metrics off"), "{e:#}");
    Ok(())
}

//! Spot notices that agents hear from EC2's metadata service (a stand-in per
//! host): two pool agents poll their own; the one serving a deploy hears that
//! its machine is reclaimed and reports it once; the scheduler replaces the
//! instance on the other host while the job stays DEPLOYED, and retires it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use aibro_proto::v1::{self as pb, InstanceSubstatus, JobStatus};
use aibro_tests::imds::ImdsStandIn;
use aibro_tests::{
    example, host_agent_args, pool_scheduler, serving_replacement_of, wait_pool, Scheduler,
    DEPLOY_DEADLINE,
};
use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How far ahead EC2 acts: it gives two minutes; this leaves a loaded
/// machine time to start the replacement before the retirement.
const NOTICE: Duration = Duration::from_secs(5);
/// What the agent logs when it reports a notice, and when it has no instance
/// to report it for.
const REPORTED: &str = "spot notice from EC2; reporting it";
const IDLE: &str = "no instance runs here to report it for";

/// A pool agent of pool.cpu on host `dir` that polls `imds` every 100 ms.
fn ec2_host(s: &Scheduler, dir: &Path, imds: &ImdsStandIn) -> Result<tokio::process::Child> {
    let join_token = std::fs::read_to_string(s.data_dir.join("join-token"))?;
    let flags = ["--imds-endpoint", &imds.url(), "--imds-poll-ms", "100"];
    host_agent_args(s, dir, "pool.cpu", Some(&join_token), &flags)
}

/// The host (of `dirs`) whose agent is `agent_id`.
fn host_of(dirs: &[PathBuf], agent_id: &str) -> Result<usize> {
    dirs.iter()
        .position(|d| {
            std::fs::read_to_string(d.join("agent-id")).is_ok_and(|id| id.trim() == agent_id)
        })
        .with_context(|| format!("no host runs {agent_id}"))
}

/// Waits until the agent's log in `dir` says `what`.
async fn wait_log(dir: &Path, what: &str) -> Result<String> {
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    loop {
        let log = std::fs::read_to_string(dir.with_extension("log"))?;
        if log.contains(what) {
            return Ok(log);
        }
        if Instant::now() > deadline {
            bail!("the agent never logged `{what}`:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_spot_notice_from_ec2_moves_the_instance_to_another_host() -> Result<()> {
    let (s, _catalog) = pool_scheduler(&["--lifecycle-tick-ms", "100"]).await?;
    let token = s.user("sue").await?;
    let hosts = tempfile::tempdir()?;
    let dirs = [hosts.path().join("a"), hosts.path().join("b")];
    let imds = [
        ImdsStandIn::start("i-0aaa").await,
        ImdsStandIn::start("i-0bbb").await,
    ];
    let _agents = [
        ec2_host(&s, &dirs[0], &imds[0])?,
        ec2_host(&s, &dirs[1], &imds[1])?,
    ];
    wait_pool(&s, &token, (2, 2)).await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let mut request = aibro_tests::deploy_request("reclaimed", &digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: "pool.cpu.od".into(),
        cooling: String::new(),
    });
    let job_id = s.deploy_with(&token, request).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let first = s.get_job(&token, &job_id).await?.instances[0].clone();
    let (hit, other) = match host_of(&dirs, &first.host)? {
        0 => (0, 1),
        _ => (1, 0),
    };

    // EC2 reclaims the serving host's machine.
    imds[hit].set_instance_action("terminate", SystemTime::now() + NOTICE);
    let job = s
        .wait_instances(&token, &job_id, "the move, then the retirement", |insts| {
            serving_replacement_of(insts, &first.instance_id).is_some()
                && insts.iter().any(|i| {
                    i.instance_id == first.instance_id
                        && i.substatus() == InstanceSubstatus::Terminated
                })
        })
        .await?;
    assert_eq!(job.status(), JobStatus::Deployed, "{}", job.reason);
    let replacement = serving_replacement_of(&job.instances, &first.instance_id).unwrap();
    assert_eq!(host_of(&dirs, &replacement.host)?, other, "the other host");
    let old = job
        .instances
        .iter()
        .find(|i| i.instance_id == first.instance_id);
    assert_eq!(old.unwrap().reason, "spot interruption");
    let r = s.predict("sue", "public", "reclaimed", "{}").await?;
    assert_eq!(r.instance_id, replacement.instance_id);

    // Polled all along, reported once: one mark on the timeline.
    let timeline = s.timeline(&token, &job_id).await?;
    let marks: Vec<&str> = timeline
        .events
        .iter()
        .filter(|e| e.phase == "spot interruption notice")
        .map(|e| e.instance_id.as_str())
        .collect();
    assert_eq!(marks, [first.instance_id.as_str()]);
    assert!(imds.iter().all(|i| i.requests() > 0), "both hosts poll");
    // Back in the idle pool, the reclaimed host has nothing to report it for.
    let log = wait_log(&dirs[hit], IDLE).await?;
    assert_eq!(log.matches(REPORTED).count(), 1, "{log}");
    let log = std::fs::read_to_string(dirs[other].with_extension("log"))?;
    assert!(!log.contains(REPORTED) && !log.contains(IDLE), "{log}");
    s.complete(&token, &job_id).await?;
    Ok(())
}

/// One HTTP/1.1 exchange with the stand-in; the whole answer.
async fn http(imds: &ImdsStandIn, request: &str, header: &str) -> Result<String> {
    let addr = imds.url().replace("http://", "");
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!("{request} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{header}\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

/// The body of an answer.
fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn the_stand_in_answers_like_imdsv2() -> Result<()> {
    let imds = ImdsStandIn::start("i-0123").await;
    let refused = http(&imds, "GET /latest/meta-data/instance-id", "").await?;
    assert!(refused.starts_with("HTTP/1.1 401"), "no token: {refused}");
    let ttl = "x-aws-ec2-metadata-token-ttl-seconds: 60\r\n";
    let answer = http(&imds, "PUT /latest/api/token", ttl).await?;
    let with_token = format!("x-aws-ec2-metadata-token: {}\r\n", body(&answer));
    let get = |path: &'static str| {
        let (imds, with_token) = (&imds, &with_token);
        async move { http(imds, &format!("GET /latest/meta-data/{path}"), with_token).await }
    };
    assert_eq!(body(&get("instance-id").await?), "i-0123");
    assert_eq!(body(&get("local-ipv4").await?), "127.0.0.1");
    assert!(get("spot/instance-action")
        .await?
        .starts_with("HTTP/1.1 404"));

    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_199_720_400);
    imds.set_instance_action("stop", at);
    imds.set_rebalance(at);
    let action = get("spot/instance-action").await?;
    assert_eq!(
        body(&action),
        r#"{"action":"stop","time":"2026-12-02T08:22:00Z"}"#
    );
    let rebalance = get("events/recommendations/rebalance").await?;
    assert_eq!(body(&rebalance), r#"{"noticeTime":"2026-12-02T08:22:00Z"}"#);
    imds.clear();
    assert!(get("spot/instance-action")
        .await?
        .starts_with("HTTP/1.1 404"));
    assert_eq!(imds.requests(), 6, "the GETs with the token");
    Ok(())
}

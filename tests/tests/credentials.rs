//! Per-agent credentials: the join token only lets a new pool agent join; an
//! instance's credential speaks only for that instance and its job, and is
//! refused once the instance is terminated; agents refuse calls without their
//! credential (TLS off); local agents carry no secret in their environment or
//! command line; a pool agent keeps its credential (mode 0600) across restarts
//! without the join token, and joining again with it revokes the old one.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use aibro_proto::v1::{self as pb, agent_client::AgentClient};
use aibro_proto::v1::{agent_gateway_client::AgentGatewayClient, JobStatus};
use aibro_scheduler::auth::Credentials;
use aibro_scheduler::store::Store;
use aibro_tests::{
    example, host_agent, host_agent_with, pool_scheduler, repo, wait_pool, Authed, Bearer,
    Scheduler, DEPLOY_DEADLINE,
};
use anyhow::Result;
use tonic::Code;

fn bearer(secret: Option<&str>) -> Bearer {
    Bearer(secret.map(|s| format!("Bearer {s}").parse().expect("ascii")))
}

async fn gateway(s: &Scheduler, secret: &str) -> Result<AgentGatewayClient<Authed>> {
    let channel = s.channel().await?;
    Ok(AgentGatewayClient::with_interceptor(
        channel,
        bearer(Some(secret)),
    ))
}

fn heartbeat(instance_id: &str, agent_id: &str) -> pb::ReportRequest {
    pb::ReportRequest {
        instance_id: instance_id.into(),
        agent_id: agent_id.into(),
        body: Some(pb::report_request::Body::Heartbeat(pb::Heartbeat::default())),
    }
}

fn register(instance_id: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        instance_id: instance_id.into(),
        agent_id: "agent-forged".into(),
        address: "127.0.0.1:1".into(),
        ..Default::default()
    }
}

/// The first message of FetchArtifact (its refusal comes with the call or the stream).
async fn fetch(c: &mut AgentGatewayClient<Authed>, digest: &str) -> Result<(), tonic::Status> {
    let request = pb::FetchArtifactRequest {
        digest: digest.into(),
    };
    let mut stream = c.fetch_artifact(request).await?.into_inner();
    stream.message().await.map(drop)
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map_or_else(|e| e.code(), |_| Code::Ok)
}

/// The instance credentials the stopped scheduler's store derives.
async fn derived(s: &Scheduler, instance_ids: &[&str]) -> Result<Vec<String>> {
    let store = Store::open(&s.data_dir.join("db"))?;
    let credentials = Credentials::open(store.clone()).await?;
    let out = instance_ids
        .iter()
        .map(|id| credentials.instance(id))
        .collect();
    drop(credentials);
    store.close().await?;
    Ok(out)
}

#[tokio::test]
async fn instance_credentials_speak_only_for_their_instance_until_it_ends() -> Result<()> {
    let mut s = Scheduler::start().await?;
    let token = s.user("cora").await?;
    let echo = s.upload_dir(&token, &example("echo")).await?;
    let other_repo =
        repo("def load_model():\n    return 0\n\ndef run(model, data):\n    return data\n");
    let other = s.upload_dir(&token, other_repo.path()).await?;
    let (job_a, job_b) = (
        s.deploy(&token, "a", &echo).await?,
        s.deploy(&token, "b", &other).await?,
    );
    s.wait_status(&token, &job_a, JobStatus::Deployed).await?;
    s.wait_status(&token, &job_b, JobStatus::Deployed).await?;
    let a = s.get_job(&token, &job_a).await?.instances[0].clone();
    let b = s.get_job(&token, &job_b).await?.instances[0].clone();
    let join = std::fs::read_to_string(s.data_dir.join("join-token"))?;

    // The credentials are derived again by a restarted scheduler, which reaches
    // its agents with them (the agents keep running meanwhile).
    s.stop()?;
    let creds = derived(&s, &[&a.instance_id, &b.instance_id]).await?;
    let (cred_a, cred_b) = (&creds[0], &creds[1]);
    s.spawn().await?;
    s.predict("cora", "public", "a", "{}").await?;

    // (f) No secret in a local agent's environment or command line, and the
    // handed-over file is gone.
    let pids = s.live_agents();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        for what in ["environ", "cmdline"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{what}"))?;
            let text = String::from_utf8_lossy(&bytes);
            for secret in [join.as_str(), cred_a, cred_b] {
                assert!(
                    !text.contains(secret),
                    "agent {pid}'s {what} holds a secret"
                );
            }
        }
    }
    for inst in [&a, &b] {
        let file = s
            .data_dir
            .join("instances")
            .join(&inst.instance_id)
            .join("credential");
        assert!(!file.exists(), "{} was left behind", file.display());
    }

    // (a) The join token registers no instance, reports for none, fetches nothing.
    let mut c = gateway(&s, &join).await?;
    for result in [
        code(c.register(register(&a.instance_id)).await),
        code(c.report(heartbeat(&a.instance_id, &a.host)).await),
        code(fetch(&mut c, &echo).await),
    ] {
        assert_eq!(result, Code::PermissionDenied);
    }
    let e = c.register(register(&a.instance_id)).await.unwrap_err();
    assert!(e.message().contains("join token"), "{e:?}");

    // (b) A's credential speaks for A and its job only.
    let mut c = gateway(&s, cred_a).await?;
    c.report(heartbeat(&a.instance_id, &a.host)).await?;
    fetch(&mut c, &echo).await?;
    for result in [
        code(c.report(heartbeat(&b.instance_id, &a.host)).await),
        code(c.register(register(&b.instance_id)).await),
        code(fetch(&mut c, &other).await),
    ] {
        assert_eq!(result, Code::PermissionDenied);
    }

    // (c) A's agent takes calls only with its credential (TLS is off).
    let url = format!("http://{}", a.agent_address);
    for presented in [None, Some("agent_wrong"), Some(join.as_str()), Some(cred_b)] {
        let channel = tonic::transport::Channel::from_shared(url.clone())?
            .connect()
            .await?;
        let mut agent = AgentClient::with_interceptor(channel, bearer(presented));
        let prepare = pb::PrepareRequest {
            job_id: job_b.clone(),
            artifact_digest: other.clone(),
            ..Default::default()
        };
        let predict = pb::AgentPredictRequest {
            job_id: job_a.clone(),
            payload: b"{}".to_vec(),
            ..Default::default()
        };
        for result in [
            code(agent.prepare(prepare).await),
            code(agent.predict(predict).await),
            code(agent.stop(pb::StopRequest { terminate: true }).await),
        ] {
            assert_eq!(result, Code::Unauthenticated, "{presented:?}");
        }
    }
    s.predict("cora", "public", "a", "{}").await?;

    // (e) Once A is terminated, its credential is refused.
    s.complete(&token, &job_a).await?;
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    while code(c.report(heartbeat(&a.instance_id, &a.host)).await) != Code::Unauthenticated {
        assert!(Instant::now() < deadline, "A's credential still works");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code(fetch(&mut c, &echo).await), Code::Unauthenticated);
    Ok(())
}

/// The credential the agent keeps in `file`, once it is there (the agent
/// writes it after the scheduler has counted it in the pool).
async fn kept_credential(file: &std::path::Path) -> Result<String> {
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "no credential in {}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(std::fs::read_to_string(file)?)
}

/// Waits until the agent's log (truncated at each start) says it joined.
async fn joined(log: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + DEPLOY_DEADLINE;
    while !std::fs::read_to_string(log)?.contains("joined the scheduler's pool") {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(log)?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_pool_agent_keeps_its_credential_and_the_join_token_can_go() -> Result<()> {
    let (s, _catalog) = pool_scheduler(&[]).await?;
    let token = s.user("pim").await?;
    let hosts = tempfile::tempdir()?;
    let dir = hosts.path().join("h");
    let log = hosts.path().join("h.log");
    let mut agent = host_agent(&s, &dir, "pool.cpu")?;
    wait_pool(&s, &token, (1, 1)).await?;
    let kept = dir.join("credential");
    let first = kept_credential(&kept).await?;
    assert!(first.starts_with("agent_"), "{first}");
    assert_eq!(
        std::fs::metadata(&kept)?.permissions().mode() & 0o777,
        0o600
    );
    let agent_id = std::fs::read_to_string(dir.join("agent-id"))?;

    // Restarted without the join token (rotated away), it joins with its
    // credential and serves a deploy.
    agent.kill().await?;
    agent = host_agent_with(&s, &dir, "pool.cpu", None)?;
    joined(&log).await?;
    assert_eq!(std::fs::read_to_string(&kept)?, first);
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let mut request = aibro_tests::deploy_request("pooled", &digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: "pool.cpu.od".into(),
        cooling: String::new(),
    });
    let job_id = s.deploy_with(&token, request).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    s.predict("pim", "public", "pooled", "{}").await?;
    s.complete(&token, &job_id).await?;
    wait_pool(&s, &token, (1, 1)).await?;

    // Its file wiped, it joins again with the join token as new: a new
    // credential, and the old one is refused.
    agent.kill().await?;
    std::fs::remove_file(&kept)?;
    let _agent = host_agent(&s, &dir, "pool.cpu")?;
    joined(&log).await?;
    let second = kept_credential(&kept).await?;
    assert_ne!(first, second);
    let old = gateway(&s, &first)
        .await?
        .report(heartbeat("", &agent_id))
        .await;
    assert_eq!(code(old), Code::Unauthenticated);
    gateway(&s, &second)
        .await?
        .report(heartbeat("", &agent_id))
        .await?;
    // Another agent's id is not its to speak for.
    let forged = gateway(&s, &second)
        .await?
        .report(heartbeat("", "agent-other"))
        .await;
    assert_eq!(code(forged), Code::PermissionDenied);
    Ok(())
}

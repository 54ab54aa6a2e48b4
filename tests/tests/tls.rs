//! TLS on both gRPC servers: a scheduler started with --tls-cert/--tls-key
//! serves users and agents over https only; the agents it starts serve TLS
//! too and verify the scheduler's CA; a deploy runs and predicts end to end;
//! plain-text clients and clients that do not trust the CA are refused; the
//! CLI connects with --tls-ca.

use std::path::{Path, PathBuf};
use std::process::Command;

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{bin, example, Scheduler};
use anyhow::Result;

/// A self-signed certificate for 127.0.0.1 / localhost: (cert, key) paths.
fn self_signed(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names)?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.key_pair.serialize_pem())?;
    Ok((cert, key))
}

#[tokio::test]
async fn scheduler_and_agents_talk_tls_and_refuse_plain_text() -> Result<()> {
    let certs = tempfile::tempdir()?;
    let (cert, key) = self_signed(certs.path(), "scheduler")?;
    let s = Scheduler::start_tls(&cert, &key, &cert, &[]).await?;
    assert!(s.endpoint().starts_with("https://"));

    // Users and the agents the local provider starts: all over TLS.
    let token = s.user("tess").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job_id = s.deploy(&token, "secure", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let r = s.predict("tess", "public", "secure", r#"{"x": 1}"#).await?;
    assert!(String::from_utf8_lossy(&r.output).contains("\"x\""));
    let job = s.get_job(&token, &job_id).await?;
    assert!(
        job.predict_address.starts_with("https://"),
        "{}",
        job.predict_address
    );

    // Plain text to the TLS port gets nowhere.
    let plain = format!("http://{}", s.addr);
    let refused = async {
        let mut c = pb::jobs_client::JobsClient::connect(plain).await?;
        c.list_jobs(pb::ListJobsRequest::default()).await?;
        anyhow::Ok(())
    };
    assert!(refused.await.is_err(), "plain text was answered");

    // A client that trusts another CA does not connect.
    let (other, _) = self_signed(certs.path(), "other")?;
    let tls = aibro_proto::transport::client_tls(&other)?;
    let endpoint =
        aibro_proto::transport::endpoint(&s.endpoint(), Some(&tls)).map_err(anyhow::Error::msg)?;
    assert!(
        endpoint.connect().await.is_err(),
        "an untrusted certificate was accepted"
    );

    // The CLI, with and without the CA.
    let aibro = |ca: Option<&Path>| {
        let mut cmd = Command::new(bin("aibro"));
        cmd.args(["machines", "--endpoint", &s.endpoint()])
            .env("AIBRO_TOKEN", &token)
            .env_remove("AIBRO_TLS_CA");
        if let Some(ca) = ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        cmd.output()
    };
    let ok = aibro(Some(&cert))?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("local.small"));
    assert!(!aibro(None)?.status.success(), "no CA, no connection");

    s.complete(&token, &job_id).await?;
    assert!(s.live_agents().is_empty());
    Ok(())
}

/// `aibro-scheduler tls init` makes a CA and a certificate signed by it that
/// clients and the local agents accept; `tls agent` issues agents' from the
/// same CA.
#[tokio::test]
async fn tls_init_makes_certificates_that_work_end_to_end() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("tls");
    let init = Command::new(bin("aibro-scheduler"))
        .args([
            "tls",
            "init",
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            "--dir",
        ])
        .arg(&certs)
        .output()?;
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(String::from_utf8_lossy(&init.stdout).contains("--tls-cert"));
    let agent = Command::new(bin("aibro-scheduler"))
        .args([
            "tls",
            "agent",
            "--name",
            "gpu-1",
            "--host",
            "127.0.0.1",
            "--dir",
        ])
        .arg(&certs)
        .output()?;
    assert!(
        agent.status.success(),
        "{}",
        String::from_utf8_lossy(&agent.stderr)
    );
    assert!(certs.join("agent-gpu-1.pem").is_file());

    let (cert, key, ca) = (
        certs.join("scheduler.pem"),
        certs.join("scheduler-key.pem"),
        certs.join("ca.pem"),
    );
    let s = Scheduler::start_tls(&cert, &key, &ca, &[]).await?;
    let token = s.user("tess").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job_id = s.deploy(&token, "issued", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    s.predict("tess", "public", "issued", r#"{"x": 1}"#).await?;
    s.complete(&token, &job_id).await?;
    Ok(())
}

/// The most common self-signed certificate (`openssl req -x509` makes it with
/// CA:TRUE) is refused at start with what to do instead, not by every client.
#[test]
fn a_ca_certificate_as_the_schedulers_own_is_refused_at_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let out = Command::new(bin("aibro-scheduler"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .output()?;
    assert!(!out.status.success(), "it started with a CA certificate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CA:TRUE") && stderr.contains("aibro-scheduler tls init"),
        "{stderr}"
    );
    Ok(())
}

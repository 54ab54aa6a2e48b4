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

//! The Open Inference Protocol v2 on the scheduler's port: the official
//! tritonclient (HTTP in binary and JSON mode, gRPC with raw contents)
//! against a deployed numpy model, a run()-only model fed nested lists,
//! hand-written bad requests, and grpcurl through reflection. The Python
//! scripts live in tests/fixtures/oip.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use aibro_proto::v1::JobStatus;
use aibro_tests::{deploy_request, example, repo, test_python, Scheduler};
use anyhow::{ensure, Context, Result};

const CLIENT: &str = "c-oip-tensors";
const MAX_PAYLOAD: &str = "65536";
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

/// run() without numpy: rows summed, halves, words, a flag; a lone input
/// comes back unnamed.
const LISTS: &str = r#"
def load_model():
    return None

def run(model, data):
    if "one" in data:
        return data["one"]
    rows = data["x"]
    return {
        "rows": [sum(r) for r in rows],
        "half": [[v / 2 for v in r] for r in rows],
        "words": [data["s"][0].decode(), "x"],
        "flag": True,
    }
"#;

/// Runs a fixture script with the tritonclient Python; it must print `ok`.
async fn script(s: &Scheduler, name: &str, args: &[&str]) -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/oip")
        .join(name);
    let child = tokio::process::Command::new(test_python())
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(SCRIPT_DEADLINE, child.wait_with_output())
        .await
        .with_context(|| format!("{name} did not finish in {SCRIPT_DEADLINE:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{name} failed:\n{stdout}{}\n--- scheduler log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    Ok(())
}

async fn deploy(
    s: &Scheduler,
    token: &str,
    model: &str,
    dir: &Path,
    clients: &[&str],
) -> Result<()> {
    let digest = s.upload_dir(token, dir).await?;
    let mut r = deploy_request(model, &digest);
    r.client_ids = clients.iter().map(|c| c.to_string()).collect();
    let job = s.deploy_with(token, r).await?;
    s.wait_status(token, &job, JobStatus::Deployed).await?;
    Ok(())
}

#[tokio::test]
async fn tritonclient_over_http_and_grpc_with_bad_requests_refused() -> Result<()> {
    let s = Scheduler::start_with(&["--max-payload-bytes", MAX_PAYLOAD]).await?;
    let alice = s.user("alice").await?;
    deploy(&s, &alice, "tensors", &example("tensors"), &[CLIENT]).await?;
    let model = "alice~tensors";
    script(&s, "tritonclient_check.py", &[&s.addr, model, CLIENT]).await?;
    script(
        &s,
        "bad_requests.py",
        &[&s.addr, model, CLIENT, MAX_PAYLOAD],
    )
    .await?;
    // The client id travels in a header, never in the access log's path.
    let log = s.log_with(&["/v2/models/alice~tensors/infer"]).await?;
    assert!(!log.contains(CLIENT), "the client id reached the log");

    let lists = repo(LISTS);
    deploy(&s, &alice, "lists.v1", lists.path(), &[]).await?;
    script(&s, "lists_check.py", &[&s.addr, "alice~lists.v1"]).await?;

    let out = std::process::Command::new("grpcurl")
        .args([
            "-plaintext",
            &s.addr,
            "inference.GRPCInferenceService/ServerLive",
        ])
        .output()
        .context("grpcurl is missing: run scripts/test-tools.sh")?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(r#""live": true"#),
        "{text}"
    );
    Ok(())
}

//! Dynamic batching end to end: a model with run_batch, deployed with a batch
//! size, gets predictions queued at its agent through the scheduler as one
//! run_batch call; every caller gets its own item's output.

use std::path::Path;
use std::time::{Duration, Instant};

use aibro_proto::v1 as pb;
use aibro_tests::{deploy_request, repo, Scheduler};
use pb::JobStatus;

/// `{"hold": dir}` makes run_batch create `dir/started` and wait for `dir/release`.
const MODEL: &str = "import os, time\n\
def load_model():\n    return None\n\
def run(model, data):\n    return {'item': data, 'batch': 0}\n\
def run_batch(model, items):\n    \
for i in items:\n        \
if 'hold' in i:\n            \
open(os.path.join(i['hold'], 'started'), 'w').close()\n            \
while not os.path.exists(os.path.join(i['hold'], 'release')):\n                \
time.sleep(0.01)\n    \
return [{'item': i, 'batch': len(items)} for i in items]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_predictions_are_batched_as_deployed() -> anyhow::Result<()> {
    // The model holds its requests on files this test writes: no sandbox
    // between them (tests/tests/sandbox.rs tests the sandbox).
    let s = Scheduler::start_with(&[
        "--agent-workers",
        "1",
        "--heartbeat-ms",
        "200",
        "--agent-sandbox",
        "none",
    ])
    .await?;
    let token = s.user("alice").await?;
    let dir = repo(MODEL);
    let digest = s.upload_dir(&token, dir.path()).await?;

    let deploy = |name: &str, max_batch_size: u32, max_wait_ms: Option<u32>| {
        let mut request = deploy_request(name, &digest);
        request.batching = Some(pb::Batching {
            max_batch_size,
            max_wait_ms,
        });
        s.deploy_with(&token, request)
    };
    let batched = deploy("batched", 8, Some(50)).await?;
    let unbatched = deploy("unbatched", 1, None).await?;
    let defaults = s.deploy(&token, "defaults", &digest).await?;
    for job in [&batched, &unbatched, &defaults] {
        s.wait_status(&token, job, JobStatus::Deployed).await?;
    }
    let shown = |job: pb::Job| job.batching.map(|b| (b.max_batch_size, b.max_wait_ms));
    assert_eq!(
        shown(s.get_job(&token, &batched).await?),
        Some((8, Some(50)))
    );
    assert_eq!(
        shown(s.get_job(&token, &defaults).await?),
        Some((16, Some(2)))
    );

    // Nine requests queue behind a held one: eight of them (in the order
    // they reached the agent) become one run_batch call, the ninth the next.
    let answers = while_busy(&s, &token, &batched, "batched", 9).await?;
    for (i, v) in answers.iter().enumerate() {
        assert_eq!(v["item"]["i"], i, "each caller gets its own output: {v}");
    }
    let mut sizes: Vec<_> = answers.iter().map(|v| v["batch"].as_u64()).collect();
    sizes.sort();
    assert_eq!(
        sizes,
        [Some(1)]
            .into_iter()
            .chain([Some(8); 8])
            .collect::<Vec<_>>()
    );
    // Batching off: each request is a run() call.
    for v in four_at_once(&s, "unbatched").await? {
        assert_eq!(v["batch"], 0, "{v}");
    }
    Ok(())
}

/// Four concurrent predictions to a model with batching off.
async fn four_at_once(s: &Scheduler, model: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    futures::future::try_join_all((0..4).map(|i| predict(s, model, serde_json::json!({ "i": i }))))
        .await
}

/// Holds the model's one worker busy, queues `n` predictions `{"i": k}` at
/// its agent (as its heartbeats show), then frees the worker; the answers,
/// in order.
async fn while_busy(
    s: &Scheduler,
    token: &str,
    job_id: &str,
    model: &str,
    n: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let hold = tempfile::tempdir()?;
    let held = predict(s, model, serde_json::json!({ "hold": hold.path() }));
    let queued = async {
        wait_for_file(&hold.path().join("started")).await?;
        let calls = (0..n).map(|i| predict(s, model, serde_json::json!({ "i": i })));
        let answers = futures::future::try_join_all(calls);
        let release = async {
            s.wait_instances(token, job_id, "the requests to queue", |insts| {
                insts.iter().any(|i| i.queued as usize == n)
            })
            .await?;
            std::fs::write(hold.path().join("release"), "")?;
            Ok::<_, anyhow::Error>(())
        };
        let (answers, ()) = tokio::try_join!(answers, release)?;
        Ok::<_, anyhow::Error>(answers)
    };
    let (_, answers) = tokio::try_join!(held, queued)?;
    Ok(answers)
}

/// One prediction through the scheduler; its output, as JSON.
async fn predict(
    s: &Scheduler,
    model: &str,
    payload: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = s
        .predict("alice", "public", model, &payload.to_string())
        .await?;
    Ok(serde_json::from_slice(&r.output)?)
}

/// Polls until `path` exists, for up to a minute.
async fn wait_for_file(path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

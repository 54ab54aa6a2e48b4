//! Dynamic batching end to end: a model with run_batch, deployed with a batch
//! size and wait, gets concurrent predictions through the scheduler as
//! run_batch calls; every caller gets its own item's output.

use aibro_proto::v1 as pb;
use aibro_tests::{deploy_request, repo, Scheduler};
use pb::JobStatus;

const MODEL: &str = "import os\n\
def load_model():\n    return None\n\
def run(model, data):\n    return {'item': data, 'batch': 0, 'pid': os.getpid()}\n\
def run_batch(model, items):\n    \
return [{'item': i, 'batch': len(items), 'pid': os.getpid()} for i in items]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_predictions_are_batched_as_deployed() -> anyhow::Result<()> {
    let s = Scheduler::start_with(&["--agent-workers", "1"]).await?;
    let token = s.user("alice").await?;
    let dir = repo(MODEL);
    let digest = s.upload_dir(&token, dir.path()).await?;

    let mut request = deploy_request("batched", &digest);
    request.batching = Some(pb::Batching {
        max_batch_size: 8,
        max_wait_ms: Some(3_000),
    });
    let batched = s.deploy_with(&token, request).await?;
    let mut off = deploy_request("unbatched", &digest);
    off.batching = Some(pb::Batching {
        max_batch_size: 1,
        max_wait_ms: None,
    });
    let unbatched = s.deploy_with(&token, off).await?;
    let defaults = s.deploy(&token, "defaults", &digest).await?;
    for job in [&batched, &unbatched, &defaults] {
        s.wait_status(&token, job, JobStatus::Deployed).await?;
    }
    let shown = |job: pb::Job| job.batching.map(|b| (b.max_batch_size, b.max_wait_ms));
    assert_eq!(
        shown(s.get_job(&token, &batched).await?),
        Some((8, Some(3_000)))
    );
    assert_eq!(
        shown(s.get_job(&token, &defaults).await?),
        Some((16, Some(2)))
    );

    // Eight requests at once: one worker, one run_batch call of all eight.
    let answers = predict_all(&s, "batched", 8).await?;
    for (i, v) in answers.iter().enumerate() {
        assert_eq!(v["item"]["i"], i, "each caller gets its own output: {v}");
        assert_eq!(v["batch"], 8, "{v}");
    }
    // Batching off: each request is a run() call.
    for v in predict_all(&s, "unbatched", 4).await? {
        assert_eq!(v["batch"], 0, "{v}");
    }
    Ok(())
}

/// `n` concurrent predictions with payload `{"i": k}`, answers in order.
async fn predict_all(
    s: &Scheduler,
    model: &str,
    n: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (channel, model) = (s.channel(), model.to_string());
            async move {
                let mut client = pb::inference_client::InferenceClient::new(channel.await?);
                let r = client
                    .predict(pb::PredictRequest {
                        owner: "alice".into(),
                        client_id: "public".into(),
                        model_name: model,
                        payload: serde_json::to_vec(&serde_json::json!({ "i": i }))?,
                        content_type: "application/json".into(),
                    })
                    .await?
                    .into_inner();
                Ok::<_, anyhow::Error>(serde_json::from_slice(&r.output)?)
            }
        })
        .collect();
    futures::future::try_join_all(calls).await
}

//! `aibro deploy`: pack/upload the repo, Inference.Deploy, then follow the job
//! with Jobs.WatchJob (one line per substatus change) until it is DEPLOYED
//! (success) or CANCELED (error with the reason, often a Python traceback).

use std::time::Instant;

use aibro_proto::v1::{
    Batching, DeployRequest, DryRunResult, Job, JobEvent, JobStatus, MachineConfig,
};
use anyhow::{anyhow, bail, Result};
use serde_json::json;

use super::{jobs, predict, Ctx};
use crate::args::DeployArgs;
use crate::{display, json, output, upload};

/// What a deploy ended with.
pub enum Outcome {
    Deployed(Box<Job>),
    /// The dry run succeeded (its output was printed).
    DryRun,
}

/// Runs the whole deploy and prints its progress and result; errors when the
/// job is CANCELED or the dry run fails.
pub async fn deploy(ctx: &Ctx, args: &DeployArgs) -> Result<Outcome> {
    let artifact = upload::upload_repo(ctx, &args.artifacts).await?;

    let resp = ctx
        .client
        .inference()
        .deploy(DeployRequest {
            model_name: args.model_name.clone(),
            machine_config: Some(MachineConfig {
                standby: args.standby.clone(),
                cooling: args.cooling.clone().unwrap_or_default(),
            }),
            artifact_digest: artifact.digest.clone(),
            dryrun: args.dryrun,
            cool_down_period_s: args.cool_down.unwrap_or(0),
            client_ids: args.client_ids.clone(),
            description: args.description.clone().unwrap_or_default(),
            wait_request_s: args.wait_request.unwrap_or(0),
            batching: Some(Batching {
                max_batch_size: args.max_batch_size.unwrap_or(0),
                max_wait_ms: args.max_batch_wait_ms,
            }),
            isolate_network: args.isolate_network,
        })
        .await?
        .into_inner();

    if args.dryrun {
        let result = resp
            .dryrun
            .ok_or_else(|| anyhow!("the scheduler returned no dry-run result"))?;
        show_dry_run(ctx.json, result)?;
        return Ok(Outcome::DryRun);
    }

    ctx.say(format!("job {} created, following it:", resp.job_id));
    let job = follow(ctx, &resp.job_id).await?;
    match job.status() {
        JobStatus::Deployed => {
            output::emit(
                ctx.json,
                || json::job(&job),
                || {
                    println!("deployed: job {}", job.job_id);
                    let address = if job.predict_address.is_empty() {
                        &resp.predict_address
                    } else {
                        &job.predict_address
                    };
                    println!("predict:  {address}");
                    println!("curl:     {}", aibro_scheduler::control::curl_line(address));
                },
            );
            Ok(Outcome::Deployed(Box::new(job)))
        }
        _ => {
            if ctx.json {
                output::print_json(&json::job(&job));
            }
            let reason = if job.reason.is_empty() {
                "no reason given".to_string()
            } else {
                job.reason.clone()
            };
            bail!(
                "job {} is {}:\n{}",
                job.job_id,
                display::job_state(job.status, job.substatus),
                reason.trim_end()
            )
        }
    }
}

/// Prints a dry run's outcome; errors when it failed.
pub fn show_dry_run(json: bool, result: DryRunResult) -> Result<()> {
    if json {
        output::print_json(&json!({
            "ok": result.ok,
            "output": json::payload(&result.output, &result.content_type),
            "content_type": result.content_type,
            "traceback": result.traceback,
        }));
    } else if result.ok {
        println!("dry run ok; run() returned:");
        predict::print_payload(&result.output, &result.content_type)?;
    }
    if !result.ok {
        bail!("dry run failed:\n{}", result.traceback.trim_end());
    }
    Ok(())
}

/// Prints one line per (status, substatus) change until the job settles
/// (DEPLOYED, CANCELED or COMPLETED) or the stream ends; returns the job.
pub async fn follow(ctx: &Ctx, job_id: &str) -> Result<Job> {
    let mut stream = ctx.client.watch(job_id).await?;
    let mut clock = Clock::default();
    let mut last = None;
    while let Some(event) = stream.message().await? {
        let state = (event.status, event.substatus);
        if last != Some(state) {
            last = Some(state);
            ctx.say(progress_line(clock.elapsed_ms(&event), &event));
        }
        if settled(event.status()) {
            break;
        }
    }
    jobs::get(ctx, job_id).await
}

fn settled(status: JobStatus) -> bool {
    matches!(
        status,
        JobStatus::Deployed | JobStatus::Canceled | JobStatus::Completed
    )
}

/// `  [  0.4s] QUEUING / CONNECTING_SERVER  (message)`.
pub fn progress_line(elapsed_ms: u64, e: &JobEvent) -> String {
    let mut line = format!(
        "  [{:>5.1}s] {}",
        elapsed_ms as f64 / 1000.0,
        display::job_state(e.status, e.substatus)
    );
    // CANCELED reasons (tracebacks) are printed in full at the end.
    if e.status() != JobStatus::Canceled && !e.message.is_empty() && !e.message.contains('\n') {
        line.push_str(&format!("  ({})", e.message));
    }
    line
}

/// Elapsed time of an event since the first one, from the events' own
/// timestamps (so replayed history shows the real timing), else the local clock.
#[derive(Default)]
pub(crate) struct Clock {
    first_at: Option<prost_types::Timestamp>,
    local: Option<Instant>,
}

impl Clock {
    pub(crate) fn elapsed_ms(&mut self, e: &JobEvent) -> u64 {
        let local = *self.local.get_or_insert_with(Instant::now);
        match (&e.at, &self.first_at) {
            (Some(at), Some(first)) => display::millis_between(first, at),
            (Some(at), None) => {
                self.first_at = Some(*at);
                0
            }
            (None, _) => local.elapsed().as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    #[test]
    fn progress_lines_use_event_time() {
        let mut clock = Clock::default();
        let at = |ms: i64| {
            Some(Timestamp {
                seconds: 50 + ms / 1000,
                nanos: (ms % 1000) as i32 * 1_000_000,
            })
        };
        let e1 = JobEvent {
            status: 1,
            substatus: 1,
            at: at(0),
            ..Default::default()
        };
        let e2 = JobEvent {
            status: 1,
            substatus: 2,
            at: at(400),
            message: "agent registered".into(),
            ..Default::default()
        };
        assert_eq!(
            progress_line(clock.elapsed_ms(&e1), &e1),
            "  [  0.0s] QUEUING / REQUESTING_SERVER"
        );
        assert_eq!(
            progress_line(clock.elapsed_ms(&e2), &e2),
            "  [  0.4s] QUEUING / CONNECTING_SERVER  (agent registered)"
        );
    }

    #[test]
    fn settles_on_terminal_or_deployed() {
        assert!(settled(JobStatus::Deployed));
        assert!(settled(JobStatus::Canceled));
        assert!(!settled(JobStatus::Queuing));
    }
}

#[cfg(test)]
mod mock_tests {
    use std::io::Write;

    use super::*;
    use crate::mock::{self, Mock};

    async fn run_deploy(final_status: i32, artifacts: &std::path::Path) -> (Mock, Result<Outcome>) {
        let (mock, ctx) = mock::connected(final_status, false).await;
        let args = DeployArgs {
            model_name: "echo".into(),
            standby: "local.small.od".into(),
            cooling: Some("local.large.od".into()),
            artifacts: artifacts.to_path_buf(),
            cool_down: Some(5),
            client_ids: vec!["c1".into()],
            description: None,
            wait_request: None,
            max_batch_size: Some(4),
            max_batch_wait_ms: None,
            dryrun: false,
            local: false,
            isolate_network: true,
        };
        let result = deploy(&ctx, &args).await;
        (mock, result)
    }

    #[tokio::test]
    async fn uploads_in_chunks_with_the_token_and_follows_to_deployed() {
        let mut file = tempfile::Builder::new()
            .suffix(".tar.gz")
            .tempfile()
            .unwrap();
        let content: Vec<u8> = (0..upload::CHUNK_BYTES * 2 + 123)
            .map(|i| i as u8)
            .collect();
        file.write_all(&content).unwrap();
        let (mock, result) = run_deploy(2, file.path()).await;
        let Outcome::Deployed(job) = result.unwrap() else {
            panic!("not deployed")
        };
        assert_eq!(job.job_id, "j-1");
        let seen = mock.seen.lock().unwrap();
        assert_eq!(
            seen.chunk_sizes,
            [upload::CHUNK_BYTES, upload::CHUNK_BYTES, 123]
        );
        assert!(seen.uploaded == content);
        assert!(seen
            .auth
            .iter()
            .all(|a| a.as_deref() == Some("Bearer secret_t")));
        let req = seen.deploy.as_ref().unwrap();
        assert_eq!(req.artifact_digest, "sha256:abc");
        let mc = req.machine_config.as_ref().unwrap();
        assert_eq!(
            (mc.standby.as_str(), mc.cooling.as_str()),
            ("local.small.od", "local.large.od")
        );
        assert_eq!((req.cool_down_period_s, req.wait_request_s), (5, 0));
        assert_eq!(req.client_ids, ["c1"]);
        let b = req.batching.as_ref().expect("batching sent");
        assert_eq!((b.max_batch_size, b.max_wait_ms), (4, None));
        assert!(req.isolate_network, "--isolate-network is sent");
    }

    #[tokio::test]
    async fn packs_a_directory() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/echo");
        let (mock, result) = run_deploy(2, &repo).await;
        result.unwrap();
        let seen = mock.seen.lock().unwrap();
        // A gzip stream.
        assert_eq!(&seen.uploaded[..2], &[0x1f, 0x8b]);
    }

    #[tokio::test]
    async fn canceled_jobs_fail_with_the_reason() {
        let file = tempfile::Builder::new().suffix(".tgz").tempfile().unwrap();
        let (_, result) = run_deploy(4, file.path()).await;
        let err = format!("{:#}", result.err().expect("must fail"));
        assert!(err.contains("CANCELED"), "{err}");
        assert!(err.contains("ValueError: boom"), "{err}");
    }
}

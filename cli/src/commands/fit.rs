//! `aibro fit`: upload a training repo, Training.Fit, follow the job live
//! (substatus changes, a progress bar per epoch, the lines train() prints),
//! and with `--output DIR` download and unpack the trained outputs.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use aibro_proto::v1::{DownloadResultRequest, FitRequest, JobEvent, JobStatus};
use anyhow::{bail, Context, Result};

use super::deploy::{progress_line, Clock};
use super::{jobs, Ctx};
use crate::args::FitArgs;
use crate::{display, json, output, upload};

const BAR_WIDTH: usize = 30;

/// `k=v` → (k, v).
fn parse_args(pairs: &[String]) -> Result<HashMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--arg takes key=value, got `{p}`"),
        })
        .collect()
}

/// `epoch  3/20 [#####.........] loss=0.1200`.
pub fn progress_bar(e: &JobEvent) -> String {
    let mut line = if e.total_epochs > 0 {
        let done = (e.epoch as usize * BAR_WIDTH / e.total_epochs as usize).min(BAR_WIDTH);
        format!(
            "  epoch {:>3}/{:<3} [{}{}]",
            e.epoch,
            e.total_epochs,
            "#".repeat(done),
            ".".repeat(BAR_WIDTH - done)
        )
    } else {
        format!("  epoch {:>3}", e.epoch)
    };
    let mut metrics: Vec<_> = e.metrics.iter().collect();
    metrics.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in metrics {
        line.push_str(&format!(" {k}={v:.4}"));
    }
    line
}

pub async fn fit(ctx: &Ctx, args: &FitArgs) -> Result<()> {
    let artifact = upload::upload_repo(ctx, &args.artifacts).await?;
    let request = FitRequest {
        artifact_digest: artifact.digest,
        machine_ids: args.machine_ids.clone(),
        cool_down_period_s: args.cool_down.unwrap_or(0),
        wait_request_s: args.wait_request.unwrap_or(0),
        description: args.description.clone().unwrap_or_default(),
        args: parse_args(&args.args)?,
        isolate_network: args.isolate_network,
    };
    let job_id = ctx
        .client
        .training()
        .fit(request)
        .await?
        .into_inner()
        .job_id;
    ctx.say(format!("job {job_id} created, following it:"));

    let mut stream = ctx.client.watch(&job_id).await?;
    let mut clock = Clock::default();
    let mut last = None;
    while let Some(event) = stream.message().await? {
        match event.phase.as_str() {
            "progress" => ctx.say(progress_bar(&event)),
            "log" => ctx.say(format!("  | {}", event.message)),
            _ => {}
        }
        let state = (event.status, event.substatus);
        if last != Some(state) {
            last = Some(state);
            ctx.say(progress_line(clock.elapsed_ms(&event), &event));
        }
        if matches!(event.status(), JobStatus::Canceled | JobStatus::Completed) {
            break;
        }
    }
    let job = jobs::get(ctx, &job_id).await?;
    if job.status() != JobStatus::Completed {
        bail!(
            "job {} is {}:\n{}",
            job.job_id,
            display::job_state(job.status, job.substatus),
            job.reason.trim_end()
        );
    }
    if let Some(dir) = &args.output {
        download(ctx, &job_id, dir).await?;
        ctx.say(format!("outputs unpacked into {}", dir.display()));
    }
    output::emit(
        ctx.json,
        || json::job(&job),
        || {
            println!("completed: job {}", job.job_id);
            println!(
                "outputs:   {} ({})",
                job.result_digest,
                display::bytes(job.result_size)
            );
        },
    );
    Ok(())
}

/// Streams the job's outputs into a temp file and unpacks them into `dir`.
pub async fn download(ctx: &Ctx, job_id: &str, dir: &Path) -> Result<()> {
    let mut stream = ctx
        .client
        .training()
        .download_result(DownloadResultRequest {
            job_id: job_id.to_string(),
        })
        .await?
        .into_inner();
    let mut file = tempfile::NamedTempFile::new()?;
    while let Some(chunk) = stream.message().await? {
        file.write_all(&chunk.data)?;
    }
    file.flush()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    aibro_repo::archive::unpack(file.path(), dir, &aibro_repo::archive::Limits::default())
        .with_context(|| format!("cannot unpack the outputs into {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_bars() {
        let args = parse_args(&["epochs=3".into(), "lr=0.1=x".into()]).unwrap();
        assert_eq!(args["epochs"], "3");
        assert_eq!(args["lr"], "0.1=x");
        assert!(parse_args(&["novalue".into()]).is_err());
        let e = JobEvent {
            epoch: 3,
            total_epochs: 6,
            metrics: [("loss".to_string(), 0.5)].into(),
            ..Default::default()
        };
        assert_eq!(
            progress_bar(&e),
            format!(
                "  epoch   3/6   [{}{}] loss=0.5000",
                "#".repeat(15),
                ".".repeat(15)
            )
        );
    }
}

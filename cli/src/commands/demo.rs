//! `aibro demo`: the README's one-command demo. Runs a scheduler in-process on
//! 127.0.0.1:0 with a temporary data dir, then — through the very functions the
//! other commands use — deploys examples/echo on `local.small.od`, predicts
//! three times, shows the job and its timeline, completes it, and shuts down.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::net::TcpListener;

use super::{complete, deploy, jobs, predict, timeline, Ctx};
use crate::args::{DemoArgs, DeployArgs, JobSelector, PredictArgs, TimelineArgs};
use crate::client::Client;
use crate::display;

/// The example repo the demo deploys.
pub const ECHO_REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/echo");
const STANDBY: &str = "local.small.od";
const MODEL: &str = "echo";
/// How long the scheduler may take to write its admin token, and to shut down.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

pub async fn run(args: &DemoArgs, json: bool) -> Result<()> {
    let (data_dir, temp) = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating data dir {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("aibro-demo-")
                .tempdir()
                .context("creating a temporary data dir")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = aibro_scheduler::Config::new(data_dir.clone());
    let scheduler = aibro_scheduler::run(config, listener, async move {
        let _ = stopped.await;
    });
    tokio::pin!(scheduler);

    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "== scheduler on {endpoint}, data dir {}",
        data_dir.display()
    ));

    // Run the demo next to the scheduler; if the scheduler stops first, that is the error.
    let result = tokio::select! {
        r = &mut scheduler => match r {
            Ok(()) => Err(anyhow::anyhow!("the scheduler stopped unexpectedly")),
            Err(e) => Err(e.context("the scheduler failed")),
        },
        r = steps(&endpoint, &data_dir, json) => r,
    };

    say("== shutting the scheduler down".into());
    let _ = stop.send(());
    match tokio::time::timeout(SHUTDOWN_LIMIT, &mut scheduler).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: scheduler shutdown: {e:#}"),
        Err(_) => eprintln!(
            "warning: the scheduler did not stop within {}s",
            SHUTDOWN_LIMIT.as_secs()
        ),
    }

    if let Some(temp) = temp {
        if args.keep {
            let kept = temp.keep();
            say(format!("== data dir kept at {}", kept.display()));
        }
    }
    result
}

/// The demo proper, against a running scheduler.
async fn steps(endpoint: &str, data_dir: &Path, json: bool) -> Result<()> {
    let token = admin_token(data_dir).await?;
    let ctx = Ctx {
        client: Client::connect(endpoint, Some(&token), None).await?,
        json,
    };

    let repo = echo_repo()?;
    ctx.say(format!("\n== deploy {} on {STANDBY}", repo.display()));
    let deploy_args = DeployArgs {
        model_name: MODEL.into(),
        standby: STANDBY.into(),
        cooling: None,
        artifacts: repo,
        cool_down: None,
        client_ids: vec![],
        description: Some("aibro demo: examples/echo".into()),
        wait_request: None,
        max_batch_size: None,
        max_batch_wait_ms: None,
        dryrun: false,
        local: false,
        isolate_network: false,
    };
    let job = match deploy::deploy(&ctx, &deploy_args).await? {
        deploy::Outcome::Deployed(job) => job,
        deploy::Outcome::DryRun => bail!("unexpected dry run"),
    };
    let selector = JobSelector::by_id(&job.job_id);

    ctx.say(format!(
        "\n== predict x3 (owner {}, client id public)",
        job.owner
    ));
    for i in 1..=3 {
        let args = PredictArgs {
            owner: job.owner.clone(),
            model_name: MODEL.into(),
            client_id: "public".into(),
            data: Some(json!({ "text": format!("hello #{i}"), "n": i }).to_string()),
            data_file: None,
            content_type: None,
        };
        let started = Instant::now();
        let resp = predict::call(&ctx, &args).await?;
        ctx.say(format!(
            "-- request {i}: {:.1} ms, served by {} instance {}",
            started.elapsed().as_secs_f64() * 1000.0,
            display::role(resp.role),
            resp.instance_id
        ));
        predict::show(&ctx, &resp)?;
    }

    ctx.say("\n== jobs get".to_string());
    jobs::show(&ctx, &jobs::get(&ctx, &job.job_id).await?);

    ctx.say("\n== timeline".to_string());
    let args = TimelineArgs {
        job_id: job.job_id.clone(),
        svg: None,
    };
    timeline::show(&ctx, &args).await?;

    ctx.say("\n== complete".to_string());
    complete::complete(&ctx, &selector).await?;

    ctx.say("\n== final status".to_string());
    jobs::show(&ctx, &jobs::get(&ctx, &job.job_id).await?);
    Ok(())
}

fn echo_repo() -> Result<PathBuf> {
    let path = Path::new(ECHO_REPO);
    path.canonicalize().with_context(|| {
        format!(
            "the demo needs the example repo at {ECHO_REPO} (run it from a checkout of aibro-rs)"
        )
    })
}

/// Waits for the scheduler to write `<data-dir>/admin-token`.
async fn admin_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("admin-token");
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        if let Ok(text) = tokio::fs::read_to_string(&path).await {
            let token = text.trim();
            if !token.is_empty() {
                return Ok(token.to_string());
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the scheduler wrote no admin token to {} within {}s",
                path.display(),
                STARTUP_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

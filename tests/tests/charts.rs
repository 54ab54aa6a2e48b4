//! The SVG charts end to end: `aibro timeline JOB --svg` against a real
//! scheduler draws lanes and bars for a deployed `examples/echo`, escapes
//! the markup a hostile model's error carries, and headless Chromium shows
//! that markup as text without running anything; the progress chart of a
//! real training run has its loss line. Screenshots are kept.

use std::path::Path;
use std::process::Output;

use aibro_scheduler::charts::progress_svg;
use aibro_tests::browser::Browser;
use aibro_tests::{example, output_text, repo, Scheduler};
use anyhow::{ensure, Context, Result};
use fantoccini::Locator;
use quick_xml::events::Event;

const HOSTILE: &str = r#"<script>alert(1)</script> & "quotes""#;

/// Deploys `artifacts` as `model_name` (described as [`HOSTILE`]) with the
/// CLI; the job's id and what the CLI said.
fn deploy(
    s: &Scheduler,
    token: &str,
    model_name: &str,
    artifacts: &Path,
) -> Result<(String, Output)> {
    let dir = artifacts.to_str().context("utf-8 path")?;
    let args = [
        "deploy",
        "--model-name",
        model_name,
        "--standby",
        "local.small.od",
        "--artifacts",
        dir,
        "--description",
        HOSTILE,
    ];
    let deployed = s.cli(token, &args);
    let out = s.cli(token, &["--json", "jobs", "list"]);
    ensure!(out.status.success(), "{}", output_text(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    jobs.as_array()
        .into_iter()
        .flatten()
        .find(|j| j["model_name"] == model_name)
        .and_then(|j| j["job_id"].as_str())
        .map(|id| (id.to_string(), deployed))
        .with_context(|| format!("no job for {model_name} in {jobs}"))
}

/// What the test reads back from an SVG (which must parse as XML): its text
/// nodes, unescaped, and how many bars, lane labels and polylines it has.
#[derive(Debug, Default)]
struct Drawn {
    texts: Vec<String>,
    bars: usize,
    lanes: usize,
    lines: usize,
}

fn parse(svg: &str) -> Result<Drawn> {
    let mut reader = quick_xml::Reader::from_str(svg);
    let mut drawn = Drawn::default();
    loop {
        match reader.read_event()? {
            Event::Eof => return Ok(drawn),
            Event::Start(e) | Event::Empty(e) => {
                let class = e.try_get_attribute("class")?.map(|a| a.value.into_owned());
                ensure!(e.name().as_ref() != b"script", "a script element in {svg}");
                match (e.name().as_ref(), class.as_deref()) {
                    (_, Some(b"bar")) => drawn.bars += 1,
                    (_, Some(b"lane")) => drawn.lanes += 1,
                    (b"polyline", _) => drawn.lines += 1,
                    _ => {}
                }
            }
            Event::Text(t) => drawn.texts.push(t.unescape()?.into_owned()),
            _ => {}
        }
    }
}

/// `aibro timeline JOB --svg FILE`, then the file read back.
fn timeline_svg(s: &Scheduler, token: &str, job_id: &str, file: &Path) -> Result<String> {
    let out = s.cli(
        token,
        &["timeline", job_id, "--svg", file.to_str().unwrap()],
    );
    ensure!(out.status.success(), "{}", output_text(&out));
    ensure!(
        output_text(&out).contains("drawn to"),
        "{}",
        output_text(&out)
    );
    Ok(std::fs::read_to_string(file)?)
}

#[tokio::test]
async fn the_cli_draws_the_timeline_as_svg_and_chromium_shows_it_escaped() -> Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("carol").await?;
    let out_dir = tempfile::tempdir()?;

    // A deployed echo: a lane for the job and one for its instance, with
    // bars; the description's markup escaped.
    let (echo_job, deployed) = deploy(&s, &token, "echo", &example("echo"))?;
    ensure!(deployed.status.success(), "{}", output_text(&deployed));
    let echo_svg = out_dir.path().join("echo.svg");
    let drawn = parse(&timeline_svg(&s, &token, &echo_job, &echo_svg)?)?;
    ensure!(drawn.lanes >= 2 && drawn.bars >= 5, "{drawn:?}");
    for phase in ["GEARING_UP_ENV", "model loaded"] {
        ensure!(
            drawn.texts.iter().any(|t| t.contains(phase)),
            "{phase}: {drawn:?}"
        );
    }

    // A model whose load fails with markup in its error: escaped in the file,
    // the exception's line in the caption.
    let hostile = repo(&format!(
        "def load_model():\n    raise ValueError({HOSTILE:?})\n\ndef run(model, data):\n    return data\n"
    ));
    let (hostile_job, deployed) = deploy(&s, &token, "hostile", hostile.path())?;
    ensure!(!deployed.status.success(), "{}", output_text(&deployed));
    let hostile_svg = out_dir.path().join("hostile.svg");
    let svg = timeline_svg(&s, &token, &hostile_job, &hostile_svg)?;
    ensure!(!svg.contains("<script"), "{svg}");
    let drawn = parse(&svg)?;
    let caption = format!("CANCELED / CANCELED: ValueError: {HOSTILE}");
    ensure!(drawn.texts.contains(&caption), "{drawn:?}");

    // A file that cannot be written: a clear error.
    let out = s.cli(
        &token,
        &["timeline", &echo_job, "--svg", "/nonexistent/dir/t.svg"],
    );
    ensure!(
        !out.status.success() && output_text(&out).contains("cannot write the timeline SVG"),
        "{}",
        output_text(&out)
    );

    // In a real browser: the markup is text, no script ran, no dialog opened.
    let browser = Browser::start("charts").await?;
    browser
        .client
        .goto(&format!("file://{}", echo_svg.display()))
        .await?;
    browser.screenshot("echo-timeline").await?;
    browser
        .client
        .goto(&format!("file://{}", hostile_svg.display()))
        .await?;
    let mut shown = Vec::new();
    for t in browser.client.find_all(Locator::Css("text")).await? {
        shown.push(t.text().await?);
    }
    ensure!(
        shown
            .iter()
            .any(|t| t.contains("<script>alert(1)</script>")),
        "{shown:?}"
    );
    ensure!(!browser.dialog_open().await?, "a dialog opened");
    let scripts = browser
        .client
        .execute("return document.querySelectorAll('script').length", vec![])
        .await?;
    ensure!(scripts == 0, "{scripts} script elements");
    browser.screenshot("hostile-timeline").await?;
    browser.close().await
}

#[tokio::test]
async fn a_training_runs_progress_is_drawn_per_epoch() -> Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("dave").await?;
    let out_dir = tempfile::tempdir()?;
    let trained = out_dir.path().join("trained");
    let train = example("train-linear");
    let args = [
        "fit",
        "--artifacts",
        train.to_str().unwrap(),
        "--machine-id",
        "local.small.od",
        "--arg",
        "epochs=4",
        "--output",
        trained.to_str().unwrap(),
    ];
    let out = s.cli(&token, &args);
    ensure!(out.status.success(), "{}", output_text(&out));
    let out = s.cli(&token, &["--json", "jobs", "list"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let job_id = jobs[0]["job_id"].as_str().context("a job")?;

    let timeline = s.timeline(&token, job_id).await?;
    let svg = progress_svg(&timeline.events);
    let drawn = parse(&svg)?;
    ensure!(drawn.lines == 1, "{drawn:?}");
    for text in ["loss", "Training progress: epoch 4 of 4"] {
        ensure!(drawn.texts.iter().any(|t| t == text), "{text}: {drawn:?}");
    }

    let file = out_dir.path().join("progress.svg");
    std::fs::write(&file, svg)?;
    let browser = Browser::start("charts").await?;
    browser
        .client
        .goto(&format!("file://{}", file.display()))
        .await?;
    let points = browser
        .client
        .execute(
            "return document.querySelector('polyline').points.numberOfItems",
            vec![],
        )
        .await?;
    ensure!(points == 4, "{points} points, one per epoch");
    browser.screenshot("training-progress").await?;
    browser.close().await
}

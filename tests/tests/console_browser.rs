//! The console in a real browser (headless Chromium through WebDriver):
//! alice signs in, deploys `examples/echo` with the CLI and sees its row
//! turn DEPLOYED without a reload, opens the job, sees the timeline SVG,
//! adds a client id, completes the job with the button and sees COMPLETED;
//! bob, signed in after her, sees none of it. A model described with markup
//! shows it as text. Screenshots of each page are kept under
//! `target/test-artifacts/screenshots/console-*.png`.

use std::time::Duration;

use aibro_proto::v1 as pb;
use aibro_tests::browser::Browser;
use aibro_tests::{example, output_text, Scheduler, DEPLOY_DEADLINE};
use anyhow::{ensure, Context, Result};
use fantoccini::elements::Element;
use fantoccini::{Client, Locator};

/// How long a page may take to show what the test waits for.
const WAIT: Duration = Duration::from_secs(15);
const HOSTILE: &str = r#"<script>alert(1)</script> & "quotes""#;

async fn wait_for(c: &Client, css: &str, within: Duration) -> Result<Element> {
    c.wait()
        .at_most(within)
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("no `{css}` within {within:?}"))
}

async fn click(c: &Client, css: &str) -> Result<()> {
    wait_for(c, css, WAIT).await?.click().await?;
    Ok(())
}

async fn sign_in(b: &Browser, s: &Scheduler, token: &str) -> Result<()> {
    b.client.goto(&format!("http://{}/console", s.addr)).await?;
    let input = wait_for(&b.client, "form#signin input[name=token]", WAIT).await?;
    input.send_keys(token).await?;
    click(&b.client, "button#signin-submit").await?;
    // live.js marks the table once its event stream is open.
    wait_for(&b.client, "table#jobs[data-live=on]", WAIT).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_in_users_watch_and_act_on_their_jobs_in_a_browser() -> Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let bob = s.user("bob").await?;
    let b = Browser::start("console").await?;

    b.client.goto(&format!("http://{}/console", s.addr)).await?;
    wait_for(&b.client, "form#signin", WAIT).await?;
    b.screenshot("signin").await?;
    sign_in(&b, &s, &alice).await?;
    // A mark the page keeps until it is reloaded.
    b.client.execute("window.aibroMark = 1", vec![]).await?;

    let job_id = deploy_and_watch(&s, &b, &alice).await?;
    job_page(&s, &b, &alice, &job_id).await?;
    marketplace(&s, &b).await?;
    other_user(&s, &b, &bob, &job_id).await?;
    b.close().await
}

/// Deploys with the CLI while the jobs page is open: its row appears and
/// turns DEPLOYED, and the page was never reloaded.
async fn deploy_and_watch(s: &Scheduler, b: &Browser, alice: &str) -> Result<String> {
    let echo = example("echo");
    let out = s.cli(
        alice,
        &[
            "deploy",
            "--model-name",
            "echo",
            "--standby",
            "local.small.od",
            "--artifacts",
            echo.to_str().context("utf-8 path")?,
            "--description",
            HOSTILE,
        ],
    );
    ensure!(out.status.success(), "aibro deploy: {}", output_text(&out));
    let row = wait_for(&b.client, "tr[data-job-id]", WAIT).await?;
    let job_id = row.attr("data-job-id").await?.context("the row's job id")?;
    let deployed = format!("tr[data-job-id='{job_id}'] .status .status-DEPLOYED");
    wait_for(&b.client, &deployed, DEPLOY_DEADLINE).await?;
    let mark = b
        .client
        .execute("return window.aibroMark === 1", vec![])
        .await?;
    ensure!(mark.as_bool() == Some(true), "the jobs page was reloaded");
    b.screenshot("jobs").await?;
    Ok(job_id)
}

/// The job page: the timeline as SVG, the description as text, a client id
/// added through the form, then Complete (after its confirmation).
async fn job_page(s: &Scheduler, b: &Browser, alice: &str, job_id: &str) -> Result<()> {
    click(&b.client, &format!("tr[data-job-id='{job_id}'] a.job-link")).await?;
    wait_for(&b.client, "figure#timeline svg rect", WAIT).await?;
    let description = wait_for(&b.client, "#description", WAIT)
        .await?
        .text()
        .await?;
    ensure!(
        description == HOSTILE,
        "the description shows as {description:?}"
    );
    ensure!(!b.dialog_open().await?, "the description's script ran");
    b.screenshot("job").await?;
    b.client
        .execute(
            "document.getElementById('timeline').scrollIntoView()",
            vec![],
        )
        .await?;
    b.screenshot("timeline").await?;

    let input = wait_for(&b.client, "form#add-client input[name=client_id]", WAIT).await?;
    input.send_keys("web-frontend").await?;
    click(&b.client, "button#add-client-submit").await?;
    wait_for(
        &b.client,
        "ul#client-ids li[data-client-id='web-frontend']",
        WAIT,
    )
    .await?;
    let clients = s
        .inference(Some(alice))
        .await?
        .list_clients(pb::ListClientsRequest {
            job_id: job_id.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        clients.client_ids.iter().any(|c| c == "web-frontend"),
        "the form's client id is not the job's: {clients:?}"
    );

    click(&b.client, "a#complete").await?;
    click(&b.client, "form#confirm-complete button#complete").await?;
    wait_for(&b.client, "#job[data-status=COMPLETED]", DEPLOY_DEADLINE).await?;
    b.screenshot("completed").await?;
    Ok(())
}

async fn marketplace(s: &Scheduler, b: &Browser) -> Result<()> {
    b.client
        .goto(&format!("http://{}/console/marketplace", s.addr))
        .await?;
    wait_for(&b.client, "table#machines tr[data-machine]", WAIT).await?;
    b.screenshot("marketplace").await?;
    Ok(())
}

/// Alice signs out; bob signs in and sees neither her row nor her job.
async fn other_user(s: &Scheduler, b: &Browser, bob: &str, job_id: &str) -> Result<()> {
    click(&b.client, "form#signout button#signout-submit").await?;
    wait_for(&b.client, "form#signin", WAIT).await?;
    sign_in(b, s, bob).await?;
    let rows = b.client.find_all(Locator::Css("tr[data-job-id]")).await?;
    ensure!(rows.is_empty(), "bob sees {} jobs", rows.len());
    b.screenshot("other-user").await?;
    b.client
        .goto(&format!("http://{}/console/jobs/{job_id}", s.addr))
        .await?;
    ensure!(
        b.client.find(Locator::Css("#job")).await.is_err(),
        "bob sees alice's job:\n{}",
        b.client.source().await?
    );
    Ok(())
}

//! The `aibro` binary against a real scheduler: deploy shows progress and
//! exits 0 once DEPLOYED (non-zero with the traceback if CANCELED), predict,
//! jobs, timeline, clients and complete.

use std::process::Command;

use aibro_tests::{example, output_text, repo, Scheduler};

#[tokio::test]
async fn the_cli_drives_a_deployment_end_to_end() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("carol").await?;
    let echo = example("echo");

    let out = s.cli(
        &token,
        &[
            "deploy",
            "--model-name",
            "echo",
            "--standby",
            "local.small.od",
            "--artifacts",
            echo.to_str().unwrap(),
        ],
    );
    let shown = output_text(&out);
    assert!(out.status.success(), "{shown}");
    for substatus in [
        "REQUESTING_SERVER",
        "CONNECTING_SERVER",
        "GEARING_UP_ENV",
        "DEPLOYING_MODEL",
        "DEPLOYED_MODEL",
    ] {
        assert!(shown.contains(substatus), "{substatus} not shown:\n{shown}");
    }
    // The curl line Deploy prints calls the model as it stands.
    let curl = shown
        .lines()
        .find_map(|l| l.strip_prefix("curl:"))
        .unwrap_or_else(|| panic!("no curl line:\n{shown}"));
    let out = Command::new("sh").args(["-c", curl.trim()]).output()?;
    assert!(out.status.success(), "{curl}: {}", output_text(&out));
    assert!(
        output_text(&out).contains(r#""text": "hi""#),
        "{curl}: {}",
        output_text(&out)
    );

    let out = s.cli(
        &token,
        &[
            "predict",
            "--owner",
            "carol",
            "--model-name",
            "echo",
            "--data",
            r#"{"q": 42}"#,
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("42"));

    let out = s.cli(&token, &["--json", "jobs", "list"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let job_id = jobs[0]["job_id"].as_str().expect("job id").to_string();
    assert_eq!(jobs[0]["status"], "DEPLOYED", "{jobs}");

    let out = s.cli(&token, &["timeline", &job_id]);
    assert!(
        out.status.success() && output_text(&out).contains("GEARING_UP_ENV"),
        "{}",
        output_text(&out)
    );

    let out = s.cli(
        &token,
        &["clients", "add", "--model-name", "echo", "c1", "c1"],
    );
    assert!(
        !out.status.success() && output_text(&out).contains("listed twice"),
        "{}",
        output_text(&out)
    );

    let out = s.cli(&token, &["complete", "--job-id", &job_id]);
    assert!(out.status.success(), "{}", output_text(&out));
    let job = s.get_job(&token, &job_id).await?;
    assert_eq!(
        job.instances[0].substatus(),
        aibro_proto::v1::InstanceSubstatus::Terminated
    );

    // A broken repo: non-zero exit, the traceback shown.
    let broken = repo("def load_model():\n    raise ValueError('no weights here')\n\ndef run(model, data):\n    return data\n");
    let out = s.cli(
        &token,
        &[
            "deploy",
            "--model-name",
            "broken",
            "--standby",
            "local.small.od",
            "--artifacts",
            broken.path().to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("ValueError: no weights here"),
        "{}",
        output_text(&out)
    );

    // aibro fit: live progress, and the outputs unpacked where asked.
    let out_dir = tempfile::tempdir()?;
    let trained = out_dir.path().join("trained");
    let train_repo = example("train-linear");
    let out = s.cli(
        &token,
        &[
            "fit",
            "--artifacts",
            train_repo.to_str().unwrap(),
            "--machine-id",
            "local.small.od",
            "--arg",
            "epochs=4",
            "--output",
            trained.to_str().unwrap(),
        ],
    );
    let shown = output_text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("epoch   4/4") && shown.contains("TRAINING / RETURNING"),
        "{shown}"
    );
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(trained.join("model.json"))?)?;
    assert!(model.get("w").is_some(), "{model}");

    let out = s.cli("secret_wrong", &["jobs", "list"]);
    assert!(
        !out.status.success() && output_text(&out).contains("UNAUTHENTICATED"),
        "{}",
        output_text(&out)
    );
    Ok(())
}

#[tokio::test]
async fn the_cli_shows_the_fleet_and_drives_the_spot_market() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let admin = s.admin_token.clone();
    let out = s.cli(&admin, &["spot", "availability", "local.large", "1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let machines = output_text(&s.cli(&admin, &["machines"]));
    let large = machines
        .lines()
        .find(|l| l.starts_with("local.large"))
        .expect("local.large listed");
    assert!(large.contains("100%"), "{machines}");

    let token = s.user("uma").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let mut request = aibro_tests::deploy_request("big", &digest);
    request.machine_config = Some(aibro_proto::v1::MachineConfig {
        standby: "local.large.od".into(),
        cooling: String::new(),
    });
    let job_id = s.deploy_with(&token, request).await?;
    s.wait_status(&token, &job_id, aibro_proto::v1::JobStatus::Deployed)
        .await?;
    let shown = output_text(&s.cli(&token, &["instances", "--job-id", &job_id]));
    for column in ["MACHINE", "GPU MEMORY", "WORKERS", "NOTE"] {
        assert!(shown.contains(column), "{column} missing:\n{shown}");
    }
    assert!(shown.contains("local.large "), "runs on spot:\n{shown}");

    let inst = s.get_job(&token, &job_id).await?.instances[0]
        .instance_id
        .clone();
    let out = s.cli(&token, &["spot", "interrupt", &inst]);
    assert!(!out.status.success(), "only the admin may interrupt");
    let out = s.cli(
        &admin,
        &["spot", "interrupt", &inst, "--notice-ms", "60000"],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    Ok(())
}

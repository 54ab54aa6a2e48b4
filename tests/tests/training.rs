//! Training jobs end to end: Fit with live progress, the outputs returned
//! byte for byte, machine-id fallback, and failures with the traceback.

use aibro_proto::v1::{self as pb, training_client::TrainingClient, JobStatus, JobSubstatus};
use aibro_tests::{example, substatuses, Scheduler, DEPLOY_DEADLINE};
use tokio_stream::StreamExt;

async fn fit(s: &Scheduler, token: &str, request: pb::FitRequest) -> anyhow::Result<String> {
    Ok(s.training(Some(token))
        .await?
        .fit(request)
        .await?
        .into_inner()
        .job_id)
}

fn fit_request(digest: &str, machines: &[&str]) -> pb::FitRequest {
    pb::FitRequest {
        artifact_digest: digest.into(),
        machine_ids: machines.iter().map(|m| m.to_string()).collect(),
        wait_request_s: 1,
        args: [("epochs".to_string(), "5".to_string())].into(),
        ..Default::default()
    }
}

async fn download(s: &Scheduler, token: &str, job_id: &str) -> anyhow::Result<Vec<u8>> {
    let (ch, b) = s.authed(Some(token)).await?;
    let mut stream = TrainingClient::with_interceptor(ch, b)
        .download_result(pb::DownloadResultRequest {
            job_id: job_id.into(),
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend(chunk?.data);
    }
    Ok(bytes)
}

#[tokio::test]
async fn fit_streams_progress_and_returns_the_outputs() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("erin").await?;
    let digest = s.upload_dir(&token, &example("train-linear")).await?;
    let mut request = fit_request(&digest, &["local.small.od"]);
    request.cool_down_period_s = 60;
    let job_id = fit(&s, &token, request).await?;
    let events = s
        .watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;

    let mut substatuses: Vec<JobSubstatus> = Vec::new();
    for e in &events {
        if substatuses.last() != Some(&e.substatus()) {
            substatuses.push(e.substatus());
        }
    }
    assert_eq!(
        substatuses,
        [
            JobSubstatus::RequestingServer,
            JobSubstatus::ConnectingServer,
            JobSubstatus::GearingUpEnv,
            JobSubstatus::SendingModelAndData,
            JobSubstatus::Training,
            JobSubstatus::Returning,
            JobSubstatus::Completed,
        ]
    );
    let epochs: Vec<u32> = events
        .iter()
        .filter(|e| e.phase == "progress")
        .map(|e| e.epoch)
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4, 5]);
    assert!(events
        .iter()
        .filter(|e| e.phase == "progress")
        .all(|e| e.total_epochs == 5 && e.metrics.contains_key("loss")));
    assert!(
        events
            .iter()
            .any(|e| e.phase == "log" && !e.message.is_empty()),
        "log lines stream back"
    );
    // Progress comes while TRAINING.
    assert!(events
        .iter()
        .filter(|e| e.phase == "progress")
        .all(|e| e.status() == JobStatus::Training));

    // The outputs, byte for byte what train() wrote (the instance is cooling, its disk still there).
    let job = s.get_job(&token, &job_id).await?;
    assert_eq!(job.status(), JobStatus::Completed);
    let inst = &job.instances[0];
    assert_eq!(inst.status(), pb::InstanceStatus::Cooling);
    let bytes = download(&s, &token, &job_id).await?;
    assert_eq!(bytes.len() as u64, job.result_size);
    let out = tempfile::tempdir()?;
    let tar = out.path().join("result.tar.gz");
    std::fs::write(&tar, &bytes)?;
    let unpacked = out.path().join("unpacked");
    aibro_repo::archive::unpack(&tar, &unpacked, &Default::default())?;
    let written = s
        .data_dir
        .join("instances")
        .join(&inst.instance_id)
        .join("jobs")
        .join(&job_id)
        .join("output");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&written)? {
        let entry = entry?;
        names.push(entry.file_name());
        assert_eq!(
            std::fs::read(entry.path())?,
            std::fs::read(unpacked.join(entry.file_name()))?
        );
    }
    assert!(names.iter().any(|n| n == "model.json"), "{names:?}");
    assert_eq!(std::fs::read_dir(&unpacked)?.count(), names.len());
    Ok(())
}

#[tokio::test]
async fn machine_ids_fall_back_in_order_and_all_exhausted_cancels() -> anyhow::Result<()> {
    let catalog = aibro_tests::catalog_with("local.none", "local", 0, 0.5)?;
    let s = Scheduler::start_with(&["--catalog", catalog.path().to_str().unwrap()]).await?;
    let token = s.user("fred").await?;
    let digest = s.upload_dir(&token, &example("train-linear")).await?;

    let job_id = fit(
        &s,
        &token,
        // No capacity, then a spot request that fails (no spot in the harness).
        fit_request(&digest, &["local.none.od", "local.small", "local.small.od"]),
    )
    .await?;
    let events = s
        .watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;
    assert_eq!(events.last().unwrap().status(), JobStatus::Completed);
    let job = s.get_job(&token, &job_id).await?;
    assert_eq!(job.instances.len(), 1);
    assert_eq!(job.instances[0].machine_id, "local.small.od");

    let job_id = fit(
        &s,
        &token,
        fit_request(&digest, &["local.none.od", "local.none"]),
    )
    .await?;
    let events = s
        .watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;
    assert_eq!(events.last().unwrap().status(), JobStatus::Canceled);
    let job = s.get_job(&token, &job_id).await?;
    assert!(job.instances.is_empty());
    for id in ["local.none.od:", "local.none:"] {
        assert!(job.reason.contains(id), "{}", job.reason);
    }
    assert!(job.reason.contains("all 0 are in use"), "{}", job.reason);
    assert!(
        job.reason
            .contains("the spot request for `local.none` was not fulfilled"),
        "{}",
        job.reason
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_train_cancels_with_the_traceback() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("gina").await?;
    let repo = tempfile::tempdir()?;
    std::fs::write(
        repo.path().join("train.py"),
        "def train(output_dir, **args):\n    print('starting')\n    raise ValueError('diverged at epoch 1')\n",
    )?;
    let digest = s.upload_dir(&token, repo.path()).await?;
    let job_id = fit(&s, &token, fit_request(&digest, &["local.small.od"])).await?;
    let events = s
        .watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;
    assert_eq!(events.last().unwrap().status(), JobStatus::Canceled);
    let job = s.get_job(&token, &job_id).await?;
    assert!(
        job.reason.contains("Traceback") && job.reason.contains("ValueError: diverged at epoch 1"),
        "{}",
        job.reason
    );
    assert_eq!(
        job.instances[0].substatus(),
        pb::InstanceSubstatus::Terminated
    );
    assert!(!s
        .data_dir
        .join("instances")
        .join(&job.instances[0].instance_id)
        .exists());
    let err = download(&s, &token, &job_id).await.unwrap_err();
    assert!(err.to_string().contains("has no results"), "{err}");

    // Bad requests.
    let (ch, b) = s.authed(Some(&token)).await?;
    let mut training = TrainingClient::with_interceptor(ch, b);
    let err = training.fit(fit_request(&digest, &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let echo = s.upload_dir(&token, &example("echo")).await?;
    let err = training
        .fit(fit_request(&echo, &["local.small.od"]))
        .await
        .unwrap_err();
    assert!(err.message().contains("no train.py"), "{err:?}");
    let mut bad_arg = fit_request(&digest, &["local.small.od"]);
    bad_arg.args.insert("not an identifier".into(), "1".into());
    let err = training.fit(bad_arg).await.unwrap_err();
    assert!(err.message().contains("not a Python identifier"), "{err:?}");
    Ok(())
}

/// A repo with a non-empty requirements.txt, so a cold start builds a virtualenv.
fn train_repo_with_requirements() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let src = example("train-linear");
    std::fs::create_dir(dir.path().join("data"))?;
    std::fs::copy(src.join("train.py"), dir.path().join("train.py"))?;
    std::fs::copy(
        src.join("data/points.csv"),
        dir.path().join("data/points.csv"),
    )?;
    std::fs::write(dir.path().join("requirements.txt"), "--no-index\n")?;
    Ok(dir)
}

#[tokio::test]
async fn a_cooling_trainer_is_reused_by_the_next_fit_then_terminated() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("hana").await?;
    let repo = train_repo_with_requirements()?;
    let digest = s.upload_dir(&token, repo.path()).await?;

    let mut first = fit_request(&digest, &["local.small.od"]);
    first.cool_down_period_s = 120;
    let first_id = fit(&s, &token, first).await?;
    let events = s
        .watch_until(&token, &first_id, DEPLOY_DEADLINE, |e| e.last)
        .await?;
    assert!(substatuses(&events).contains(&JobSubstatus::GearingUpEnv));
    let instance_id = s.get_job(&token, &first_id).await?.instances[0]
        .instance_id
        .clone();

    let mut second = fit_request(&digest, &["local.small.od"]);
    second.cool_down_period_s = 1;
    let second_id = fit(&s, &token, second).await?;
    let events = s
        .watch_until(&token, &second_id, DEPLOY_DEADLINE, |e| {
            e.status() == JobStatus::Completed
        })
        .await?;
    assert_eq!(
        substatuses(&events),
        [
            JobSubstatus::RequestingServer,
            JobSubstatus::ConnectingServer,
            JobSubstatus::SendingModelAndData,
            JobSubstatus::Training,
            JobSubstatus::Returning,
            JobSubstatus::Completed,
        ],
        "no gear-up the second time"
    );
    let marks: Vec<&str> = events.iter().map(|e| e.phase.as_str()).collect();
    assert!(
        marks.contains(&"instance reused") && marks.contains(&"env reused"),
        "{marks:?}"
    );
    assert!(
        !marks.contains(&"instance requested") && !marks.contains(&"agent connected"),
        "{marks:?}"
    );
    let job = s.get_job(&token, &second_id).await?;
    assert_eq!(
        job.instances[0].instance_id, instance_id,
        "the same instance"
    );

    // The first job keeps what the instance ran for it, and says where it went.
    let first = s.get_job(&token, &first_id).await?;
    assert!(first.instances.is_empty());
    assert!(first.cost_usd > 0.0);
    let timeline = s.timeline(&token, &first_id).await?;
    assert!(timeline
        .events
        .iter()
        .any(|e| e.phase == "instance handed over" && e.message.contains(&second_id)));

    // After the second job's cooling period the instance is terminated (the
    // watch ended when the job did, so poll with a deadline).
    let deadline = std::time::Instant::now() + DEPLOY_DEADLINE;
    loop {
        let job = s.get_job(&token, &second_id).await?;
        if job.instances[0].substatus() == pb::InstanceSubstatus::Terminated {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {:?}",
            job.instances[0]
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!s.data_dir.join("instances").join(&instance_id).exists());
    Ok(())
}

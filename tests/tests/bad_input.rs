//! Every bad request gets a gRPC status with a message that says what to fix,
//! and leaves the store as it was.

use std::io::Write;

use aibro_proto::v1::{self as pb, JobStatus};
use aibro_tests::{deploy_request, example, repo, Scheduler};
use tonic::Code;

fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, text: &str) {
    let err = r.expect_err("the request should fail");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(
        err.message().contains(text),
        "`{}` lacks `{text}`",
        err.message()
    );
}

async fn jobs_of(s: &Scheduler, token: &str) -> Vec<pb::Job> {
    s.jobs(Some(token))
        .await
        .unwrap()
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
}

/// A tar.gz with one entry whose name, type and link target are written raw,
/// as a hostile client would.
fn hostile_tar(name: &str, kind: tar::EntryType, link: &str) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    let bytes = header.as_old_mut();
    bytes.name[..name.len()].copy_from_slice(name.as_bytes());
    bytes.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    let body: &[u8] = if kind == tar::EntryType::Regular {
        b"x = 1\n"
    } else {
        b""
    };
    header.set_size(body.len() as u64);
    header.set_cksum();
    let mut raw = Vec::new();
    raw.extend_from_slice(header.as_bytes());
    raw.extend_from_slice(body);
    raw.resize(raw.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn deploy_inputs_are_checked_and_nothing_is_written() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let echo = s.upload_dir(&alice, &example("echo")).await?;
    let mut inference = s.inference(Some(&alice)).await?;

    let with_machines = |standby: &str, cooling: &str| {
        let mut r = deploy_request("m", &echo);
        r.machine_config = Some(pb::MachineConfig {
            standby: standby.into(),
            cooling: cooling.into(),
        });
        r
    };
    assert_status(
        inference.deploy(with_machines("p3.nope.od", "")).await,
        Code::InvalidArgument,
        "unknown machine id `p3.nope.od`",
    );
    assert_status(
        inference.deploy(with_machines("local.small", "")).await,
        Code::InvalidArgument,
        "`local.small` is a spot machine id",
    );
    assert_status(
        inference.deploy(with_machines("", "local.large.od")).await,
        Code::InvalidArgument,
        "a standby instance is mandatory",
    );
    assert_status(
        inference.deploy(with_machines("g4dn.4xlarge.od", "")).await,
        Code::FailedPrecondition,
        "provider `ec2`",
    );
    let mut dup = deploy_request("m", &echo);
    dup.client_ids = vec!["a".into(), "b".into(), "a".into()];
    assert_status(
        inference.deploy(dup).await,
        Code::InvalidArgument,
        "client id `a` is listed twice",
    );
    for (batching, text) in [
        (
            (1025, None),
            "batching.max_batch_size 1025 is over the limit of 1024",
        ),
        (
            (8, Some(10_001)),
            "batching.max_wait_ms 10001 is over the limit of 10000 ms",
        ),
    ] {
        let mut r = deploy_request("m", &echo);
        r.batching = Some(pb::Batching {
            max_batch_size: batching.0,
            max_wait_ms: batching.1,
        });
        assert_status(inference.deploy(r).await, Code::InvalidArgument, text);
    }
    assert_status(
        inference.deploy(deploy_request("bad name!", &echo)).await,
        Code::InvalidArgument,
        "model_name",
    );
    assert_status(
        inference
            .deploy(deploy_request("m", &format!("sha256:{}", "0".repeat(64))))
            .await,
        Code::NotFound,
        "upload it with Artifacts.Upload first",
    );
    let no_predict = tempfile::tempdir()?;
    std::fs::write(no_predict.path().join("model.py"), "x = 1")?;
    let digest = s.upload_dir(&alice, no_predict.path()).await?;
    assert_status(
        inference.deploy(deploy_request("m", &digest)).await,
        Code::InvalidArgument,
        "has no predict.py",
    );
    // Another user's artifact is not ours to deploy.
    let bob = s.user("bob").await?;
    assert_status(
        s.inference(Some(&bob))
            .await?
            .deploy(deploy_request("m", &echo))
            .await,
        Code::NotFound,
        "not found",
    );
    assert!(
        jobs_of(&s, &alice).await.is_empty(),
        "a refused deploy left a job"
    );

    // Duplicate model name among active jobs.
    let first = s.deploy(&alice, "m", &echo).await?;
    assert_status(
        inference.deploy(deploy_request("m", &echo)).await,
        Code::AlreadyExists,
        "model name `m` is already used",
    );
    assert_eq!(jobs_of(&s, &alice).await.len(), 1);
    // Bob may use the same name.
    let bob_echo = s.upload_dir(&bob, &example("echo")).await?;
    s.deploy(&bob, "m", &bob_echo).await?;
    s.wait_status(&alice, &first, JobStatus::Deployed).await?;
    Ok(())
}

#[tokio::test]
async fn tokens_users_and_client_ids_are_enforced() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let bob = s.user("bob").await?;
    let echo = s.upload_dir(&alice, &example("echo")).await?;
    let mut request = deploy_request("private", &echo);
    request.client_ids = vec!["c1".into(), "c2".into()];
    let job_id = s
        .inference(Some(&alice))
        .await?
        .deploy(request)
        .await?
        .into_inner()
        .job_id;
    s.wait_status(&alice, &job_id, JobStatus::Deployed).await?;

    // Missing and invalid tokens.
    assert_status(
        s.jobs(None)
            .await?
            .list_jobs(pb::ListJobsRequest::default())
            .await,
        Code::Unauthenticated,
        "missing access token",
    );
    assert_status(
        s.jobs(Some("secret_0000"))
            .await?
            .list_jobs(pb::ListJobsRequest::default())
            .await,
        Code::Unauthenticated,
        "invalid access token",
    );
    assert_status(
        s.artifacts(Some("nope"))
            .await?
            .upload(tokio_stream::iter(vec![pb::Chunk { data: vec![1] }]))
            .await,
        Code::Unauthenticated,
        "invalid access token",
    );
    // Only the admin creates tokens.
    let (ch, b) = s.authed(Some(&alice)).await?;
    assert_status(
        pb::admin_client::AdminClient::with_interceptor(ch, b)
            .create_token(pb::CreateTokenRequest { user: "eve".into() })
            .await,
        Code::PermissionDenied,
        "only the admin",
    );

    // Bob cannot see or touch Alice's job.
    let mut jobs = s.jobs(Some(&bob)).await?;
    let mut inference = s.inference(Some(&bob)).await?;
    let job = || pb::GetJobRequest {
        job_id: job_id.clone(),
    };
    assert_status(jobs.get_job(job()).await, Code::NotFound, "not found");
    assert_status(
        jobs.get_timeline(pb::GetTimelineRequest {
            job_id: job_id.clone(),
        })
        .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        jobs.watch_job(pb::WatchJobRequest {
            job_id: job_id.clone(),
        })
        .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        jobs.list_instances(pb::ListInstancesRequest {
            job_id: job_id.clone(),
        })
        .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        inference
            .complete(pb::CompleteRequest {
                job_id: job_id.clone(),
                model_name: String::new(),
            })
            .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        inference
            .complete(pb::CompleteRequest {
                job_id: String::new(),
                model_name: "private".into(),
            })
            .await,
        Code::NotFound,
        "no active job",
    );
    assert_status(
        inference
            .update_clients(pb::UpdateClientsRequest {
                job_id: job_id.clone(),
                be_public: true,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "not found",
    );
    assert!(jobs_of(&s, &bob).await.is_empty());

    // Predict: client ids.
    assert_status(
        s.predict("alice", "public", "private", "{}").await,
        Code::PermissionDenied,
        "client id `public` may not call",
    );
    assert_status(
        s.predict("alice", "c3", "private", "{}").await,
        Code::PermissionDenied,
        "`c3`",
    );
    s.predict("alice", "c2", "private", "{}").await?;
    assert_status(
        s.predict("bob", "c1", "private", "{}").await,
        Code::NotFound,
        "no deployed model",
    );

    // UpdateClients: a duplicate cancels the whole update.
    let mut mine = s.inference(Some(&alice)).await?;
    let update = |add: &[&str], remove: &[&str], be_public| pb::UpdateClientsRequest {
        job_id: String::new(),
        model_name: "private".into(),
        add: add.iter().map(|c| c.to_string()).collect(),
        remove: remove.iter().map(|c| c.to_string()).collect(),
        be_public,
    };
    assert_status(
        mine.update_clients(update(&["c3", "c1"], &[], false)).await,
        Code::InvalidArgument,
        "client id `c1` is already listed",
    );
    assert_status(
        mine.update_clients(update(&["c4", "c4"], &[], false)).await,
        Code::InvalidArgument,
        "listed twice",
    );
    let list = || pb::ListClientsRequest {
        job_id: job_id.clone(),
        model_name: String::new(),
    };
    assert_eq!(
        mine.list_clients(list()).await?.into_inner().client_ids,
        ["c1", "c2"]
    );
    let r = mine
        .update_clients(update(&["c3"], &["c1", "unknown"], false))
        .await?
        .into_inner();
    assert_eq!(r.client_ids, ["c2", "c3"]);
    s.predict("alice", "c3", "private", "{}").await?;
    assert_status(
        s.predict("alice", "c1", "private", "{}").await,
        Code::PermissionDenied,
        "`c1`",
    );
    mine.update_clients(update(&[], &[], true)).await?;
    s.predict("alice", "public", "private", "{}").await?;
    Ok(())
}

#[tokio::test]
async fn broken_python_cancels_with_the_traceback() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let syntax = repo("def load_model(:\n    pass\n");
    let failing = repo("def load_model():\n    raise RuntimeError('weights are missing')\n\ndef run(model, data):\n    return data\n");
    for (name, dir, expected) in [
        ("syntax", &syntax, "SyntaxError"),
        ("failing", &failing, "RuntimeError: weights are missing"),
    ] {
        let digest = s.upload_dir(&alice, dir.path()).await?;
        let job_id = s.deploy(&alice, name, &digest).await?;
        let events = s
            .watch_until(&alice, &job_id, aibro_tests::DEPLOY_DEADLINE, |e| e.last)
            .await?;
        assert_eq!(events.last().unwrap().status(), JobStatus::Canceled);
        let job = s.get_job(&alice, &job_id).await?;
        assert!(
            job.reason.contains("Traceback") && job.reason.contains(expected),
            "{}",
            job.reason
        );
        assert_eq!(
            job.instances[0].substatus(),
            pb::InstanceSubstatus::Terminated
        );
        assert_status(
            s.predict("alice", "public", name, "{}").await,
            Code::NotFound,
            "no deployed model",
        );
    }

    // A dry run reports the same, from a short-lived instance of its own job
    // that serves nothing and takes no model name.
    let digest = s.upload_dir(&alice, failing.path()).await?;
    let mut request = deploy_request("dry", &digest);
    request.dryrun = true;
    let dry = s
        .inference(Some(&alice))
        .await?
        .deploy(request)
        .await?
        .into_inner();
    assert!(dry.job_id.is_empty());
    let result = dry.dryrun.expect("dry run result");
    assert!(
        !result.ok && result.traceback.contains("weights are missing"),
        "{result:?}"
    );
    let digest = s.upload_dir(&alice, &example("echo")).await?;
    let mut request = deploy_request("dry", &digest);
    request.dryrun = true;
    let result = s
        .inference(Some(&alice))
        .await?
        .deploy(request)
        .await?
        .into_inner()
        .dryrun
        .unwrap();
    assert!(result.ok, "{result:?}");
    let out: serde_json::Value = serde_json::from_slice(&result.output)?;
    assert!(out.get("echo").is_some(), "{out}");
    let jobs = jobs_of(&s, &alice).await;
    assert_eq!(jobs.len(), 4);
    for dry in jobs.iter().filter(|j| j.dryrun) {
        assert_eq!(dry.status(), pb::JobStatus::Completed, "{dry:?}");
        s.wait_instances(
            &alice,
            &dry.job_id,
            "the dry run's instance closed",
            |insts| insts.len() == 1 && insts[0].substatus() == pb::InstanceSubstatus::Terminated,
        )
        .await?;
    }
    assert_status(
        s.predict("alice", "public", "dry", "{}").await,
        Code::NotFound,
        "no deployed model",
    );

    // ListJobs a page at a time: each job once; a page token is only good
    // for the caller it was handed to.
    let server = &s;
    let list = move |token: String, page_token: String| async move {
        server
            .jobs(Some(&token))
            .await
            .unwrap()
            .list_jobs(pb::ListJobsRequest {
                page_size: 1,
                page_token,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    };
    let mut pages = vec![list(alice.clone(), String::new()).await?];
    while let Some(token) = pages.last().map(|p| p.next_page_token.clone()) {
        if token.is_empty() {
            break;
        }
        pages.push(list(alice.clone(), token).await?);
    }
    let ids: Vec<_> = pages
        .iter()
        .flat_map(|p| &p.jobs)
        .map(|j| &j.job_id)
        .collect();
    assert_eq!(ids.len(), 4, "one job a page");
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        4
    );
    let first = &pages[0];
    let bob = s.user("bob").await?;
    assert_status(
        list(bob, first.next_page_token.clone()).await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        list(alice, "nonsense".into()).await,
        Code::InvalidArgument,
        "next_page_token",
    );
    Ok(())
}

#[tokio::test]
async fn hostile_archives_and_oversize_inputs_are_refused() -> anyhow::Result<()> {
    let s = Scheduler::start_with(&[
        "--max-payload-bytes",
        "1024",
        "--max-artifact-bytes",
        "100000",
    ])
    .await?;
    let alice = s.user("alice").await?;
    for (tar, expected) in [
        (
            hostile_tar("../evil.py", tar::EntryType::Regular, ""),
            "escapes the repo root",
        ),
        (
            hostile_tar("/etc/evil.py", tar::EntryType::Regular, ""),
            "absolute path",
        ),
        (
            hostile_tar("data", tar::EntryType::Symlink, "../../../etc"),
            "outside the repo root",
        ),
        (
            hostile_tar("link", tar::EntryType::Symlink, "/etc/passwd"),
            "outside the repo root",
        ),
    ] {
        assert_status(
            s.upload_bytes(&alice, tar).await.map_err(to_status),
            Code::InvalidArgument,
            expected,
        );
    }
    assert_status(
        s.upload_bytes(&alice, vec![7; 200_000])
            .await
            .map_err(to_status),
        Code::ResourceExhausted,
        "100000-byte limit",
    );
    // Nothing of the refused uploads was kept.
    let kept = std::fs::read_dir(s.data_dir.join("blobs/sha256"))?.count();
    assert_eq!(kept, 0);
    let tmp = std::fs::read_dir(s.data_dir.join("blobs/tmp"))?.count();
    assert_eq!(tmp, 0);

    let echo = s.upload_dir(&alice, &example("echo")).await?;
    let job_id = s.deploy(&alice, "echo", &echo).await?;
    s.wait_status(&alice, &job_id, JobStatus::Deployed).await?;
    let big = format!("\"{}\"", "x".repeat(2000));
    assert_status(
        s.predict("alice", "public", "echo", &big).await,
        Code::ResourceExhausted,
        "limit is 1024 bytes",
    );
    s.predict("alice", "public", "echo", "\"small\"").await?;
    Ok(())
}

fn to_status(e: anyhow::Error) -> tonic::Status {
    match e.downcast::<tonic::Status>() {
        Ok(status) => status,
        Err(e) => tonic::Status::unknown(e.to_string()),
    }
}

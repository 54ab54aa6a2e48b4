//! Per-user isolation on every RPC: another user's job is reported as not
//! found (so ids do not leak), never changed, and never shown in lists; a
//! missing or bad access token is UNAUTHENTICATED everywhere except Predict
//! (authorised by client id); the agents' gateway wants an agent's credential.
//!
//! The RPCs are listed by name and checked against proto/aibro/v1/*.proto so
//! a new one cannot be forgotten. Size limits on Predict payloads and
//! artifact uploads just above the limit are in bad_input.rs
//! (`hostile_archives_and_oversize_inputs_are_refused`); here: requests far
//! above any limit, long ids (their errors are cut to fit a header), and a client deadline.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use aibro_proto::v1::{
    self as pb, admin_client::AdminClient, agent_gateway_client::AgentGatewayClient,
    artifacts_client::ArtifactsClient, inference_client::InferenceClient, jobs_client::JobsClient,
    marketplace_client::MarketplaceClient, training_client::TrainingClient, JobStatus,
};
use aibro_tests::{deploy_request, example, repo, Authed, Bearer, Scheduler, DEPLOY_DEADLINE};
use tonic::{Code, Response, Status, Streaming};

/// Every RPC users call on the scheduler (services Artifacts, Inference,
/// Training, Jobs, Marketplace, Admin).
const USER_RPCS: [&str; 17] = [
    "Artifacts.Upload",
    "Inference.Deploy",
    "Inference.Complete",
    "Inference.UpdateClients",
    "Inference.ListClients",
    "Inference.Predict",
    "Training.Fit",
    "Training.DownloadResult",
    "Jobs.GetJob",
    "Jobs.ListJobs",
    "Jobs.WatchJob",
    "Jobs.GetTimeline",
    "Jobs.ListInstances",
    "Marketplace.AvailableMachines",
    "Admin.CreateToken",
    "Admin.InterruptInstance",
    "Admin.SetSpotAvailability",
];

/// What agents call on the scheduler, with their credential only.
const GATEWAY_RPCS: [&str; 4] = [
    "AgentGateway.Register",
    "AgentGateway.Report",
    "AgentGateway.FetchArtifact",
    "AgentGateway.UploadResult",
];

/// `Service.Method` for every rpc in proto/aibro/v1/*.proto, except the
/// `Agent` service (agents serve it, not the scheduler).
fn rpcs_in_protos() -> BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/aibro/v1");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("proto dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "proto") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("proto file");
        let mut service = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().expect("rpc name").trim();
                let service = service.as_deref().expect("rpc outside a service");
                if service != "Agent" {
                    out.insert(format!("{service}.{method}"));
                }
            }
        }
    }
    out
}

#[test]
fn every_scheduler_rpc_in_the_protos_is_covered() {
    let covered: BTreeSet<String> = USER_RPCS
        .iter()
        .chain(&GATEWAY_RPCS)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        rpcs_in_protos(),
        covered,
        "an rpc was added or removed: update USER_RPCS / GATEWAY_RPCS and `call`"
    );
}

/// One client per service on one connection, with the given `authorization`
/// metadata value (None: no metadata at all).
struct Clients {
    artifacts: ArtifactsClient<Authed>,
    inference: InferenceClient<Authed>,
    training: TrainingClient<Authed>,
    jobs: JobsClient<Authed>,
    marketplace: MarketplaceClient<Authed>,
    admin: AdminClient<Authed>,
    gateway: AgentGatewayClient<Authed>,
}

async fn clients(s: &Scheduler, authorization: Option<&str>) -> Clients {
    let ch = s.channel().await.expect("connect");
    let b = Bearer(authorization.map(|v| v.parse().expect("ascii metadata")));
    Clients {
        artifacts: ArtifactsClient::with_interceptor(ch.clone(), b.clone()),
        inference: InferenceClient::with_interceptor(ch.clone(), b.clone()),
        training: TrainingClient::with_interceptor(ch.clone(), b.clone()),
        jobs: JobsClient::with_interceptor(ch.clone(), b.clone()),
        marketplace: MarketplaceClient::with_interceptor(ch.clone(), b.clone()),
        admin: AdminClient::with_interceptor(ch.clone(), b.clone()),
        gateway: AgentGatewayClient::with_interceptor(ch, b),
    }
}

async fn user_clients(s: &Scheduler, token: &str) -> Clients {
    clients(s, Some(&format!("Bearer {token}"))).await
}

/// Alice's things that Bob goes after.
#[derive(Debug, Clone)]
struct Target {
    owner: String,
    model_name: String,
    description: String,
    infer_job: String,
    train_job: String,
    echo_digest: String,
    train_digest: String,
    result_digest: String,
    instance_ids: Vec<String>,
}

impl Target {
    /// Everything of Alice's that no other user may learn.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![
            self.owner.clone(),
            self.model_name.clone(),
            self.description.clone(),
            self.infer_job.clone(),
            self.train_job.clone(),
            self.echo_digest.clone(),
            self.train_digest.clone(),
        ];
        if !self.result_digest.is_empty() {
            s.push(self.result_digest.clone());
        }
        s.extend(self.instance_ids.iter().cloned());
        s
    }
}

/// One call: a label, the target's values the request carried (the answer
/// may repeat those), and the answer (Ok: the response, debug-printed).
struct Outcome {
    label: String,
    sent: Vec<String>,
    result: Result<String, Status>,
}

fn unary<T: Debug>(r: Result<Response<T>, Status>) -> Result<String, Status> {
    r.map(|r| format!("{:?}", r.into_inner()))
}

/// A stream's first message (a leak shows there), without waiting for the end.
async fn streamed<T: Debug>(r: Result<Response<Streaming<T>>, Status>) -> Result<String, Status> {
    let mut stream = r?.into_inner();
    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Ok(m) => Ok(format!("{:?}", m?)),
        Err(_) => Ok("the stream opened; nothing within 5 s".into()),
    }
}

/// Calls `rpc` with the target's ids, once per way of naming them.
async fn call(c: &mut Clients, rpc: &str, t: &Target, own_repo: &[u8]) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut push = |label: &str, sent: &[&String], result| {
        out.push(Outcome {
            label: format!("{rpc} {label}"),
            sent: sent.iter().map(|s| s.to_string()).collect(),
            result,
        })
    };
    match rpc {
        "Artifacts.Upload" => {
            let chunks = vec![pb::Chunk {
                data: own_repo.to_vec(),
            }];
            push(
                "own repo",
                &[],
                unary(c.artifacts.upload(tokio_stream::iter(chunks)).await),
            );
        }
        "Inference.Deploy" => {
            push(
                "with the target's digest",
                &[&t.model_name, &t.echo_digest],
                unary(
                    c.inference
                        .deploy(deploy_request(&t.model_name, &t.echo_digest))
                        .await,
                ),
            );
            let mut dry = deploy_request("dry", &t.echo_digest);
            dry.dryrun = true;
            push(
                "dry run with the target's digest",
                &[&t.echo_digest],
                unary(c.inference.deploy(dry).await),
            );
        }
        "Inference.Complete" => {
            for (label, job_id, model_name) in [
                ("by job id", &t.infer_job, &String::new()),
                ("by training job id", &t.train_job, &String::new()),
                ("by model name", &String::new(), &t.model_name),
                (
                    "by job id and another name",
                    &t.infer_job,
                    &"other".to_string(),
                ),
            ] {
                push(
                    label,
                    &[job_id, model_name],
                    unary(
                        c.inference
                            .complete(pb::CompleteRequest {
                                job_id: job_id.clone(),
                                model_name: model_name.clone(),
                            })
                            .await,
                    ),
                );
            }
        }
        "Inference.UpdateClients" => {
            for (label, job_id, model_name, add, be_public) in [
                (
                    "by job id",
                    &t.infer_job,
                    &String::new(),
                    vec!["bob"],
                    false,
                ),
                ("by model name", &String::new(), &t.model_name, vec![], true),
                (
                    "by job id, duplicate add",
                    &t.infer_job,
                    &String::new(),
                    vec!["x", "x"],
                    false,
                ),
                (
                    "by training job id",
                    &t.train_job,
                    &String::new(),
                    vec![],
                    true,
                ),
            ] {
                let request = pb::UpdateClientsRequest {
                    job_id: job_id.clone(),
                    model_name: model_name.clone(),
                    add: add.into_iter().map(String::from).collect(),
                    remove: vec![],
                    be_public,
                };
                push(
                    label,
                    &[job_id, model_name],
                    unary(c.inference.update_clients(request).await),
                );
            }
        }
        "Inference.ListClients" => {
            for (label, job_id, model_name) in [
                ("by job id", &t.infer_job, &String::new()),
                ("by model name", &String::new(), &t.model_name),
            ] {
                let request = pb::ListClientsRequest {
                    job_id: job_id.clone(),
                    model_name: model_name.clone(),
                };
                push(
                    label,
                    &[job_id, model_name],
                    unary(c.inference.list_clients(request).await),
                );
            }
        }
        "Inference.Predict" => {
            let request = pb::PredictRequest {
                owner: t.owner.clone(),
                client_id: "public".into(),
                model_name: t.model_name.clone(),
                payload: b"{\"x\": 1}".to_vec(),
                content_type: "application/json".into(),
            };
            // The answer names the instance that served it (part of the
            // contract, used to see standby and cooling at work).
            let mut sent = vec![&t.owner, &t.model_name];
            sent.extend(&t.instance_ids);
            push(
                "public client",
                &sent,
                unary(c.inference.predict(request).await),
            );
        }
        "Training.Fit" => {
            let request = pb::FitRequest {
                artifact_digest: t.train_digest.clone(),
                machine_ids: vec!["local.small.od".into()],
                wait_request_s: 1,
                ..Default::default()
            };
            push(
                "with the target's digest",
                &[&t.train_digest],
                unary(c.training.fit(request).await),
            );
        }
        "Training.DownloadResult" => {
            for (label, job_id) in [
                ("training job", &t.train_job),
                ("inference job", &t.infer_job),
            ] {
                let request = pb::DownloadResultRequest {
                    job_id: job_id.clone(),
                };
                push(
                    label,
                    &[job_id],
                    streamed(c.training.download_result(request).await).await,
                );
            }
        }
        "Jobs.GetJob" => {
            for job_id in [&t.infer_job, &t.train_job] {
                let request = pb::GetJobRequest {
                    job_id: job_id.clone(),
                };
                push(job_id, &[job_id], unary(c.jobs.get_job(request).await));
            }
        }
        "Jobs.ListJobs" => {
            for active_only in [false, true] {
                push(
                    &format!("active_only={active_only}"),
                    &[],
                    unary(
                        c.jobs
                            .list_jobs(pb::ListJobsRequest {
                                active_only,
                                ..Default::default()
                            })
                            .await,
                    ),
                );
            }
        }
        "Jobs.WatchJob" => {
            for job_id in [&t.infer_job, &t.train_job] {
                let request = pb::WatchJobRequest {
                    job_id: job_id.clone(),
                };
                push(
                    job_id,
                    &[job_id],
                    streamed(c.jobs.watch_job(request).await).await,
                );
            }
        }
        "Jobs.GetTimeline" => {
            for job_id in [&t.infer_job, &t.train_job] {
                let request = pb::GetTimelineRequest {
                    job_id: job_id.clone(),
                };
                push(job_id, &[job_id], unary(c.jobs.get_timeline(request).await));
            }
        }
        "Jobs.ListInstances" => {
            for job_id in [&t.infer_job, &t.train_job, &String::new()] {
                let request = pb::ListInstancesRequest {
                    job_id: job_id.clone(),
                };
                push(
                    if job_id.is_empty() { "all" } else { job_id },
                    &[job_id],
                    unary(c.jobs.list_instances(request).await),
                );
            }
        }
        "Marketplace.AvailableMachines" => {
            push(
                "",
                &[],
                unary(
                    c.marketplace
                        .available_machines(pb::AvailableMachinesRequest {})
                        .await,
                ),
            );
        }
        "Admin.CreateToken" => {
            for user in [&t.owner, &"mallory".to_string()] {
                let request = pb::CreateTokenRequest { user: user.clone() };
                push(user, &[user], unary(c.admin.create_token(request).await));
            }
        }
        "Admin.InterruptInstance" => {
            for id in &t.instance_ids {
                let request = pb::InterruptInstanceRequest {
                    instance_id: id.clone(),
                    notice_ms: 1,
                };
                push(id, &[id], unary(c.admin.interrupt_instance(request).await));
            }
        }
        "Admin.SetSpotAvailability" => {
            let request = pb::SetSpotAvailabilityRequest {
                machine_type: "local.small".into(),
                availability: 1.0,
            };
            push(
                "local.small",
                &[],
                unary(c.admin.set_spot_availability(request).await),
            );
        }
        "AgentGateway.Register" => {
            let request = pb::RegisterRequest {
                instance_id: t.instance_ids[0].clone(),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            };
            push(
                "as the target's instance",
                &[&t.instance_ids[0]],
                unary(c.gateway.register(request).await),
            );
        }
        "AgentGateway.Report" => {
            let phase = pb::PhaseReport {
                job_id: t.infer_job.clone(),
                phase: pb::AgentPhase::Failed as i32,
                traceback: "forged".into(),
                ..Default::default()
            };
            for (label, body) in [
                ("phase FAILED", pb::report_request::Body::Phase(phase)),
                (
                    "heartbeat",
                    pb::report_request::Body::Heartbeat(pb::Heartbeat::default()),
                ),
            ] {
                let request = pb::ReportRequest {
                    instance_id: t.instance_ids[0].clone(),
                    agent_id: String::new(),
                    body: Some(body),
                };
                push(
                    label,
                    &[&t.instance_ids[0], &t.infer_job],
                    unary(c.gateway.report(request).await),
                );
            }
        }
        "AgentGateway.FetchArtifact" => {
            let request = pb::FetchArtifactRequest {
                digest: t.echo_digest.clone(),
            };
            push(
                "the target's digest",
                &[&t.echo_digest],
                streamed(c.gateway.fetch_artifact(request).await).await,
            );
        }
        "AgentGateway.UploadResult" => {
            let chunks = vec![pb::ResultChunk {
                job_id: t.train_job.clone(),
                data: own_repo.to_vec(),
            }];
            push(
                "for the target's training job",
                &[&t.train_job],
                unary(c.gateway.upload_result(tokio_stream::iter(chunks)).await),
            );
        }
        other => panic!("`call` does not know {other}"),
    }
    out
}

/// The parts of a job that another user's calls must leave as they were
/// (live fields such as heartbeats and costs left out).
fn snapshot(job: &pb::Job) -> impl PartialEq + Debug {
    (
        job.status(),
        job.substatus(),
        job.reason.clone(),
        job.client_ids.clone(),
        job.model_name.clone(),
        job.result_digest.clone(),
        job.instances
            .iter()
            .map(|i| (i.instance_id.clone(), i.status(), i.substatus()))
            .collect::<Vec<_>>(),
    )
}

fn packed(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    aibro_repo::archive::pack_dir(dir, &mut bytes).expect("pack");
    bytes
}

/// Alice's public echo model, deployed (and, with `fit`, a completed
/// training job); its instances are settled when this returns.
async fn alice_setup(s: &Scheduler, fit: bool) -> anyhow::Result<(String, Target)> {
    let alice = s.user("alice").await?;
    let echo_digest = s.upload_dir(&alice, &example("echo")).await?;
    let train_digest = s.upload_dir(&alice, &example("train-linear")).await?;
    let mut request = deploy_request("vision-v7", &echo_digest);
    request.description = "top-secret-notes".into();
    let infer_job = s.deploy_with(&alice, request).await?;
    let train_job = if fit {
        let (ch, b) = s.authed(Some(&alice)).await?;
        let job_id = TrainingClient::with_interceptor(ch, b)
            .fit(pb::FitRequest {
                artifact_digest: train_digest.clone(),
                machine_ids: vec!["local.small.od".into()],
                wait_request_s: 5,
                description: "top-secret-notes".into(),
                args: [("epochs".to_string(), "2".to_string())].into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job_id;
        let events = s
            .watch_until(&alice, &job_id, DEPLOY_DEADLINE, |e| e.last)
            .await?;
        let job = s.get_job(&alice, &job_id).await?;
        assert_eq!(
            events.last().unwrap().status(),
            JobStatus::Completed,
            "{}",
            job.reason
        );
        job_id
    } else {
        // Not a job of anyone's: what a made-up id gets.
        "job-0000000000000000000000000000000".into()
    };
    s.wait_status(&alice, &infer_job, JobStatus::Deployed)
        .await?;
    let mut instance_ids = Vec::new();
    let mut result_digest = String::new();
    for job_id in [&infer_job, &train_job] {
        if let Ok(job) = s.get_job(&alice, job_id).await {
            instance_ids.extend(job.instances.iter().map(|i| i.instance_id.clone()));
            if !job.result_digest.is_empty() {
                result_digest = job.result_digest;
            }
        }
    }
    let target = Target {
        owner: "alice".into(),
        model_name: "vision-v7".into(),
        description: "top-secret-notes".into(),
        infer_job,
        train_job,
        echo_digest,
        train_digest,
        result_digest,
        instance_ids,
    };
    Ok((alice, target))
}

#[tokio::test]
async fn another_users_jobs_are_not_found_on_every_rpc_and_stay_unchanged() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let (alice, t) = alice_setup(&s, true).await?;
    assert!(!t.result_digest.is_empty(), "the fit returned a result");
    let jobs_of = |token: String| {
        let s = &s;
        async move {
            s.jobs(Some(&token))
                .await?
                .list_jobs(pb::ListJobsRequest::default())
                .await
                .map(|r| r.into_inner().jobs)
                .map_err(anyhow::Error::from)
        }
    };
    let before: Vec<_> = jobs_of(alice.clone())
        .await?
        .iter()
        .map(|j| (j.job_id.clone(), snapshot(j)))
        .collect();
    assert_eq!(before.len(), 2);

    let bob = s.user("bob").await?;
    let bob_repo =
        repo("def load_model():\n    return 'bob'\n\ndef run(model, data):\n    return data\n");
    let own_repo = packed(bob_repo.path());
    let mut c = user_clients(&s, &bob).await;
    let secrets = t.secrets();
    let mut report = Vec::new();
    for rpc in USER_RPCS {
        for o in call(&mut c, rpc, &t, &own_repo).await {
            report.push(format!(
                "{}: {:?}",
                o.label,
                o.result.as_ref().map_err(|e| e.code())
            ));
            let forbidden: Vec<&String> = secrets.iter().filter(|x| !o.sent.contains(x)).collect();
            let text = match &o.result {
                Ok(response) => response.clone(),
                Err(status) => status.message().to_string(),
            };
            for x in &forbidden {
                assert!(
                    !text.contains(x.as_str()),
                    "{}: the answer shows alice's `{x}`: {text}",
                    o.label
                );
            }
            match (rpc, &o.result) {
                // Global, or Bob's own: they work and show nothing of Alice's.
                ("Marketplace.AvailableMachines" | "Artifacts.Upload", Ok(_)) => {}
                ("Jobs.ListJobs", Ok(r)) => {
                    assert_eq!(r, "ListJobsResponse { jobs: [], next_page_token: \"\" }")
                }
                ("Jobs.ListInstances", Ok(r)) if o.label.ends_with("all") => {
                    assert_eq!(r, "ListInstancesResponse { instances: [] }")
                }
                // Predict is authorised by client id: Alice's model is public.
                ("Inference.Predict", Ok(r)) => assert!(r.contains("output"), "{r}"),
                (_, Err(e)) if rpc.starts_with("Admin.") => {
                    assert_eq!(e.code(), Code::PermissionDenied, "{}: {e:?}", o.label)
                }
                (_, Err(e)) => assert!(
                    matches!(e.code(), Code::NotFound | Code::PermissionDenied),
                    "{}: {e:?}",
                    o.label
                ),
                (_, Ok(r)) => panic!("{}: bob got an answer: {r}", o.label),
            }
        }
    }
    eprintln!("bob's calls:\n  {}", report.join("\n  "));

    // Nothing of Alice's changed, and Bob got no job from her artifacts.
    let after: Vec<_> = jobs_of(alice.clone())
        .await?
        .iter()
        .map(|j| (j.job_id.clone(), snapshot(j)))
        .collect();
    assert_eq!(before, after);
    assert!(jobs_of(bob.clone()).await?.is_empty());
    // Alice's two repos, her training result, Bob's repo: no more.
    let blobs = std::fs::read_dir(s.data_dir.join("blobs/sha256"))?.count();
    assert_eq!(blobs, 4);
    // Alice still serves; Bob's (wrong-owner) Predict finds nothing.
    s.predict("alice", "public", &t.model_name, "{}").await?;
    let r = s.predict("bob", "public", &t.model_name, "{}").await;
    assert_eq!(r.expect_err("bob has no such model").code(), Code::NotFound);

    // A model with client ids: Bob needs a listed client id, his token does not help.
    s.inference(Some(&alice))
        .await?
        .update_clients(pb::UpdateClientsRequest {
            job_id: t.infer_job.clone(),
            add: vec!["c1".into()],
            ..Default::default()
        })
        .await?;
    let predict = |client_id: &str| pb::PredictRequest {
        owner: "alice".into(),
        client_id: client_id.into(),
        model_name: t.model_name.clone(),
        payload: b"{}".to_vec(),
        content_type: "application/json".into(),
    };
    for client_id in ["public", "", "bob", "c2"] {
        let e = c
            .inference
            .predict(predict(client_id))
            .await
            .expect_err("not a listed client id");
        assert_eq!(e.code(), Code::PermissionDenied, "{client_id}: {e:?}");
        assert!(!e.message().contains(&t.infer_job), "{e:?}");
    }
    c.inference.predict(predict("c1")).await?;
    Ok(())
}

/// Predict callers are not the owner: a model that is not serving yet says
/// so (and how far it got), without its job id.
#[tokio::test]
async fn predict_on_a_model_not_serving_yet_shows_no_job_id() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let slow = repo("import time\n\ndef load_model():\n    time.sleep(120)\n\ndef run(model, data):\n    return data\n");
    let digest = s.upload_dir(&alice, slow.path()).await?;
    let job_id = s.deploy(&alice, "slow", &digest).await?;
    s.watch_until(&alice, &job_id, DEPLOY_DEADLINE, |e| {
        e.substatus() == pb::JobSubstatus::DeployingModel
    })
    .await?;
    let e = s
        .predict("alice", "public", "slow", "{}")
        .await
        .expect_err("the model is loading");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not serving yet"), "{e:?}");
    assert!(!e.message().contains(&job_id), "{e:?}");
    Ok(())
}

/// `authorization` values that must not authenticate anyone.
fn bad_authorizations(alice: &str, join: &str) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("no metadata", None),
        ("empty", Some(String::new())),
        ("scheme only", Some("Bearer".into())),
        ("not a token", Some("Bearer not-a-token".into())),
        ("no scheme", Some(alice.to_string())),
        ("another scheme", Some(format!("Basic {alice}"))),
        ("altered token", Some(format!("Bearer {alice}0"))),
        (
            "truncated token",
            Some(format!("Bearer {}", &alice[..alice.len() - 1])),
        ),
        (
            "unknown user's token",
            Some(format!("Bearer secret_{}", "0".repeat(48))),
        ),
        ("the join token", Some(format!("Bearer {join}"))),
    ]
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated_on_every_rpc_but_predict() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let (alice, t) = alice_setup(&s, false).await?;
    let join = std::fs::read_to_string(s.data_dir.join("join-token"))?;
    let own_repo = packed(&example("echo"));
    let before = snapshot(&s.get_job(&alice, &t.infer_job).await?);
    let mut calls = 0;
    for (what, authorization) in bad_authorizations(&alice, &join) {
        let mut c = clients(&s, authorization.as_deref()).await;
        for rpc in USER_RPCS {
            for o in call(&mut c, rpc, &t, &own_repo).await {
                calls += 1;
                if rpc == "Inference.Predict" {
                    let r = o
                        .result
                        .unwrap_or_else(|e| panic!("{what}: {}: {e:?}", o.label));
                    assert!(r.contains("output"), "{r}");
                    continue;
                }
                let e = o
                    .result
                    .expect_err(&format!("{what}: {} should be refused", o.label));
                assert_eq!(
                    e.code(),
                    Code::Unauthenticated,
                    "{what}: {}: {e:?}",
                    o.label
                );
                assert!(
                    e.message().contains("access token"),
                    "{what}: {}: {e:?}",
                    o.label
                );
            }
        }
    }
    eprintln!("{calls} calls with bad tokens");
    assert_eq!(snapshot(&s.get_job(&alice, &t.infer_job).await?), before);
    assert_eq!(
        std::fs::read_dir(s.data_dir.join("blobs/sha256"))?.count(),
        2,
        "no upload was kept"
    );
    Ok(())
}

#[tokio::test]
async fn agent_gateway_wants_an_agent_credential() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let echo_digest = s.upload_dir(&alice, &example("echo")).await?;
    let t = Target {
        owner: "alice".into(),
        model_name: "m".into(),
        description: String::new(),
        infer_job: "job-0000000000000000000000000000000".into(),
        train_job: "job-0000000000000000000000000000001".into(),
        echo_digest: echo_digest.clone(),
        train_digest: echo_digest,
        result_digest: String::new(),
        instance_ids: vec!["inst-0000000000000000000000000000000".into()],
    };
    let join = std::fs::read_to_string(s.data_dir.join("join-token"))?;
    let own_repo = packed(&example("echo"));
    let mut refused = vec![
        ("alice's token", Some(format!("Bearer {alice}"))),
        (
            "the admin's token",
            Some(format!("Bearer {}", s.admin_token)),
        ),
        ("the join token, altered", Some(format!("Bearer {join}0"))),
        ("the join token, no scheme", Some(join.clone())),
    ];
    refused.extend(
        bad_authorizations(&alice, &join)
            .into_iter()
            .filter(|(what, _)| *what != "the join token"),
    );
    for (what, authorization) in refused {
        let mut c = clients(&s, authorization.as_deref()).await;
        for rpc in GATEWAY_RPCS {
            for o in call(&mut c, rpc, &t, &own_repo).await {
                let e = o
                    .result
                    .expect_err(&format!("{what}: {} should be refused", o.label));
                assert_eq!(
                    e.code(),
                    Code::Unauthenticated,
                    "{what}: {}: {e:?}",
                    o.label
                );
            }
        }
    }
    // The join token itself only lets a new pool agent join: as an instance,
    // for a report, an artifact or a result it is denied (credentials.rs has more).
    let mut c = clients(&s, Some(&format!("Bearer {join}"))).await;
    for rpc in GATEWAY_RPCS {
        for o in call(&mut c, rpc, &t, &own_repo).await {
            let e = o
                .result
                .expect_err(&format!("the join token: {} should be refused", o.label));
            assert_eq!(e.code(), Code::PermissionDenied, "{}: {e:?}", o.label);
            assert!(e.message().contains("join token"), "{}: {e:?}", o.label);
        }
    }
    Ok(())
}

/// Requests far above the limits are refused whole, and the connection
/// keeps working. (bad_input.rs checks Predict payloads and uploads just
/// above --max-payload-bytes and --max-artifact-bytes, and that a refused
/// upload keeps nothing.)
#[tokio::test]
async fn requests_far_above_the_limits_are_refused() -> anyhow::Result<()> {
    let s = Scheduler::start_with(&["--max-payload-bytes", "1024"]).await?;
    let alice = s.user("alice").await?;
    let mut c = user_clients(&s, &alice).await;
    // The Inference service decodes at most --max-payload-bytes plus an
    // envelope; beyond that gRPC itself refuses the message (OUT_OF_RANGE,
    // "decoded message length too large ... the limit is ...").
    let e = c
        .inference
        .predict(pb::PredictRequest {
            owner: "alice".into(),
            model_name: "none".into(),
            payload: vec![b'x'; 1 << 20],
            ..Default::default()
        })
        .await
        .expect_err("a 1 MiB payload over a 1024-byte limit");
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::InvalidArgument | Code::OutOfRange
        ),
        "{e:?}"
    );
    assert!(e.message().contains("limit"), "{e:?}");
    // Other services: gRPC's 4 MiB default.
    let e = c
        .jobs
        .get_job(pb::GetJobRequest {
            job_id: "j".repeat(5 << 20),
        })
        .await
        .expect_err("a 5 MiB request");
    assert!(
        matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{e:?}"
    );
    assert!(e.message().contains("limit"), "{e:?}");
    // The same connection still serves.
    c.jobs.list_jobs(pb::ListJobsRequest::default()).await?;
    Ok(())
}

/// Long (but not oversize) ids and names get an error that says what is
/// wrong. Today every error message repeats the offending value whole, and
/// past ~16 KiB the `grpc-message` header is more than the client accepts:
/// the caller sees "h2 protocol error" (INTERNAL / RESOURCE_EXHAUSTED)
/// instead of NOT_FOUND / INVALID_ARGUMENT.
#[tokio::test]
async fn long_ids_and_names_get_a_clear_error() -> anyhow::Result<()> {
    let s = Scheduler::start().await?;
    let alice = s.user("alice").await?;
    let mut c = user_clients(&s, &alice).await;
    let long = "a".repeat(100 << 10);
    let mut machine = deploy_request("ok", "sha256:00");
    machine.machine_config.as_mut().unwrap().standby = long.clone();
    let checks: Vec<(&str, Result<String, Status>)> = vec![
        (
            "GetJob",
            unary(
                c.jobs
                    .get_job(pb::GetJobRequest {
                        job_id: long.clone(),
                    })
                    .await,
            ),
        ),
        (
            "WatchJob",
            streamed(
                c.jobs
                    .watch_job(pb::WatchJobRequest {
                        job_id: long.clone(),
                    })
                    .await,
            )
            .await,
        ),
        (
            "GetTimeline",
            unary(
                c.jobs
                    .get_timeline(pb::GetTimelineRequest {
                        job_id: long.clone(),
                    })
                    .await,
            ),
        ),
        (
            "ListInstances",
            unary(
                c.jobs
                    .list_instances(pb::ListInstancesRequest {
                        job_id: long.clone(),
                    })
                    .await,
            ),
        ),
        (
            "Complete by name",
            unary(
                c.inference
                    .complete(pb::CompleteRequest {
                        job_id: String::new(),
                        model_name: long.clone(),
                    })
                    .await,
            ),
        ),
        (
            "ListClients by name",
            unary(
                c.inference
                    .list_clients(pb::ListClientsRequest {
                        job_id: String::new(),
                        model_name: long.clone(),
                    })
                    .await,
            ),
        ),
        (
            "Deploy name",
            unary(c.inference.deploy(deploy_request(&long, "sha256:00")).await),
        ),
        (
            "Deploy digest",
            unary(c.inference.deploy(deploy_request("ok", &long)).await),
        ),
        ("Deploy machine", unary(c.inference.deploy(machine).await)),
        (
            "Fit digest",
            unary(
                c.training
                    .fit(pb::FitRequest {
                        artifact_digest: long.clone(),
                        machine_ids: vec!["local.small.od".into()],
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "DownloadResult",
            streamed(
                c.training
                    .download_result(pb::DownloadResultRequest {
                        job_id: long.clone(),
                    })
                    .await,
            )
            .await,
        ),
        (
            "Predict owner",
            unary(
                c.inference
                    .predict(pb::PredictRequest {
                        owner: long.clone(),
                        model_name: "m".into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, r) in checks {
        let e = r.expect_err(what);
        if !matches!(e.code(), Code::NotFound | Code::InvalidArgument) || e.message().len() > 4096 {
            wrong.push(format!(
                "{what}: {:?} `{}`",
                e.code(),
                &e.message()[..e.message().len().min(100)]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// A client deadline ends a slow dry run: the caller hears back at once, the
/// dry run's job is canceled, and its instance, Python and files do not linger.
#[tokio::test]
async fn a_client_deadline_ends_a_slow_dry_run() -> anyhow::Result<()> {
    slow_dry_run_is_ended(&[], Some(Duration::from_secs(5))).await
}

/// Without a client deadline, the scheduler's own (--request-timeout-s) ends it.
#[tokio::test]
async fn the_scheduler_deadline_ends_a_slow_dry_run() -> anyhow::Result<()> {
    slow_dry_run_is_ended(&["--request-timeout-s", "3"], None).await
}

async fn slow_dry_run_is_ended(
    args: &[&str],
    client_deadline: Option<Duration>,
) -> anyhow::Result<()> {
    let s = Scheduler::start_with(args).await?;
    let alice = s.user("alice").await?;
    let slow = repo("import time\n\ndef load_model():\n    time.sleep(120)\n\ndef run(model, data):\n    return data\n");
    let digest = s.upload_dir(&alice, slow.path()).await?;
    let mut dry = deploy_request("slow", &digest);
    dry.dryrun = true;
    let mut request = tonic::Request::new(dry);
    if let Some(deadline) = client_deadline {
        request.set_timeout(deadline);
    }
    let mut c = user_clients(&s, &alice).await;
    let mut call = {
        let mut inference = c.inference.clone();
        tokio::spawn(async move { inference.deploy(request).await })
    };
    // The dry run's Python (venv, then the worker) runs on an instance, under
    // the local provider's instance dirs in the data dir.
    let mut python_seen = false;
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                r = &mut call => break r.expect("join"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    python_seen |= !pythons_under(&s.data_dir).is_empty();
                }
            }
        }
    })
    .await
    .expect("the deadline was not applied");
    assert!(python_seen, "the dry run never started Python");
    let e = result.expect_err("the dry run outlives its deadline");
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    // Its instance (and with it the Python worker running there) goes.
    let deadline = std::time::Instant::now() + DEPLOY_DEADLINE;
    loop {
        let dirs: Vec<_> = std::fs::read_dir(s.data_dir.join("instances"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        let pythons = pythons_under(&s.data_dir);
        if dirs.is_empty() && pythons.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {dirs:?}, python pids {pythons:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its job was canceled, and it serves nothing.
    let jobs = c.jobs.list_jobs(pb::ListJobsRequest::default()).await?;
    let jobs = jobs.into_inner().jobs;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].dryrun);
    assert_eq!(jobs[0].status(), pb::JobStatus::Canceled, "{:?}", jobs[0]);
    assert!(
        jobs[0]
            .instances
            .iter()
            .all(|i| i.status() == pb::InstanceStatus::Closed),
        "{:?}",
        jobs[0].instances
    );
    Ok(())
}

/// Pids of processes whose command line or working dir is under `dir`.
fn pythons_under(dir: &std::path::Path) -> Vec<u32> {
    let dir = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let ours = cwd.starts_with(&dir) || cmdline.contains(&dir);
        if ours && cmdline.contains("python") {
            out.push(pid);
        }
    }
    out
}

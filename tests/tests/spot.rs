//! Spot vs on-demand with real agents: a deploy of an on-demand id runs on its
//! spot twin when spot capacity can be had; an interrupted spot instance is
//! replaced (on-demand, spot being gone) while requests keep flowing, with no
//! request failing; the ledger charges spot then on-demand; and once spot
//! capacity returns the on-demand stand-in is swapped back to spot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aibro_proto::v1::{self as pb, InstanceSubstatus, JobStatus};
use aibro_tests::{example, serving_replacement_of, Scheduler};
use anyhow::Result;

/// Requests sent in a loop by a few clients until stopped; counts outcomes.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `clients` loops predicting `owner/model` (public).
    fn start(s: &Scheduler, owner: &str, model: &str, clients: usize) -> Result<Load> {
        let (stop, ok, failed) = (Arc::default(), Arc::default(), Arc::default());
        let endpoint = s.endpoint();
        let tasks = (0..clients)
            .map(|c| {
                let (stop, ok, failed): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
                    (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                let endpoint = endpoint.clone();
                let (owner, model) = (owner.to_string(), model.to_string());
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    let mut client = pb::inference_client::InferenceClient::connect(endpoint)
                        .await
                        .unwrap();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let request = pb::PredictRequest {
                            owner: owner.clone(),
                            client_id: "public".into(),
                            model_name: model.clone(),
                            payload: format!("{{\"c\": {c}, \"i\": {i}}}").into_bytes(),
                            content_type: "application/json".into(),
                        };
                        match client.predict(request).await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                errors.push(format!("{:?}: {}", e.code(), e.message()));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    errors
                })
            })
            .collect();
        Ok(Load {
            stop,
            ok,
            failed,
            tasks,
        })
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Result<(u64, u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await?);
        }
        Ok((
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        ))
    }
}

fn find<'a>(instances: &'a [pb::Instance], id: &str) -> &'a pb::Instance {
    instances.iter().find(|i| i.instance_id == id).unwrap()
}

fn terminated(i: &pb::Instance) -> bool {
    i.substatus() == InstanceSubstatus::Terminated
}

#[tokio::test]
async fn an_interrupted_spot_instance_is_replaced_without_failing_a_request() -> Result<()> {
    let s = Scheduler::start_with(&[
        "--spot-availability",
        "1",
        "--spot-check-s",
        "1",
        "--heartbeat-ms",
        "200",
    ])
    .await?;
    let token = s.user("sam").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job_id = s.deploy(&token, "spotty", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let job = s.get_job(&token, &job_id).await?;
    assert_eq!(
        job.standby_machine, "local.small.od",
        "the user's choice is kept"
    );
    let spot = job.instances[0].clone();
    assert_eq!(
        spot.machine_id, "local.small",
        "spot could be had, so spot it is"
    );
    assert_eq!(spot.price_per_hour, 0.36);

    // Spot capacity goes away; the serving spot instance is interrupted under load.
    let mut admin = s.admin().await?;
    admin
        .set_spot_availability(pb::SetSpotAvailabilityRequest {
            machine_type: "local.small".into(),
            availability: 0.0,
        })
        .await?;
    let load = Load::start(&s, "sam", "spotty", 8)?;
    let warm = load.ok() + 50;
    while load.ok() < warm {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let interrupted_at = Instant::now();
    admin
        .interrupt_instance(pb::InterruptInstanceRequest {
            instance_id: spot.instance_id.clone(),
            notice_ms: 30_000,
        })
        .await?;
    let job = s
        .wait_instances(&token, &job_id, "the switch to on-demand", |insts| {
            serving_replacement_of(insts, &spot.instance_id).is_some()
                && terminated(find(insts, &spot.instance_id))
        })
        .await?;
    let switch_over = interrupted_at.elapsed();
    let od = serving_replacement_of(&job.instances, &spot.instance_id)
        .unwrap()
        .clone();
    assert_eq!(od.machine_id, "local.small.od");
    // Requests keep being answered by the replacement.
    let more = load.ok() + 100;
    while load.ok() < more {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (ok, failed, errors) = load.finish().await?;
    eprintln!(
        "interruption: {ok} requests, {failed} failed, switch-over {:.0} ms",
        switch_over.as_secs_f64() * 1000.0
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert_eq!(job.status(), JobStatus::Deployed);

    // The ledger: spot, then on-demand; the interrupted one says why it went.
    let old = find(&job.instances, &spot.instance_id);
    assert_eq!(old.price_per_hour, 0.36);
    assert_eq!(od.price_per_hour, 1.20);
    assert_eq!(old.reason, "spot interruption");
    assert!(old.running_ms > 0 && old.cost_usd > 0.0);
    let timeline = s.timeline(&token, &job_id).await?;
    let marks: Vec<&str> = timeline.events.iter().map(|e| e.phase.as_str()).collect();
    assert!(marks.contains(&"spot interruption notice"), "{marks:?}");

    // Spot capacity returns: the on-demand stand-in goes back to spot.
    admin
        .set_spot_availability(pb::SetSpotAvailabilityRequest {
            machine_type: "local.small".into(),
            availability: 1.0,
        })
        .await?;
    let job = s
        .wait_instances(&token, &job_id, "the swap back to spot", |insts| {
            serving_replacement_of(insts, &od.instance_id).is_some()
                && terminated(find(insts, &od.instance_id))
        })
        .await?;
    let back = serving_replacement_of(&job.instances, &od.instance_id).unwrap();
    assert_eq!(back.machine_id, "local.small");
    assert!(find(&job.instances, &od.instance_id)
        .reason
        .starts_with("replaced by"));
    s.predict("sam", "public", "spotty", "{}").await?;

    s.complete(&token, &job_id).await?;
    assert!(s.live_agents().is_empty());
    Ok(())
}

#[tokio::test]
async fn interrupting_needs_an_admin_and_a_running_spot_instance() -> Result<()> {
    let s = Scheduler::start().await?;
    let token = s.user("tia").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let job_id = s.deploy(&token, "od", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let inst = s.get_job(&token, &job_id).await?.instances[0].clone();
    assert_eq!(inst.machine_id, "local.small.od", "the harness has no spot");

    let (ch, bearer) = s.authed(Some(&token)).await?;
    let mut as_user = pb::admin_client::AdminClient::with_interceptor(ch, bearer);
    let request = pb::InterruptInstanceRequest {
        instance_id: inst.instance_id.clone(),
        notice_ms: 0,
    };
    let denied = as_user
        .interrupt_instance(request.clone())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let mut admin = s.admin().await?;
    let refused = admin.interrupt_instance(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("not a running spot machine"),
        "{}",
        refused.message()
    );
    let unknown = admin
        .interrupt_instance(pb::InterruptInstanceRequest {
            instance_id: "inst-nope".into(),
            notice_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let bad = admin
        .set_spot_availability(pb::SetSpotAvailabilityRequest {
            machine_type: "local.small".into(),
            availability: 1.5,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let bad = admin
        .set_spot_availability(pb::SetSpotAvailabilityRequest {
            machine_type: "local.small.od".into(),
            availability: 0.5,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        s.get_job(&token, &job_id).await?.status(),
        JobStatus::Deployed
    );
    Ok(())
}

#[tokio::test]
async fn an_interrupted_replacement_is_replaced_again_and_the_job_serves_on() -> Result<()> {
    let s = Scheduler::start_with(&["--spot-availability", "1", "--heartbeat-ms", "200"]).await?;
    let token = s.user("rex").await?;
    // load_model() waits while the gate file exists: replacements stay LAUNCHING.
    let gate = tempfile::tempdir()?.keep().join("gate");
    let repo = aibro_tests::repo(&format!(
        "import os, time\n\
         def load_model():\n    \
             while os.path.exists({gate:?}):\n        time.sleep(0.02)\n\
         def run(model, data):\n    return data\n"
    ));
    let digest = s.upload_dir(&token, repo.path()).await?;
    let job_id = s.deploy(&token, "gated", &digest).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let first = s.get_job(&token, &job_id).await?.instances[0].clone();
    assert_eq!(first.machine_id, "local.small");

    std::fs::write(&gate, "")?;
    let mut admin = s.admin().await?;
    let interrupt = |id: &str| pb::InterruptInstanceRequest {
        instance_id: id.to_string(),
        notice_ms: 60_000,
    };
    admin
        .interrupt_instance(interrupt(&first.instance_id))
        .await?;
    let job = s
        .wait_instances(&token, &job_id, "a replacement registered", |insts| {
            insts
                .iter()
                .any(|i| i.replaces == first.instance_id && !i.agent_address.is_empty())
        })
        .await?;
    let second = job
        .instances
        .iter()
        .find(|i| i.replaces == first.instance_id)
        .unwrap()
        .clone();
    // The replacement is interrupted while it is still loading.
    admin
        .interrupt_instance(interrupt(&second.instance_id))
        .await?;
    let job = s
        .wait_instances(&token, &job_id, "a second replacement", |insts| {
            insts
                .iter()
                .any(|i| i.replaces == first.instance_id && i.instance_id != second.instance_id)
                && terminated(find(insts, &second.instance_id))
        })
        .await?;
    assert_eq!(job.status(), JobStatus::Deployed, "{}", job.reason);
    s.predict("rex", "public", "gated", "{}").await?;

    std::fs::remove_file(&gate)?;
    let job = s
        .wait_instances(&token, &job_id, "the takeover", |insts| {
            serving_replacement_of(insts, &first.instance_id).is_some()
                && terminated(find(insts, &first.instance_id))
        })
        .await?;
    assert_eq!(job.status(), JobStatus::Deployed, "{}", job.reason);
    let second = find(&job.instances, &second.instance_id);
    assert_eq!(second.reason, "spot interruption");
    s.predict("rex", "public", "gated", "{}").await?;
    Ok(())
}

#[tokio::test]
async fn at_full_capacity_the_replacement_takes_the_interrupted_machine() -> Result<()> {
    let catalog = aibro_tests::catalog_with("local.one", "local", 1, 1.0)?;
    let s = Scheduler::start_with(&[
        "--catalog",
        catalog.path().to_str().unwrap(),
        "--spot-availability",
        "1",
    ])
    .await?;
    let token = s.user("una").await?;
    let digest = s.upload_dir(&token, &example("echo")).await?;
    let mut request = aibro_tests::deploy_request("single", &digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: "local.one.od".into(),
        cooling: String::new(),
    });
    let job_id = s.deploy_with(&token, request).await?;
    s.wait_status(&token, &job_id, JobStatus::Deployed).await?;
    let spot = s.get_job(&token, &job_id).await?.instances[0].clone();
    assert_eq!(spot.machine_id, "local.one");

    let load = Load::start(&s, "una", "single", 4)?;
    let warm = load.ok() + 20;
    while load.ok() < warm {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.admin()
        .await?
        .interrupt_instance(pb::InterruptInstanceRequest {
            instance_id: spot.instance_id.clone(),
            notice_ms: 10_000,
        })
        .await?;
    let job = s
        .wait_instances(&token, &job_id, "the switch", |insts| {
            serving_replacement_of(insts, &spot.instance_id).is_some()
                && terminated(find(insts, &spot.instance_id))
        })
        .await?;
    let more = load.ok() + 20;
    while load.ok() < more {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (ok, failed, errors) = load.finish().await?;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok > 40);
    assert_eq!(s.machine(&token, "local.one").await?.available, 0);
    assert_eq!(job.status(), JobStatus::Deployed);
    Ok(())
}

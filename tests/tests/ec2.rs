//! The EC2 provider end to end, against moto behind the fault proxy, with
//! each instance's boot played from its own user data so that real agents
//! register: standby + cooling on EC2 types (spot at the prices the proxy
//! serves), stop that keeps the disk, wake without gearing up, a wake refused
//! for capacity, a Fit falling back past a capacity error, a kill -9 in the
//! middle, and the calls each lifecycle costs.

use std::time::Duration;

use aibro_proto::v1::{self as pb, InstanceRole, InstanceStatus, InstanceSubstatus, JobStatus};
use aibro_tests::ec2::{Ec2Error, Ec2World, FaultRule, InstanceState, MUTATING_ACTIONS};
use aibro_tests::{deploy_request, repo, Scheduler, DEPLOY_DEADLINE};
use anyhow::{bail, Context, Result};

const ECHO: &str =
    "def load_model():\n    return 'echo'\n\n\ndef run(model, data):\n    return data\n";

/// An echo repo whose requirements make gear-up build a virtualenv (installing nothing).
fn echo_repo() -> Result<tempfile::TempDir> {
    let dir = repo(ECHO);
    std::fs::write(dir.path().join("requirements.txt"), "--no-index\n")?;
    Ok(dir)
}

fn reached(e: &pb::JobEvent, id: &str, status: InstanceStatus, sub: InstanceSubstatus) -> bool {
    e.instance_id == id && e.instance_status() == status && e.instance_substatus() == sub
}

fn role_of(job: &pb::Job, role: InstanceRole) -> Result<pb::Instance> {
    job.instances
        .iter()
        .find(|i| i.role() == role)
        .cloned()
        .with_context(|| format!("no {role:?} instance: {job:#?}"))
}

/// The EC2 id of the aibro instance, by its tag.
async fn ec2_of(world: &Ec2World, instance_id: &str) -> Result<(String, InstanceState)> {
    let tagged = world
        .instances_tagged("aibro:instance", instance_id)
        .await?;
    match tagged.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!("{instance_id} is tagged on {other:?}"),
    }
}

/// Waits until moto shows the instance in `want`.
async fn moto_shows(world: &Ec2World, ec2_id: &str, want: InstanceState) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEPLOY_DEADLINE;
    loop {
        let now = world.instance_state(ec2_id).await?;
        if now == want {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{ec2_id} is {now:?}, not {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deploys the echo repo on g4dn standby + cooling with a 2 s cool-down;
/// returns the job once DEPLOYED and its cooling instance serves.
async fn deploy_ec2(s: &Scheduler, token: &str, name: &str) -> Result<pb::Job> {
    let repo = echo_repo()?;
    let digest = s.upload_dir(token, repo.path()).await?;
    let mut request = deploy_request(name, &digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: "g4dn.xlarge.od".into(),
        cooling: "g4dn.12xlarge.od".into(),
    });
    request.cool_down_period_s = 2;
    let job_id = s.deploy_with(token, request).await?;
    s.wait_status(token, &job_id, JobStatus::Deployed).await?;
    let job = s.get_job(token, &job_id).await?;
    let cooling = role_of(&job, InstanceRole::Cooling)?.instance_id;
    s.watch_until(token, &job_id, DEPLOY_DEADLINE, |e| {
        reached(
            e,
            &cooling,
            InstanceStatus::Executing,
            InstanceSubstatus::None,
        )
    })
    .await?;
    s.get_job(token, &job_id).await
}

/// Deploys the echo repo on one standby machine; returns its instance once DEPLOYED.
async fn deploy_standby(
    s: &Scheduler,
    token: &str,
    name: &str,
    machine: &str,
) -> Result<(String, pb::Instance)> {
    let repo = echo_repo()?;
    let digest = s.upload_dir(token, repo.path()).await?;
    let mut request = deploy_request(name, &digest);
    request.machine_config = Some(pb::MachineConfig {
        standby: machine.into(),
        cooling: String::new(),
    });
    let job_id = s.deploy_with(token, request).await?;
    s.wait_status(token, &job_id, JobStatus::Deployed).await?;
    let standby = role_of(&s.get_job(token, &job_id).await?, InstanceRole::Standby)?;
    Ok((job_id, standby))
}

/// Waits until the cooling instance has cooled down and stopped.
async fn stopped(s: &Scheduler, token: &str, job_id: &str, id: &str) -> Result<u64> {
    let events = s
        .watch_until(token, job_id, DEPLOY_DEADLINE, |e| {
            reached(e, id, InstanceStatus::Closed, InstanceSubstatus::Stopped)
        })
        .await?;
    Ok(events.last().map_or(0, |e| e.seq))
}

#[tokio::test]
async fn standby_and_cooling_run_stop_and_wake_on_ec2() -> Result<()> {
    let world = Ec2World::start().await?;
    world.proxy().set_spot_price("g4dn.xlarge", 0.1578);
    world.proxy().set_spot_price("g4dn.12xlarge", 1.1736);
    let s = Scheduler::start_ec2(&world, &[]).await?;
    let token = s.user("erin").await?;
    let job = (deploy_ec2(&s, &token, "e").await).with_context(|| world.logs())?;
    let cooling = role_of(&job, InstanceRole::Cooling)?.instance_id;
    let standby = role_of(&job, InstanceRole::Standby)?;
    assert_eq!(
        standby.machine_id, "g4dn.xlarge",
        "spot, at the price EC2 quotes"
    );
    assert!(
        (standby.price_per_hour - 0.1578).abs() < 1e-9,
        "{standby:?}"
    );
    let r = s.predict("erin", "public", "e", r#"{"x": 1}"#).await?;
    assert_eq!(
        (r.role(), r.instance_id.as_str()),
        (InstanceRole::Cooling, cooling.as_str())
    );

    // Cooled down: EC2 stopped it, and its EBS disk (the played root) is kept.
    let seq = stopped(&s, &token, &job.job_id, &cooling).await?;
    let (ec2_id, state) = ec2_of(&world, &cooling).await?;
    assert_eq!(state, InstanceState::Stopped);
    let machine = world.proxy().machine(&ec2_id).context("played")?;
    assert!(!machine.running && machine.root.join("var/lib/aibro/agent").is_dir());

    // A request wakes it: the standby answers, EC2 starts the same instance,
    // its agent comes back on its kept disk without gearing up again.
    let r = s.predict("erin", "public", "e", r#"{"wake": 1}"#).await?;
    assert_eq!(r.role(), InstanceRole::Standby);
    s.watch_until(&token, &job.job_id, DEPLOY_DEADLINE, |e| {
        e.seq > seq
            && reached(
                e,
                &cooling,
                InstanceStatus::Executing,
                InstanceSubstatus::None,
            )
    })
    .await?;
    moto_shows(&world, &ec2_id, InstanceState::Running).await?;
    assert_eq!(world.proxy().machine(&ec2_id).context("played")?.boots, 2);
    let marks = phases(&s, &token, &job.job_id, &cooling).await?;
    let woken = marks
        .iter()
        .position(|m| m == "instance woken")
        .context("woken")?;
    assert!(
        marks[woken..].iter().any(|m| m == "env reused"),
        "{marks:?}"
    );
    assert!(
        !marks[woken..].iter().any(|m| m == "env geared up"),
        "{marks:?}"
    );

    // Complete: both terminated in EC2; the ledger priced the spot quotes.
    s.complete(&token, &job.job_id).await?;
    for inst in &s.get_job(&token, &job.job_id).await?.instances {
        let (ec2_id, _) = ec2_of(&world, &inst.instance_id).await?;
        moto_shows(&world, &ec2_id, InstanceState::Terminated).await?;
        let quoted = if inst.role() == InstanceRole::Cooling {
            1.1736
        } else {
            0.1578
        };
        assert!((inst.price_per_hour - quoted).abs() < 1e-9, "{inst:?}");
        assert!(inst.cost_usd > 0.0, "{inst:?}");
    }
    // At most 5 mutating calls per instance, one stop/wake cycle included.
    let counts = world.proxy().counts();
    let mutating: u64 = MUTATING_ACTIONS
        .iter()
        .map(|a| counts.get(*a).copied().unwrap_or(0))
        .sum();
    assert!(mutating <= 2 * 5 + 2, "{counts:?}");
    assert_eq!(counts.get("RunInstances"), Some(&2), "{counts:?}");
    Ok(())
}

/// The instance's phase marks in the job's timeline, in order.
async fn phases(s: &Scheduler, token: &str, job_id: &str, id: &str) -> Result<Vec<String>> {
    let timeline = s.timeline(token, job_id).await?;
    Ok(timeline
        .events
        .into_iter()
        .filter(|e| e.instance_id == id && !e.phase.is_empty())
        .map(|e| e.phase)
        .collect())
}

#[tokio::test]
async fn a_wake_refused_for_capacity_leaves_the_standby_serving_and_says_why() -> Result<()> {
    let world = Ec2World::start().await?;
    let s = Scheduler::start_ec2(&world, &[]).await?;
    let token = s.user("finn").await?;
    let job = deploy_ec2(&s, &token, "w").await?;
    let cooling = role_of(&job, InstanceRole::Cooling)?.instance_id;
    let seq = stopped(&s, &token, &job.job_id, &cooling).await?;
    world.proxy().fail(FaultRule::new(
        "StartInstances",
        Ec2Error::insufficient_instance_capacity(),
    ));

    let r = s.predict("finn", "public", "w", "{}").await?;
    assert_eq!(r.role(), InstanceRole::Standby);
    s.watch_until(&token, &job.job_id, DEPLOY_DEADLINE, |e| {
        e.seq > seq && e.instance_id == cooling && e.phase == "wake failed"
    })
    .await?;
    let timeline = s.timeline(&token, &job.job_id).await?;
    let note = timeline
        .events
        .iter()
        .find(|e| e.phase == "wake failed")
        .context("the note")?;
    assert!(
        note.message.contains("InsufficientInstanceCapacity"),
        "{note:?}"
    );
    // The standby goes on serving; the instance is stopped again.
    for _ in 0..5 {
        let r = s.predict("finn", "public", "w", "{}").await?;
        assert_eq!(r.role(), InstanceRole::Standby);
    }
    let (ec2_id, state) = ec2_of(&world, &cooling).await?;
    assert_eq!(state, InstanceState::Stopped);

    // Capacity is back: a later request wakes it.
    world.proxy().clear_faults();
    let deadline = tokio::time::Instant::now() + DEPLOY_DEADLINE;
    loop {
        let r = s.predict("finn", "public", "w", "{}").await?;
        if r.role() == InstanceRole::Cooling {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("it never woke; log:\n{}", s.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    moto_shows(&world, &ec2_id, InstanceState::Running).await?;
    Ok(())
}

#[tokio::test]
async fn a_fit_falls_back_past_a_capacity_error() -> Result<()> {
    let world = Ec2World::start().await?;
    world.proxy().fail(
        FaultRule::new("RunInstances", Ec2Error::insufficient_instance_capacity())
            .when("InstanceType", "p3.2xlarge"),
    );
    let s = Scheduler::start_ec2(&world, &[]).await?;
    let token = s.user("gus").await?;
    let dir = repo(ECHO);
    std::fs::write(
        dir.path().join("train.py"),
        "def train(output_dir, **args):\n    open(f'{output_dir}/done.txt', 'w').write('ok')\n",
    )?;
    let digest = s.upload_dir(&token, dir.path()).await?;
    let fit = pb::FitRequest {
        artifact_digest: digest,
        machine_ids: vec!["p3.2xlarge.od".into(), "c5.large.od".into()],
        ..Default::default()
    };
    let job_id = s
        .training(Some(&token))
        .await?
        .fit(fit)
        .await?
        .into_inner()
        .job_id;
    s.wait_status(&token, &job_id, JobStatus::Completed).await?;
    let job = s.get_job(&token, &job_id).await?;
    let trainer = role_of(&job, InstanceRole::Trainer)?;
    assert_eq!(trainer.machine_id, "c5.large.od");
    assert_eq!(
        trainer.price_per_hour, 0.085,
        "us-east-1's on-demand list price"
    );
    let timeline = s.timeline(&token, &job_id).await?;
    let said = timeline
        .events
        .iter()
        .any(|e| e.message.contains("InsufficientInstanceCapacity"))
        || job.reason.contains("InsufficientInstanceCapacity")
        || s.log().contains("InsufficientInstanceCapacity");
    assert!(said, "the refusal is named");
    Ok(())
}

#[tokio::test]
async fn a_killed_scheduler_finds_its_instances_by_their_tags() -> Result<()> {
    let world = Ec2World::start().await?;
    let mut s = Scheduler::start_ec2(&world, &[]).await?;
    let token = s.user("hana").await?;
    let job = deploy_ec2(&s, &token, "k").await?;
    let cooling = role_of(&job, InstanceRole::Cooling)?.instance_id;
    s.kill9();
    // An instance of ours that the store never recorded (launched just
    // before a crash): tagged, so the restarted scheduler ends it.
    let stray = aibro_tests::ec2::call(
        world.endpoint(),
        "RunInstances",
        &[
            ("ImageId", world.ami()),
            ("InstanceType", "c5.large"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "aibro:scheduler"),
            ("TagSpecification.1.Tag.1.Value", &scheduler_id(&s)?),
            ("TagSpecification.1.Tag.2.Key", "aibro:instance"),
            ("TagSpecification.1.Tag.2.Value", "inst-stray"),
        ],
    )
    .await?;
    let stray_id = stray.texts(&["instancesSet", "item", "instanceId"])?[0].clone();
    s.spawn().await?;
    moto_shows(&world, &stray_id, InstanceState::Terminated).await?;

    // Its instances were adopted: they serve, and cool down as before.
    let r = s.predict("hana", "public", "k", "{}").await?;
    assert!(
        job.instances.iter().any(|i| i.instance_id == r.instance_id),
        "{r:?}"
    );
    stopped(&s, &token, &job.job_id, &cooling).await?;
    let (_, state) = ec2_of(&world, &cooling).await?;
    assert_eq!(state, InstanceState::Stopped);
    s.complete(&token, &job.job_id).await?;
    Ok(())
}

/// The id the scheduler tags its instances with (kept in its store; read
/// from an instance it launched).
fn scheduler_id(s: &Scheduler) -> Result<String> {
    let log = s.log();
    let at = log
        .find("aibro:scheduler=")
        .context("the scheduler logs its id")?;
    let id: String = log[at + "aibro:scheduler=".len()..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
        .collect();
    Ok(id)
}

#[tokio::test]
async fn a_spot_notice_from_the_metadata_service_replaces_the_instance() -> Result<()> {
    let world = Ec2World::start().await?;
    let s = Scheduler::start_ec2(&world, &[]).await?;
    let token = s.user("ines").await?;
    let (job_id, old) = deploy_standby(&s, &token, "n", "g4dn.xlarge.od").await?;
    assert_eq!(old.machine_id, "g4dn.xlarge", "a spot instance");
    let (ec2_id, _) = ec2_of(&world, &old.instance_id).await?;

    // EC2 announces the interruption on the instance's metadata service.
    let at = std::time::SystemTime::now() + Duration::from_secs(30);
    world.imds(&ec2_id).set_instance_action("stop", at);
    s.watch_until(&token, &job_id, DEPLOY_DEADLINE, |e| {
        e.instance_id == old.instance_id
            && e.instance_status() == InstanceStatus::Closed
            && e.instance_substatus() == InstanceSubstatus::Terminated
    })
    .await
    .with_context(|| world.logs())?;
    let job = s.get_job(&token, &job_id).await?;
    assert_eq!(job.status(), JobStatus::Deployed);
    let marks = phases(&s, &token, &job_id, &old.instance_id).await?;
    let noticed = marks
        .iter()
        .filter(|m| *m == "spot interruption notice")
        .count();
    assert_eq!(noticed, 1, "{marks:?}");
    let r = s.predict("ines", "public", "n", "{}").await?;
    assert_ne!(r.instance_id, old.instance_id, "the replacement serves");
    moto_shows(&world, &ec2_id, InstanceState::Terminated).await?;
    assert!(world.imds(&ec2_id).requests() > 0);
    Ok(())
}

#[tokio::test]
async fn a_bootstrap_token_is_good_for_one_registration() -> Result<()> {
    use aibro_proto::v1::agent_gateway_client::AgentGatewayClient;
    let world = Ec2World::start().await?;
    let s = Scheduler::start_ec2(&world, &[]).await?;
    let token = s.user("joe").await?;
    let (_, inst) = deploy_standby(&s, &token, "b", "c5.large.od").await?;
    let (ec2_id, _) = ec2_of(&world, &inst.instance_id).await?;
    let root = world.proxy().machine(&ec2_id).context("played")?.root;

    // The boot script's token was traded; the agent keeps its credential 0600.
    let env = std::fs::read_to_string(root.join("etc/aibro/agent.env"))?;
    let boot_token = env
        .lines()
        .find_map(|l| l.strip_prefix("AIBRO_JOIN_TOKEN="))
        .context("the token in the agent's settings")?;
    assert!(boot_token.starts_with("boot_"), "{boot_token}");
    let kept = root.join("var/lib/aibro/agent/credential");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept)?.permissions().mode() & 0o777,
        0o600
    );

    // Replayed (as anyone who read the user data could), or made up: refused.
    for presented in [boot_token, "boot_0123456789abcdef"] {
        let mut request = tonic::Request::new(pb::RegisterRequest {
            instance_id: inst.instance_id.clone(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        });
        let bearer = format!("Bearer {presented}").parse()?;
        request.metadata_mut().insert("authorization", bearer);
        let refused = AgentGatewayClient::new(s.channel().await?)
            .register(request)
            .await
            .expect_err("a used token is refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("used already"), "{refused:?}");
    }
    // The agent still serves.
    s.predict("joe", "public", "b", "{}").await?;
    Ok(())
}

#[tokio::test]
async fn over_tls_an_ec2_agent_gets_its_certificate_at_its_bootstrap() -> Result<()> {
    let world = Ec2World::start().await?;
    let tls = tempfile::tempdir()?;
    let dir = tls.path().join("tls");
    aibro_scheduler::tls::init(&dir, &["127.0.0.1".to_string()])?;
    let path = |f: &str| dir.join(f).display().to_string();
    let (cert, key, ca, ca_key) = (
        path("scheduler.pem"),
        path("scheduler-key.pem"),
        path("ca.pem"),
        path("ca-key.pem"),
    );
    let args = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-ca",
        &ca,
        "--tls-ca-key",
        &ca_key,
    ];
    let mut s = Scheduler::start_ec2(&world, &args).await?;
    s.tls_ca = Some(dir.join("ca.pem"));
    let token = s.user("kim").await?;
    let deployed = deploy_standby(&s, &token, "t", "c5.large.od").await;
    let (_, inst) = deployed.with_context(|| world.logs())?;
    // The scheduler reached the agent over https, verifying it against the CA.
    s.predict("kim", "public", "t", r#"{"over": "tls"}"#)
        .await?;
    let (ec2_id, _) = ec2_of(&world, &inst.instance_id).await?;
    let root = world.proxy().machine(&ec2_id).context("played")?.root;
    assert_eq!(
        std::fs::read_to_string(root.join("etc/aibro/ca.pem"))?.trim(),
        std::fs::read_to_string(dir.join("ca.pem"))?.trim(),
        "the boot script installed the scheduler's CA"
    );
    use std::os::unix::fs::PermissionsExt;
    let key = root.join("var/lib/aibro/agent/tls/agent-key.pem");
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    Ok(())
}

#[tokio::test]
async fn a_stop_cut_short_by_a_crash_is_finished_after_the_restart() -> Result<()> {
    let world = Ec2World::start().await?;
    let mut s = Scheduler::start_ec2_crashing_at(&world, Some("close.marked"), &[]).await?;
    let token = s.user("lou").await?;
    let job = deploy_ec2(&s, &token, "c").await?;
    let cooling = role_of(&job, InstanceRole::Cooling)?.instance_id;
    // The cool-down marks it STOPPING, and the scheduler dies before EC2 hears of it.
    s.wait_exit().await?;
    let (ec2_id, state) = ec2_of(&world, &cooling).await?;
    assert_eq!(state, InstanceState::Running, "the stop never reached EC2");
    s.spawn().await?;
    stopped(&s, &token, &job.job_id, &cooling).await?;
    moto_shows(&world, &ec2_id, InstanceState::Stopped).await?;
    let r = s.predict("lou", "public", "c", "{}").await?;
    assert_eq!(r.role(), InstanceRole::Standby);
    Ok(())
}

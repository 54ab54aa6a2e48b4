//! The EC2 test world on its own: moto behind the fault proxy, spoken to with
//! plain Query API form posts; the played boots of user data; the fake
//! systemctl.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aibro_tests::ec2::{
    call, live_processes, Delays, Ec2Error, Ec2World, FaultRule, InstanceState,
};
use anyhow::{bail, ensure, Result};
use base64::Engine;

const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

const SPOT: (&str, &str) = ("InstanceMarketOptions.MarketType", "spot");
const PERSISTENT: (&str, &str) = (
    "InstanceMarketOptions.SpotOptions.SpotInstanceType",
    "persistent",
);
const STOP_ON_INTERRUPTION: (&str, &str) = (
    "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior",
    "stop",
);

/// Writes a unit that sleeps, enables and starts it, as the agent's boot
/// script does.
const USER_DATA: &str = r#"#!/bin/bash
set -euo pipefail
echo "user data ran"
echo "${AIBRO_IMDS_ENDPOINT:-}" >"$AIBRO_ROOT/imds"
units="$AIBRO_ROOT/etc/systemd/system"
mkdir -p "$units"
cat >"$units/sleeper.service" <<UNIT
[Unit]
Description=A unit that sleeps

[Service]
ExecStart=/bin/sleep 1000
Environment=GREETING=hello

[Install]
WantedBy=multi-user.target
UNIT
"$AIBRO_SERVICE_CMD" daemon-reload
"$AIBRO_SERVICE_CMD" enable --now sleeper.service
"#;

/// Launches one instance through the proxy; its id.
async fn run_instance(world: &Ec2World, extra: &[(&str, &str)]) -> Result<String> {
    let mut params = vec![
        ("ImageId", world.ami()),
        ("MinCount", "1"),
        ("MaxCount", "1"),
        ("InstanceType", "t3.micro"),
    ];
    params.extend_from_slice(extra);
    let reply = call(world.endpoint(), "RunInstances", &params).await?;
    ensure!(reply.status == 200, "RunInstances: {}", reply.body);
    Ok(reply
        .texts(&["instancesSet", "item", "instanceId"])?
        .remove(0))
}

/// Calls `action` on one instance through the proxy; the HTTP status.
async fn act(world: &Ec2World, action: &str, id: &str) -> Result<u16> {
    Ok(call(world.endpoint(), action, &[("InstanceId.1", id)])
        .await?
        .status)
}

/// The state the proxy shows for `id`.
async fn shown(world: &Ec2World, id: &str) -> Result<InstanceState> {
    let reply = call(
        world.endpoint(),
        "DescribeInstances",
        &[("InstanceId.1", id)],
    )
    .await?;
    let names = reply.texts(&["instancesSet", "item", "instanceState", "name"])?;
    let name = names.first().map(String::as_str).unwrap_or_default();
    InstanceState::from_name(name).ok_or_else(|| anyhow::anyhow!("no state: {}", reply.body))
}

async fn wait_shown(world: &Ec2World, id: &str, want: InstanceState) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let state = shown(world, id).await?;
        if state == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{id} shows {state:?}, not {want:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `probe` until it gives a value.
async fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {DEADLINE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for the sleeper unit of a machine to run; its pid.
async fn wait_sleeper(root: &Path) -> Result<i32> {
    until("the unit runs", || sleeper(root)).await.map_err(|e| {
        let log = std::fs::read_to_string(root.join("var/log/user-data.log"));
        e.context(format!("user-data.log: {}", log.unwrap_or_default()))
    })
}

/// The pid of the sleeper unit of a machine once it is `sleep` (its pid file
/// is written before the exec), while it lives.
fn sleeper(root: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(root.join("run/sleeper.service.pid")).ok()?;
    let pid = pid.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let sleeping = cmdline.starts_with(b"/bin/sleep\0");
    (sleeping && live_processes(root).contains(&pid)).then_some(pid)
}

fn environ(pid: i32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|&b| b == 0)
        .map(|var| String::from_utf8_lossy(var).into_owned())
        .collect()
}

fn quick(world: &Ec2World, delay: Duration) {
    world.proxy().set_delays(Delays {
        pending: delay,
        stopping: delay,
        shutting_down: delay,
    });
}

#[tokio::test]
async fn calls_are_counted_per_action() -> Result<()> {
    let world = Ec2World::start().await?;
    let ami = [("ImageId.1", world.ami())];
    let images = call(world.endpoint(), "DescribeImages", &ami).await?;
    assert_eq!(
        images.texts(&["imagesSet", "item", "imageId"])?,
        [world.ami()]
    );
    for _ in 0..2 {
        call(world.endpoint(), "DescribeInstances", &[]).await?;
    }
    call(world.moto_url(), "DescribeInstances", &[]).await?;
    let expected = BTreeMap::from([
        ("DescribeImages".to_string(), 1),
        ("DescribeInstances".to_string(), 2),
    ]);
    assert_eq!(
        world.proxy().counts(),
        expected,
        "moto's own calls uncounted"
    );
    assert_eq!(world.proxy().count("RunInstances"), 0);
    world.proxy().reset_counts();
    assert!(world.proxy().counts().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_injected_fault_is_ec2s_error_and_is_not_forwarded() -> Result<()> {
    let world = Ec2World::start().await?;
    let capacity = Ec2Error::insufficient_instance_capacity();
    let big = FaultRule::new("RunInstances", capacity).when("InstanceType", "g4dn.12xlarge");
    world.proxy().fail(big.times(1));
    let tagged = [
        ("InstanceType", "g4dn.12xlarge"),
        ("TagSpecification.1.ResourceType", "instance"),
        ("TagSpecification.1.Tag.1.Key", "world"),
        ("TagSpecification.1.Tag.1.Value", "capacity"),
    ];
    let mut params = vec![
        ("ImageId", world.ami()),
        ("MinCount", "1"),
        ("MaxCount", "1"),
    ];
    params.extend_from_slice(&tagged);
    let refused = call(world.endpoint(), "RunInstances", &params).await?;
    assert_eq!(refused.status, 500);
    assert_eq!(
        refused.error_code().as_deref(),
        Some("InsufficientInstanceCapacity")
    );
    let head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>";
    assert!(refused.body.starts_with(head), "{}", refused.body);
    assert_eq!(refused.texts(&["Response", "RequestID"])?.len(), 1);
    assert!(world
        .instances_tagged("world", "capacity")
        .await?
        .is_empty());

    let id = run_instance(&world, &tagged).await?;
    let launched = world.instances_tagged("world", "capacity").await?;
    assert_eq!(
        launched,
        [(id.clone(), InstanceState::Running)],
        "the rule is spent"
    );

    let throttled = Ec2Error::request_limit_exceeded();
    world
        .proxy()
        .fail(FaultRule::new("StopInstances", throttled).when("InstanceId", &id));
    let other = run_instance(&world, &[]).await?;
    assert_eq!(act(&world, "StopInstances", &other).await?, 200);
    for _ in 0..2 {
        let reply = call(world.endpoint(), "StopInstances", &[("InstanceId.1", &id)]).await?;
        assert_eq!(
            (reply.status, reply.error_code()),
            (503, Some("RequestLimitExceeded".into()))
        );
    }
    assert_eq!(world.instance_state(&id).await?, InstanceState::Running);
    world.proxy().clear_faults();
    assert_eq!(act(&world, "StopInstances", &id).await?, 200);
    assert_eq!(world.proxy().count("StopInstances"), 4);
    Ok(())
}

#[tokio::test]
async fn a_one_time_spot_instance_cannot_be_stopped() -> Result<()> {
    let world = Ec2World::start().await?;
    let id = run_instance(&world, &[SPOT]).await?;
    let reply = call(world.endpoint(), "StopInstances", &[("InstanceId.1", &id)]).await?;
    assert_eq!(
        (reply.status, reply.error_code()),
        (400, Some("UnsupportedOperation".into()))
    );
    assert!(
        reply.body.contains("one-time Spot Instance request"),
        "{}",
        reply.body
    );
    assert_eq!(world.instance_state(&id).await?, InstanceState::Running);

    let params = [
        ("ImageId", world.ami()),
        ("MinCount", "1"),
        ("MaxCount", "1"),
    ];
    let stop_one_time = [&params[..], &[SPOT, STOP_ON_INTERRUPTION]].concat();
    let refused = call(world.endpoint(), "RunInstances", &stop_one_time).await?;
    let code = refused.error_code();
    assert_eq!(
        (refused.status, code.as_deref()),
        (400, Some("InvalidParameterCombination"))
    );
    Ok(())
}

#[tokio::test]
async fn a_persistent_spot_instance_that_stops_on_interruption_stops() -> Result<()> {
    let world = Ec2World::start().await?;
    quick(&world, Duration::ZERO);
    let id = run_instance(&world, &[SPOT, PERSISTENT, STOP_ON_INTERRUPTION]).await?;
    assert_eq!(act(&world, "StopInstances", &id).await?, 200);
    assert_eq!(world.instance_state(&id).await?, InstanceState::Stopped);
    wait_shown(&world, &id, InstanceState::Stopped).await?;
    Ok(())
}

#[tokio::test]
async fn spot_prices_are_the_ones_set() -> Result<()> {
    let world = Ec2World::start().await?;
    world.proxy().set_spot_price("g4dn.xlarge", 0.1578);
    world.proxy().set_spot_price("g4dn.12xlarge", 1.2);
    let linux = [
        ("InstanceType.1", "g4dn.xlarge"),
        ("ProductDescription.1", "Linux/UNIX"),
    ];
    let reply = call(world.endpoint(), "DescribeSpotPriceHistory", &linux).await?;
    assert_eq!(reply.status, 200);
    let at = |name: &str| reply.texts(&["spotPriceHistorySet", "item", name]);
    assert_eq!(at("instanceType")?, ["g4dn.xlarge"]);
    assert_eq!(at("spotPrice")?, ["0.157800"]);
    assert_eq!(at("productDescription")?, ["Linux/UNIX"]);
    assert_eq!(at("availabilityZone")?, ["us-east-1a"]);
    assert!(at("timestamp")?[0].ends_with(".000Z"));

    let windows = [("ProductDescription.1", "Windows")];
    let reply = call(world.endpoint(), "DescribeSpotPriceHistory", &windows).await?;
    assert!(reply
        .texts(&["spotPriceHistorySet", "item", "spotPrice"])?
        .is_empty());
    let reply = call(world.endpoint(), "DescribeSpotPriceHistory", &[]).await?;
    let all = reply.texts(&["spotPriceHistorySet", "item", "spotPrice"])?;
    assert_eq!(all, ["1.200000", "0.157800"]);
    assert_eq!(world.proxy().count("DescribeSpotPriceHistory"), 3);
    Ok(())
}

#[tokio::test]
async fn states_pass_through_ec2s_transitions() -> Result<()> {
    let world = Ec2World::start().await?;
    let delay = Duration::from_secs(2);
    quick(&world, delay);
    let steps = [
        (
            "RunInstances",
            InstanceState::Pending,
            InstanceState::Running,
        ),
        (
            "StopInstances",
            InstanceState::Stopping,
            InstanceState::Stopped,
        ),
        (
            "StartInstances",
            InstanceState::Pending,
            InstanceState::Running,
        ),
        (
            "TerminateInstances",
            InstanceState::ShuttingDown,
            InstanceState::Terminated,
        ),
    ];
    let mut id = String::new();
    for (action, during, after) in steps {
        let began = Instant::now();
        if action == "RunInstances" {
            id = run_instance(&world, &[]).await?;
        } else {
            assert_eq!(act(&world, action, &id).await?, 200);
        }
        assert_eq!(shown(&world, &id).await?, during, "right after {action}");
        assert_eq!(
            world.instance_state(&id).await?,
            after,
            "moto changed at once"
        );
        wait_shown(&world, &id, after).await?;
        assert!(
            began.elapsed() >= delay,
            "{action}: {during:?} for the delay"
        );
    }
    Ok(())
}

#[tokio::test]
async fn instance_status_shows_pending_too() -> Result<()> {
    let world = Ec2World::start().await?;
    quick(&world, Duration::from_secs(30));
    let id = run_instance(&world, &[]).await?;
    let params = [
        ("InstanceId.1", id.as_str()),
        ("IncludeAllInstances", "true"),
    ];
    let reply = call(world.endpoint(), "DescribeInstanceStatus", &params).await?;
    let codes = reply.texts(&["instanceStatusSet", "item", "instanceState", "code"])?;
    let names = reply.texts(&["instanceStatusSet", "item", "instanceState", "name"])?;
    assert_eq!(
        (codes, names),
        (vec!["0".to_string()], vec!["pending".to_string()])
    );
    Ok(())
}

#[tokio::test]
async fn a_played_machine_boots_stops_restarts_and_terminates() -> Result<()> {
    let world = Ec2World::start().await?;
    quick(&world, Duration::from_millis(200));
    world
        .proxy()
        .set_imds(|id| Some(format!("http://127.0.0.1:9/{id}")));
    let user_data = base64::engine::general_purpose::STANDARD.encode(USER_DATA);
    let id = run_instance(&world, &[("UserData", &user_data)]).await?;
    let root = world.proxy().machine(&id).expect("played").root;
    assert_eq!(root, world.dir().join(&id));

    let first = wait_sleeper(&root).await?;
    let machine = world.proxy().machine(&id).unwrap();
    assert!(machine.running && machine.boots == 1, "{machine:?}");
    let env = environ(first);
    assert!(env.contains(&"GREETING=hello".to_string()), "{env:?}");
    let imds = format!("http://127.0.0.1:9/{id}");
    assert!(
        env.contains(&format!("AIBRO_IMDS_ENDPOINT={imds}")),
        "{env:?}"
    );
    assert!(env.contains(&"AWS_EC2_METADATA_DISABLED=true".to_string()));
    assert_eq!(std::fs::read_to_string(root.join("imds"))?.trim(), imds);

    assert_eq!(act(&world, "StopInstances", &id).await?, 200);
    assert!(!world.proxy().machine(&id).unwrap().running);
    let halted = || !live_processes(&root).contains(&first) && !root.join("run").exists();
    until("the unit stops and run/ goes", || halted().then_some(())).await?;
    assert!(
        root.join("etc/systemd/system/sleeper.service").is_file(),
        "the disk stays"
    );

    assert_eq!(act(&world, "StartInstances", &id).await?, 200);
    let second = wait_sleeper(&root).await?;
    assert_ne!(first, second);
    let machine = world.proxy().machine(&id).unwrap();
    assert!(machine.running && machine.boots == 2, "{machine:?}");
    let log = std::fs::read_to_string(root.join("var/log/user-data.log"))?;
    assert_eq!(log.matches("user data ran").count(), 1, "{log}");

    assert_eq!(act(&world, "TerminateInstances", &id).await?, 200);
    until("the machine is gone", || (!root.exists()).then_some(())).await?;
    assert!(live_processes(&root).is_empty());
    assert!(!world.proxy().machine(&id).unwrap().running);
    Ok(())
}

#[tokio::test]
async fn dropping_the_world_kills_everything_it_started() -> Result<()> {
    let world = Ec2World::start().await?;
    quick(&world, Duration::ZERO);
    let user_data = base64::engine::general_purpose::STANDARD.encode(USER_DATA);
    let id = run_instance(&world, &[("UserData", &user_data)]).await?;
    let root = world.proxy().machine(&id).expect("played").root;
    wait_sleeper(&root).await?;
    let (dir, moto) = (world.dir().to_path_buf(), world.moto_url().to_string());
    drop(world);
    until("no process is left", || {
        live_processes(&dir).is_empty().then_some(())
    })
    .await?;
    assert!(!dir.exists());
    assert!(
        call(&moto, "DescribeInstances", &[]).await.is_err(),
        "moto is gone"
    );
    Ok(())
}

/// Runs the fake systemctl on a machine root, with a stray variable.
fn systemctl(root: &Path, args: &[&str]) -> (i32, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ec2/systemctl");
    let out = Command::new(script)
        .args(args)
        .env("AIBRO_ROOT", root)
        .env("STRAY", "not for units")
        .output()
        .expect("run systemctl");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text.trim().to_string())
}

/// Kills what a test left running under a root.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in live_processes(&self.0) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[tokio::test]
async fn the_fake_systemctl_runs_units_as_systemd_does() -> Result<()> {
    let temp = tempfile::tempdir()?;
    let root = temp.path().to_path_buf();
    let _reaper = Reaper(root.clone());
    std::fs::create_dir_all(root.join("etc/systemd/system"))?;
    std::fs::write(
        root.join("agent.env"),
        "# settings\nFROM_FILE=\"quoted value\"\n",
    )?;
    let unit = format!(
        "[Service]\nExecStart=/bin/sleep 1000\nEnvironment=ONE=1 \"TWO=two words\"\n\
         EnvironmentFile=-/nonexistent\nEnvironmentFile={}/agent.env\n",
        root.display()
    );
    std::fs::write(root.join("etc/systemd/system/sleeper.service"), unit)?;

    assert_eq!(systemctl(&root, &["daemon-reload"]).0, 0);
    assert_eq!(systemctl(&root, &["enable", "sleeper"]).0, 0);
    let wanted = root.join("etc/systemd/system/multi-user.target.wants/sleeper.service");
    assert!(wanted.is_file(), "enable links the unit");
    assert_eq!(
        systemctl(&root, &["is-active", "sleeper"]),
        (3, "inactive".into())
    );

    assert_eq!(systemctl(&root, &["start", "sleeper.service"]).0, 0);
    assert_eq!(
        systemctl(&root, &["is-active", "sleeper"]),
        (0, "active".into())
    );
    let pid = sleeper(&root).expect("running");
    let env = environ(pid);
    for var in ["ONE=1", "TWO=two words", "FROM_FILE=quoted value"] {
        assert!(env.contains(&var.to_string()), "{var} in {env:?}");
    }
    assert!(
        !env.iter().any(|v| v.starts_with("STRAY=")),
        "a clean environment"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(fields[3], pid.to_string(), "a session of its own");
    assert_eq!(systemctl(&root, &["start", "sleeper"]).0, 0);
    assert_eq!(sleeper(&root), Some(pid), "a running unit is left be");

    assert_eq!(systemctl(&root, &["stop", "sleeper"]).0, 0);
    assert_eq!(systemctl(&root, &["is-active", "sleeper"]).0, 3);
    assert!(!live_processes(&root).contains(&pid));
    assert!(!root.join("run/sleeper.service.pid").exists());

    let (code, text) = systemctl(&root, &["enable", "--now", "missing"]);
    assert_eq!(code, 1);
    assert!(text.contains("missing.service does not exist"), "{text}");
    Ok(())
}

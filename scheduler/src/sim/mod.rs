//! Simulation on the real code: a request trace replayed on tokio's paused
//! clock through the scheduler's own control plane, router, cool-down
//! lifecycle, store and ledger. Only the machines are simulated: instances
//! boot in process and their agents echo requests.

mod agent;
mod trace;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, User};
use crate::catalog::Catalog;
use crate::control::{Control, DeploySpec, Deployed, Settings};
use crate::ledger;
use crate::provider::Providers;
use crate::records::{ArtifactRecord, InstanceRecord, RECORD_VERSION};
use crate::state::{InstanceState, Role};
use crate::store::Store;

pub use trace::Trace;

#[cfg(test)]
mod chaos;

const USER: &str = "sim";
const MODEL: &str = "simulated";
const ARTIFACT: &str = "sha256:simulated";

#[derive(Debug, Clone)]
pub struct Options {
    pub standby: String,
    pub cooling: Option<String>,
    pub cool_down_s: u32,
    /// Virtual seconds an instance takes from launch to serving.
    pub boot: Duration,
}

/// What one instance did.
#[derive(Debug, Clone)]
pub struct InstanceReport {
    pub instance_id: String,
    pub role: Role,
    pub machine_id: String,
    pub requests: u64,
    pub running_ms: u64,
    pub on_demand_usd: f64,
    pub spot_usd: f64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub duration: Duration,
    pub requests: u64,
    /// Requests that found no instance serving (only before the first is up).
    pub unserved: u64,
    pub instances: Vec<InstanceReport>,
    /// The cooling machine (or the standby) running the whole day instead.
    pub always_on_machine: String,
    pub always_on_on_demand_usd: f64,
    pub always_on_spot_usd: f64,
}

/// A scheduler control plane on simulated machines with one deployed job.
pub struct Harness {
    pub control: Control,
    pub job_id: String,
    /// When the deploy was made.
    pub start: Instant,
    user: User,
    catalog: Catalog,
    provider: Arc<agent::SimProvider>,
    /// Interruption notices, as a spot market sends them.
    notices: mpsc::UnboundedSender<crate::provider::Interruption>,
    boot: Duration,
    /// Scheduler restarts so far (agents register at a new address each time).
    generation: u64,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Harness {
    /// Deploys on simulated machines and waits until the job serves (with its
    /// cooling instance, if any). Must run on a runtime whose clock is paused.
    pub async fn deploy(options: &Options, data_dir: &std::path::Path) -> anyhow::Result<Harness> {
        let store = Store::open(&data_dir.join("db"))?;
        let catalog = Catalog::shipped();
        let (boots, booted) = mpsc::unbounded_channel();
        let provider = Arc::new(agent::SimProvider::new(boots));
        let settings = Settings::in_process(data_dir);
        let plane = Plane::start(
            settings,
            store.clone(),
            &catalog,
            &provider,
            booted,
            options.boot,
            0,
        )
        .await;
        let Plane {
            control,
            notices,
            tasks,
            cancel,
        } = plane;

        let artifact = ArtifactRecord {
            v: RECORD_VERSION,
            digest: ARTIFACT.into(),
            size: 0,
            files: 1,
            unpacked_bytes: 0,
            has_predict: true,
            has_train: false,
        };
        store.put_artifact(USER, &artifact).await?;
        let spec = DeploySpec {
            model_name: MODEL.into(),
            standby: options.standby.clone(),
            cooling: options.cooling.clone().unwrap_or_default(),
            artifact_digest: ARTIFACT.into(),
            cool_down_period_s: options.cool_down_s,
            ..Default::default()
        };
        let user = User(USER.into());
        let start = Instant::now();
        let Deployed::Job(job) = control.deploy(&user, spec).await? else {
            anyhow::bail!("the simulator deploys no dry runs");
        };
        let job_id = job.id;
        wait_serving(&control, &job_id, options.cooling.is_some()).await?;
        Ok(Harness {
            control,
            job_id,
            start,
            user,
            catalog,
            provider,
            notices,
            boot: options.boot,
            generation: 0,
            tasks,
            cancel,
        })
    }

    pub async fn predict(&self) -> crate::error::Result<crate::router::Routed> {
        self.control
            .predict(
                USER,
                "public",
                MODEL,
                b"{}".to_vec(),
                "application/json".into(),
            )
            .await
    }

    pub fn instance(&self, role: Role) -> InstanceRecord {
        let store = self.control.store();
        let job = store.job(&self.job_id).unwrap().expect("the job");
        let instances = store.instances_of(&job).unwrap();
        instances
            .into_iter()
            .find(|i| i.role == role)
            .expect("an instance in that role")
    }

    /// The scheduler crashes and starts again on the same store: every task
    /// of the old control plane ends, a new one recovers, and the agents of
    /// running machines register with it again (as real agents do).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.generation += 1;
        let (boots, booted) = mpsc::unbounded_channel();
        self.provider.rewire(boots);
        let plane = Plane::start(
            self.control.settings().clone(),
            self.control.store().clone(),
            &self.catalog,
            &self.provider,
            booted,
            self.boot,
            self.generation,
        )
        .await;
        plane.control.recover().await?;
        let store = plane.control.store();
        let job = store.job(&self.job_id)?.expect("the job");
        for inst in store.instances_of(&job)? {
            if !inst.state.is_closed() && self.provider.running().contains(&inst.id) {
                self.provider.reboot(&inst.id);
            }
        }
        self.control = plane.control;
        self.notices = plane.notices;
        self.tasks = plane.tasks;
        self.cancel = plane.cancel;
        Ok(())
    }

    /// The simulated machines running now, by instance id.
    pub fn running_machines(&self) -> std::collections::BTreeSet<String> {
        self.provider.running()
    }

    /// The spot market interrupts the instance's machine.
    pub fn interrupt(&self, instance_id: &str, notice: Duration) {
        let _ = self.notices.send(crate::provider::Interruption {
            instance_id: instance_id.to_string(),
            notice,
        });
    }

    /// The instance's machine dies; the scheduler hears of it as its agent
    /// going silent.
    pub async fn lose(&self, inst: &InstanceRecord) {
        self.provider.crash(&inst.id);
        self.control
            .lost(inst, format!("simulated: {} died", inst.id))
            .await;
    }

    /// Completes the job and waits until its instances are closed.
    pub async fn complete(&self) -> anyhow::Result<()> {
        self.control.complete(&self.user, &self.job_id, "").await?;
        let mut events = self.control.watch(self.job_id.clone());
        while let Some(event) = events.next().await {
            if event?.last {
                break;
            }
        }
        Ok(())
    }

    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A control plane on the simulated machines, with its tasks.
struct Plane {
    control: Control,
    notices: mpsc::UnboundedSender<crate::provider::Interruption>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Plane {
    async fn start(
        settings: Settings,
        store: Store,
        catalog: &Catalog,
        provider: &Arc<agent::SimProvider>,
        booted: mpsc::UnboundedReceiver<agent::Boot>,
        boot: Duration,
        generation: u64,
    ) -> Plane {
        let providers = catalog
            .types()
            .map(|t| t.provider.clone())
            .fold(Providers::default(), |p, name| {
                p.with(&name, provider.clone())
            });
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let auth = Auth::open(store.clone()).await.expect("auth on the store");
        let control = Control::new(
            settings,
            store,
            catalog.clone(),
            providers,
            auth,
            tasks.clone(),
            cancel.clone(),
        );
        tasks.spawn(agent::boot_loop(
            control.clone(),
            provider.clone(),
            booted,
            boot,
            cancel.clone(),
            generation,
        ));
        let (notices, interruptions) = mpsc::unbounded_channel();
        control.start_interruptions(interruptions);
        Plane {
            control,
            notices,
            tasks,
            cancel,
        }
    }
}

/// Runs the trace. Must run on a tokio runtime whose clock is paused.
pub async fn run(
    trace: &Trace,
    options: &Options,
    data_dir: &std::path::Path,
) -> anyhow::Result<Report> {
    let sim = Harness::deploy(options, data_dir).await?;
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let mut unserved = 0;
    for at in &trace.requests {
        tokio::time::sleep_until(sim.start + *at).await;
        match sim.predict().await {
            Ok(routed) => *served.entry(routed.instance_id).or_default() += 1,
            Err(_) => unserved += 1,
        }
    }
    tokio::time::sleep_until(sim.start + trace.end).await;
    sim.complete().await?;

    let store = sim.control.store();
    let job = store.job(&sim.job_id)?.expect("the job");
    let instances = store.instances_of(&job)?;
    let now = crate::clock::now_ms();
    let hours = |ms: u64| ms as f64 / 3_600_000.0;
    let prices = |machine_id: &str| {
        sim.catalog
            .resolve(machine_id)
            .map_or((0.0, 0.0), |m| (m.kind.on_demand_price, m.kind.spot_price))
    };
    let reports: Vec<InstanceReport> = instances
        .iter()
        .map(|inst| {
            let running_ms = ledger::running_ms(inst, now);
            let (od, spot) = prices(&inst.machine_id);
            InstanceReport {
                instance_id: inst.id.clone(),
                role: inst.role,
                machine_id: inst.machine_id.clone(),
                requests: served.get(&inst.id).copied().unwrap_or(0),
                running_ms,
                on_demand_usd: od * hours(running_ms),
                spot_usd: spot * hours(running_ms),
            }
        })
        .collect();
    let span_ms: u64 = reports
        .iter()
        .filter(|r| r.role.is_primary())
        .map(|r| r.running_ms)
        .sum();
    let always_on_machine = job.cooling.clone().unwrap_or(job.standby.clone());
    let (od, spot) = prices(&always_on_machine);
    sim.shutdown().await;
    Ok(Report {
        duration: trace.end,
        requests: trace.requests.len() as u64,
        unserved,
        instances: reports,
        always_on_machine,
        always_on_on_demand_usd: od * hours(span_ms),
        always_on_spot_usd: spot * hours(span_ms),
    })
}

/// Waits (on events, not time) until the job is DEPLOYED and, with a cooling
/// instance, until that one serves too.
async fn wait_serving(control: &Control, job_id: &str, with_cooling: bool) -> anyhow::Result<()> {
    let mut events = control.watch(job_id.to_string());
    while let Some(event) = events.next().await {
        let event = event?;
        if event.job.is_ended() {
            anyhow::bail!("the simulated job ended before serving");
        }
        let job = control.store().job(job_id)?.expect("the job");
        let instances = control.store().instances_of(&job)?;
        let serving: Vec<&str> = instances
            .iter()
            .filter(|i| i.state == InstanceState::EXECUTING)
            .filter(|i| i.role == Role::Standby || (with_cooling && i.role == Role::Cooling))
            .map(|i| i.id.as_str())
            .collect();
        if serving.len() == 1 + usize::from(with_cooling) {
            // EXECUTING is published just before the router takes the instance.
            let route = control.router().route(USER, MODEL).expect("the route");
            // Yielding lets that happen without moving the virtual clock.
            while serving.iter().any(|id| route.backend(id).is_none()) {
                tokio::task::yield_now().await;
            }
            return Ok(());
        }
    }
    anyhow::bail!("the simulated job never served")
}

impl Report {
    /// The table `aibro-scheduler simulate` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let header = [
            "instance",
            "role",
            "machine",
            "requests",
            "running",
            "on-demand $",
            "spot $",
        ];
        table_line(&mut out, header.map(String::from));
        for i in &self.instances {
            table_line(
                &mut out,
                [
                    i.instance_id.clone(),
                    format!("{:?}", i.role).to_lowercase(),
                    i.machine_id.clone(),
                    i.requests.to_string(),
                    format!("{:.2}h", i.running_ms as f64 / 3_600_000.0),
                    format!("{:.2}", i.on_demand_usd),
                    format!("{:.2}", i.spot_usd),
                ],
            );
        }
        let od: f64 = self.instances.iter().map(|i| i.on_demand_usd).sum();
        let spot: f64 = self.instances.iter().map(|i| i.spot_usd).sum();
        let (always_od, always_spot) = (self.always_on_on_demand_usd, self.always_on_spot_usd);
        let always = format!("{} always on", self.always_on_machine);
        summary_line(&mut out, "total", format!("{od:.2}"), format!("{spot:.2}"));
        summary_line(
            &mut out,
            &always,
            format!("{always_od:.2}"),
            format!("{always_spot:.2}"),
        );
        summary_line(
            &mut out,
            "saving",
            saving(od, always_od),
            saving(spot, always_spot),
        );
        out.push_str(&format!(
            "{} requests over {:.1} h, {} unserved\n",
            self.requests,
            self.duration.as_secs_f64() / 3600.0,
            self.unserved
        ));
        out
    }
}

fn table_line(out: &mut String, cols: [String; 7]) {
    out.push_str(&format!(
        "{:<38} {:<8} {:<18} {:>9} {:>9} {:>12} {:>9}\n",
        cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6]
    ));
}

/// A row with a label and the two cost columns only.
fn summary_line(out: &mut String, label: &str, on_demand: String, spot: String) {
    let empty = String::new;
    table_line(
        out,
        [
            label.to_string(),
            empty(),
            empty(),
            empty(),
            empty(),
            on_demand,
            spot,
        ],
    );
}

/// How much less `a` is than `b`, in percent.
fn saving(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.1}%", 100.0 * (1.0 - a / b))
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    //! The cooling lifecycle's timers on tokio's paused clock, through the real
    //! control plane with simulated machines: countdown reset, stop at expiry,
    //! wake on request, one wake per burst, complete during wake-up.

    use std::time::Duration;

    use super::*;
    use crate::state::InstanceState;

    const COOL_DOWN: u64 = 600;

    fn options(boot_s: u64) -> Options {
        Options {
            standby: "g4dn.4xlarge.od".into(),
            cooling: Some("g4dn.12xlarge.od".into()),
            cool_down_s: COOL_DOWN as u32,
            boot: Duration::from_secs(boot_s),
        }
    }

    /// Every stored event pairs its job and instance states legally (the seed's map).
    fn assert_history_legal(sim: &Harness) {
        let store = sim.control.store();
        let job = store.job(&sim.job_id).unwrap().unwrap();
        let instances = store.instances_of(&job).unwrap();
        for e in store.events(&sim.job_id).unwrap() {
            if let Some(state) = e.instance {
                let role = instances
                    .iter()
                    .find(|i| i.id == e.instance_id)
                    .unwrap()
                    .role;
                assert!(
                    crate::state::pair_allowed(job.kind, e.job, role, state),
                    "{e:?}"
                );
            }
        }
    }

    async fn at(sim: &Harness, s: u64) {
        tokio::time::sleep_until(sim.start + Duration::from_secs(s)).await;
    }

    fn marks(sim: &Harness, phase: &str) -> usize {
        let events = sim.control.store().events(&sim.job_id).unwrap();
        events.iter().filter(|e| e.phase == phase).count()
    }

    /// The times (virtual ms since the deploy) at which the cooling instance entered `state`.
    fn entered(sim: &Harness, state: InstanceState) -> Vec<u64> {
        let cooling = sim.instance(Role::Cooling).id;
        let events = sim.control.store().events(&sim.job_id).unwrap();
        let created = events[0].at_ms;
        events
            .iter()
            .filter(|e| e.instance_id == cooling && e.instance == Some(state))
            .map(|e| e.at_ms - created)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_expiry_showing_cooling_while_idle() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Harness::deploy(&options(0), dir.path()).await.unwrap();
        assert_eq!(sim.predict().await.unwrap().role, Role::Cooling);
        at(&sim, 30).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::EXECUTING);
        at(&sim, 90).await;
        assert_eq!(
            sim.instance(Role::Cooling).state,
            InstanceState::COOLING,
            "idle for 60 s"
        );
        at(&sim, COOL_DOWN - 1).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::COOLING);
        at(&sim, COOL_DOWN + 1).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::STOPPED);
        assert_eq!(entered(&sim, InstanceState::STOPPING), [COOL_DOWN * 1000]);
        assert_eq!(
            sim.instance(Role::Standby).state,
            InstanceState::EXECUTING,
            "the standby never stops"
        );
        assert_history_legal(&sim);
        sim.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_restarts_the_countdown() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Harness::deploy(&options(0), dir.path()).await.unwrap();
        at(&sim, 500).await;
        assert_eq!(sim.predict().await.unwrap().role, Role::Cooling);
        assert_eq!(
            sim.instance(Role::Cooling).state,
            InstanceState::COOLING,
            "updated by the lifecycle, not the request"
        );
        at(&sim, 501).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::EXECUTING);
        at(&sim, 1000).await;
        assert!(
            sim.instance(Role::Cooling).state.is_serving(),
            "600 s after the first request, but not the last"
        );
        at(&sim, 500 + COOL_DOWN + 1).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::STOPPED);
        assert_eq!(
            entered(&sim, InstanceState::STOPPING),
            [(500 + COOL_DOWN) * 1000]
        );
        assert_history_legal(&sim);
        sim.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_wakes_the_stopped_instance_once_per_burst() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Harness::deploy(&options(45), dir.path()).await.unwrap();
        at(&sim, 2000).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::STOPPED);
        assert_eq!(
            marks(&sim, "instance woken"),
            0,
            "requests during the first boot do not count"
        );

        // A burst: every request is answered by the standby while the cooling instance wakes.
        let burst = (0..50).map(|_| sim.predict());
        for routed in futures::future::join_all(burst).await {
            assert_eq!(routed.unwrap().role, Role::Standby);
        }
        at(&sim, 2010).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::LAUNCHING);
        assert_eq!(
            sim.predict().await.unwrap().role,
            Role::Standby,
            "the standby serves until it is ready"
        );
        at(&sim, 2050).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::EXECUTING);
        assert_eq!(sim.predict().await.unwrap().role, Role::Cooling);
        assert_eq!(marks(&sim, "instance woken"), 1);
        assert_eq!(
            marks(&sim, "env reused"),
            1,
            "the woken instance kept its environment"
        );
        assert_history_legal(&sim);
        sim.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn complete_during_wake_up_terminates_everything() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Harness::deploy(&options(120), dir.path()).await.unwrap();
        at(&sim, 2000).await;
        assert_eq!(sim.predict().await.unwrap().role, Role::Standby);
        at(&sim, 2010).await;
        assert_eq!(sim.instance(Role::Cooling).state, InstanceState::LAUNCHING);
        sim.complete().await.unwrap();
        at(&sim, 5000).await;
        for role in [Role::Standby, Role::Cooling] {
            assert_eq!(sim.instance(role).state, InstanceState::TERMINATED);
        }
        assert!(sim.predict().await.is_err(), "no longer served");
        assert_eq!(marks(&sim, "instance woken"), 1);
        assert_eq!(
            marks(&sim, "model loaded"),
            2,
            "the woken agent never got to serve"
        );
        assert_history_legal(&sim);
        sim.shutdown().await;
    }

    /// The original AIbro case study, from the shipped trace.
    #[tokio::test(start_paused = true)]
    async fn the_case_study_day_costs_what_aibro_said() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/traces/case-study-day.txt"
        ))
        .unwrap();
        let trace = Trace::parse(&text).unwrap();
        let cents = |v: f64| (v * 100.0).round() as i64;
        let dir = tempfile::tempdir().unwrap();
        let report = run(&trace, &options(0), dir.path()).await.unwrap();
        let od: f64 = report.instances.iter().map(|i| i.on_demand_usd).sum();
        let spot: f64 = report.instances.iter().map(|i| i.spot_usd).sum();
        assert_eq!((cents(od), cents(spot)), (4266, 1542), "{}", report.table());
        assert_eq!(
            (
                cents(report.always_on_on_demand_usd),
                cents(report.always_on_spot_usd)
            ),
            (6256, 2576)
        );
        let cooling = report
            .instances
            .iter()
            .find(|i| i.role == Role::Cooling)
            .unwrap();
        assert_eq!(cooling.running_ms, 6 * 3_600_000);
        assert_eq!(report.unserved, 0);
        assert_eq!(
            report.instances.iter().map(|i| i.requests).sum::<u64>(),
            report.requests
        );

        let dir = tempfile::tempdir().unwrap();
        let standby_only = Options {
            standby: "g4dn.12xlarge.od".into(),
            cooling: None,
            ..options(0)
        };
        let report = run(&trace, &standby_only, dir.path()).await.unwrap();
        let od: f64 = report.instances.iter().map(|i| i.on_demand_usd).sum();
        assert_eq!(cents(od), 6256);
    }
}

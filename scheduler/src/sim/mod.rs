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
use crate::control::{Control, DeploySpec, Settings};
use crate::ledger;
use crate::provider::Providers;
use crate::state::{InstanceState, Role};
use crate::store::{ArtifactRecord, InstanceRecord, Store, RECORD_VERSION};

pub use trace::Trace;

#[cfg(test)]
mod chaos;
#[cfg(test)]
mod tests;

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
        let (job, _) = control.deploy(&user, spec, false).await?;
        let job_id = job.expect("a job").id;
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
        let line = |out: &mut String, cols: [&str; 7]| {
            out.push_str(&format!(
                "{:<38} {:<8} {:<18} {:>9} {:>9} {:>12} {:>9}\n",
                cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6]
            ));
        };
        line(
            &mut out,
            [
                "instance",
                "role",
                "machine",
                "requests",
                "running",
                "on-demand $",
                "spot $",
            ],
        );
        for i in &self.instances {
            let running = format!("{:.2}h", i.running_ms as f64 / 3_600_000.0);
            line(
                &mut out,
                [
                    &i.instance_id,
                    &format!("{:?}", i.role).to_lowercase(),
                    &i.machine_id,
                    &i.requests.to_string(),
                    &running,
                    &format!("{:.2}", i.on_demand_usd),
                    &format!("{:.2}", i.spot_usd),
                ],
            );
        }
        let od: f64 = self.instances.iter().map(|i| i.on_demand_usd).sum();
        let spot: f64 = self.instances.iter().map(|i| i.spot_usd).sum();
        line(
            &mut out,
            [
                "total",
                "",
                "",
                "",
                "",
                &format!("{od:.2}"),
                &format!("{spot:.2}"),
            ],
        );
        let always = format!("{} always on", self.always_on_machine);
        line(
            &mut out,
            [
                &always,
                "",
                "",
                "",
                "",
                &format!("{:.2}", self.always_on_on_demand_usd),
                &format!("{:.2}", self.always_on_spot_usd),
            ],
        );
        let saving = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.1}%", 100.0 * (1.0 - a / b))
            } else {
                "-".into()
            }
        };
        line(
            &mut out,
            [
                "saving",
                "",
                "",
                "",
                "",
                &saving(od, self.always_on_on_demand_usd),
                &saving(spot, self.always_on_spot_usd),
            ],
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

//! Simulated machines: a provider whose instances boot in process after a
//! virtual delay, and agents that report their phases at once (a woken
//! instance reuses its environment) and echo every request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aibro_proto::v1::{AgentPredictRequest, AgentPredictResponse};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::catalog::Machine;
use crate::control::{AgentReport, Control, Registration, ReportedPhase};
use crate::link::AgentLink;
use crate::provider::{Provider, ProviderError};
use crate::records::JobRecord;

pub(crate) struct Boot {
    instance_id: String,
    /// Started again on its kept disk.
    restart: bool,
}

pub(super) struct SimProvider {
    /// To the boot loop of the control plane running now.
    boots: Mutex<mpsc::UnboundedSender<Boot>>,
    running: Mutex<HashSet<String>>,
}

impl SimProvider {
    pub(super) fn new(boots: mpsc::UnboundedSender<Boot>) -> Self {
        SimProvider {
            boots: Mutex::new(boots),
            running: Mutex::default(),
        }
    }

    /// Boots go to a new control plane's loop (the scheduler restarted).
    pub(super) fn rewire(&self, boots: mpsc::UnboundedSender<Boot>) {
        *self.boots.lock().expect("sim lock") = boots;
    }

    /// The agent of a running machine registers again (with a scheduler
    /// that restarted), after the boot delay.
    pub(super) fn reboot(&self, instance_id: &str) {
        let _ = self.boots.lock().expect("sim lock").send(Boot {
            instance_id: instance_id.to_string(),
            restart: true,
        });
    }

    pub(super) fn running(&self) -> std::collections::BTreeSet<String> {
        self.running
            .lock()
            .expect("sim lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The machine dies (its agent stops answering).
    pub(super) fn crash(&self, instance_id: &str) {
        self.running.lock().expect("sim lock").remove(instance_id);
    }

    fn is_running(&self, instance_id: &str) -> bool {
        self.running.lock().expect("sim lock").contains(instance_id)
    }

    fn boot(&self, instance_id: &str, restart: bool) -> BoxFuture<'_, Result<(), ProviderError>> {
        self.running
            .lock()
            .expect("sim lock")
            .insert(instance_id.to_string());
        let _ = self.boots.lock().expect("sim lock").send(Boot {
            instance_id: instance_id.to_string(),
            restart,
        });
        async { Ok(()) }.boxed()
    }

    fn halt(&self, instance_id: &str) -> BoxFuture<'_, Result<(), ProviderError>> {
        self.running.lock().expect("sim lock").remove(instance_id);
        async { Ok(()) }.boxed()
    }
}

impl Provider for SimProvider {
    fn launch<'a>(
        &'a self,
        instance_id: &'a str,
        _: &'a Machine,
        _: crate::provider::LaunchFor<'a>,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.boot(instance_id, false)
    }

    fn stop<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.halt(instance_id)
    }

    fn start<'a>(
        &'a self,
        instance_id: &'a str,
        _: &'a Machine,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.boot(instance_id, true)
    }

    fn terminate<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.halt(instance_id)
    }

    fn is_running(&self, instance_id: &str) -> Option<bool> {
        Some(SimProvider::is_running(self, instance_id))
    }

    /// It stands in for every provider: a cloud's types are as unbounded as
    /// the cloud's own provider makes them.
    fn capacity(&self, kind: &crate::catalog::MachineType) -> Option<u32> {
        (kind.provider == crate::provider::ec2::EC2).then_some(crate::provider::UNBOUNDED)
    }
}

/// Registers each booted instance's agent after `boot` of virtual time.
pub(super) async fn boot_loop(
    control: Control,
    provider: Arc<SimProvider>,
    mut boots: mpsc::UnboundedReceiver<Boot>,
    boot: Duration,
    cancel: CancellationToken,
    generation: u64,
) {
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = boots.recv() => next,
        };
        let Some(Boot {
            instance_id,
            restart,
        }) = next
        else {
            return;
        };
        let control = control.clone();
        let provider = provider.clone();
        control.clone().spawn(async move {
            tokio::time::sleep(boot).await;
            if !provider.is_running(&instance_id) {
                return;
            }
            let agent = SimAgent {
                control: control.clone(),
                provider: provider.clone(),
                instance_id: instance_id.clone(),
                restart,
            };
            let registration = Registration {
                instance_id: instance_id.clone(),
                address: format!("sim-{generation}"),
                sandbox: "none".into(),
                ..Registration::default()
            };
            if let Err(e) = control.attach(&registration, Arc::new(agent)).await {
                tracing::warn!(instance_id, error = %e, "simulated agent could not attach");
            }
        });
    }
}

struct SimAgent {
    control: Control,
    provider: Arc<SimProvider>,
    instance_id: String,
    restart: bool,
}

impl AgentLink for SimAgent {
    fn prepare(&self, job: &JobRecord) -> BoxFuture<'static, Result<(), Status>> {
        let control = self.control.clone();
        let instance_id = self.instance_id.clone();
        let env_cached = self.restart;
        let job_id = job.id.clone();
        control.clone().spawn(async move {
            for phase in [
                ReportedPhase::GearingUpEnv,
                ReportedPhase::ModelLoading { env_cached },
                ReportedPhase::Serving,
            ] {
                let report = AgentReport {
                    job_id: job_id.clone(),
                    phase,
                    message: String::new(),
                };
                if control.report(&instance_id, report).await.is_err() {
                    return;
                }
            }
        });
        async { Ok(()) }.boxed()
    }

    fn predict(
        &self,
        request: AgentPredictRequest,
    ) -> BoxFuture<'static, Result<AgentPredictResponse, Status>> {
        let running = self.provider.is_running(&self.instance_id);
        async move {
            if !running {
                return Err(Status::unavailable("the simulated instance is not running"));
            }
            Ok(AgentPredictResponse {
                output: request.payload,
                content_type: request.content_type,
            })
        }
        .boxed()
    }

    fn stop(&self, _: bool) -> BoxFuture<'static, Result<(), Status>> {
        async { Ok(()) }.boxed()
    }

    fn dry_run(
        &self,
        _: &JobRecord,
    ) -> BoxFuture<'static, Result<aibro_repo::DryRunOutcome, Status>> {
        async { Err(Status::unimplemented("the simulator runs no dry runs")) }.boxed()
    }

    fn train(&self, _: &JobRecord) -> BoxFuture<'static, Result<(), Status>> {
        async {
            Err(Status::unimplemented(
                "the simulator runs inference jobs only",
            ))
        }
        .boxed()
    }
}

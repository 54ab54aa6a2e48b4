//! Moving an instance from one status to the next, and closing it: the
//! router stops sending it requests (they drain), its agent ends its
//! workers, its provider stops the machine (disk kept) or terminates it,
//! and it is recorded CLOSED with its machine given back.

use std::time::Duration;

use crate::provider::ProviderError;
use crate::records::{InstanceRecord, TimelineNote};
use crate::state::{self, InstanceEvent, InstanceState, InstanceStatus, JobStatus};
use crate::store::StoreError;

use super::{instance_mut, Control};

const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between tries to close an instance the provider failed to.
const CLOSE_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a closing instance waits for requests already sent to it.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl Control {
    /// Stops one instance, keeping its disk, and returns once it is CLOSED.
    pub(crate) async fn stop_instance(&self, inst: &InstanceRecord) {
        if self
            .move_instance(inst, InstanceEvent::Stop, None)
            .await
            .is_ok()
        {
            self.close(&inst.id).await;
        }
    }

    /// Closes a cooling instance whose agent failed (`Terminate`) or went
    /// silent (`Stop`: it may wake again), once its job allows: while the job
    /// is QUEUING its instances must stay LAUNCHING (the seed's map), so this
    /// waits for it to be DEPLOYED. A job that ends terminates it anyway.
    pub(crate) async fn close_when_allowed(&self, instance_id: &str, event: InstanceEvent) {
        loop {
            let Ok(Some(inst)) = self.store().instance(instance_id) else {
                return;
            };
            match self.store().job(&inst.job_id) {
                Ok(Some(job)) if job.state.status == JobStatus::Queuing => {
                    tokio::time::sleep(self.settings().lifecycle_tick).await;
                }
                Ok(Some(job)) if !job.state.is_ended() => {
                    if self.move_instance(&inst, event, None).await.is_ok() {
                        self.close(instance_id).await;
                    }
                    return;
                }
                _ => return,
            }
        }
    }

    /// Applies one instance event (when still legal) with an optional mark
    /// on the timeline.
    pub(crate) async fn move_instance(
        &self,
        inst: &InstanceRecord,
        event: InstanceEvent,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        let id = inst.id.clone();
        let moved = self
            .store()
            .update(&inst.job_id, |_, insts| {
                let inst = instance_mut(insts, &id)?;
                inst.state = state::next_instance(inst.state, event)?;
                if event == InstanceEvent::Start {
                    inst.ready = false;
                    inst.agent_address.clear();
                }
                Ok(note
                    .map(|n| TimelineNote::phase(&id, n))
                    .into_iter()
                    .collect())
            })
            .await;
        if let Err(e) = &moved {
            tracing::info!(instance_id = %inst.id, ?event, error = %e, "instance not moved");
        }
        moved.map(drop)
    }

    /// Closes the instance in the background: see [`Control::close`].
    pub(crate) fn start_close(&self, instance_id: String) {
        let this = self.clone();
        self.spawn(async move { this.close(&instance_id).await });
    }

    /// Does what the instance's CLOSING substatus asks (stop or terminate) and
    /// records it CLOSED. Re-reads the state under the instance lock, so a
    /// terminate that overtook a stop is still carried out, and a second close
    /// of the same instance does nothing. A provider that fails is asked
    /// again, less and less often: the machine must not be forgotten.
    #[tracing::instrument(skip(self))]
    pub(crate) async fn close(&self, instance_id: &str) {
        crate::crash::point("close.marked");
        let _lock = self.lock_instance(instance_id).await;
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(inst) = self.closing(instance_id) else {
                return;
            };
            self.detach(&inst).await;
            match self.close_machine(&inst).await {
                Err(Closing::Retry(e)) => {
                    tracing::error!(error = %e, "provider failed to close the instance; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(CLOSE_RETRY_MAX);
                }
                Err(Closing::Stale) => {}
                Err(Closing::GiveUp(why)) => return tracing::error!("{why}"),
                Ok(()) => return,
            }
        }
    }

    /// The instance, when it is CLOSING (STOPPING or TERMINATING).
    fn closing(&self, instance_id: &str) -> Option<InstanceRecord> {
        match self.store().instance(instance_id) {
            Ok(Some(inst)) if inst.state.status == InstanceStatus::Closing => Some(inst),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the instance");
                None
            }
        }
    }

    /// Takes the instance out of its route (its requests drain) and has its
    /// agent end the job's workers.
    async fn detach(&self, inst: &InstanceRecord) {
        if let Ok(Some(job)) = self.store().job(&inst.job_id) {
            if let Some(backend) =
                self.router()
                    .remove_backend(&job.owner, &job.model_name, &inst.id)
            {
                backend.drain(DRAIN_LIMIT).await;
            }
        }
        let terminate = inst.state == InstanceState::TERMINATING;
        if let Some(agent) = self.agent_link(inst) {
            let _ = tokio::time::timeout(AGENT_STOP_TIMEOUT, agent.stop(terminate)).await;
        }
        self.links().forget(&inst.id);
    }

    /// Has the provider stop or terminate the machine, then records the
    /// instance CLOSED and gives the machine back (a stopped one on a
    /// provider whose stopped machines stay reserved keeps it).
    async fn close_machine(&self, inst: &InstanceRecord) -> Result<(), Closing> {
        let terminate = inst.state == InstanceState::TERMINATING;
        let machine = self.catalog().resolve(&inst.machine_id).ok_or_else(|| {
            Closing::GiveUp(format!("machine `{}` left the catalog", inst.machine_id))
        })?;
        let provider = self
            .machines()
            .provider(&machine)
            .map_err(|e| Closing::GiveUp(format!("no provider to close the instance: {e}")))?;
        if terminate {
            provider.terminate(&inst.id).await
        } else {
            provider.stop(&inst.id).await
        }
        .map_err(Closing::Retry)?;
        crate::crash::point("close.provider_done");
        let acted = inst.state;
        self.store()
            .update(&inst.job_id, |_, insts| {
                let inst = instance_mut(insts, &inst.id)?;
                if inst.state != acted {
                    return Err(StoreError::Stale(
                        "the instance was asked to close otherwise".into(),
                    ));
                }
                inst.state = state::next_instance(inst.state, InstanceEvent::Closed)?;
                Ok(vec![])
            })
            .await
            .map_err(|e| match e {
                StoreError::Stale(_) => Closing::Stale,
                e => Closing::GiveUp(format!("cannot record the instance closed: {e}")),
            })?;
        if terminate || !provider.stopped_holds_machine() {
            self.machines().capacity().release(&inst.id);
        }
        Ok(())
    }
}

/// Why closing an instance did not finish.
enum Closing {
    /// The provider failed: try again.
    Retry(ProviderError),
    /// The instance was asked to close otherwise meanwhile: look again.
    Stale,
    /// Nothing more can be done.
    GiveUp(String),
}

//! What the scheduler sends to agents, in the background: a job to prepare
//! (an agent that refuses it fails its instance) and a training run to start
//! (an agent that cannot start it cancels the job).

use crate::link::Link;
use crate::records::JobRecord;

use super::Control;

impl Control {
    /// Sends the job to its instance's agent; an agent that refuses it fails
    /// the instance.
    pub(crate) fn prepare(&self, job: &JobRecord, instance_id: &str, link: Link) {
        let prepared = link.prepare(job);
        let this = self.clone();
        let instance_id = instance_id.to_string();
        self.spawn(async move {
            let Err(status) = prepared.await else { return };
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) {
                // Not a refusal: the connect timeout or the heartbeats
                // tell whether the agent is gone.
                return tracing::warn!(instance_id, "Prepare did not reach the agent: {status}");
            }
            let reason = format!("the agent refused the job: {}", status.message());
            if let Ok(Some(inst)) = this.store().instance(&instance_id) {
                this.instance_failed(&inst, reason).await;
            }
        });
    }

    /// The trainer is ready: start train() on it.
    pub(crate) fn start_training(&self, job: &JobRecord, instance_id: &str) {
        let inst = self.store().instance(instance_id).ok().flatten();
        let Some(link) = inst.and_then(|inst| self.agent_link(&inst)) else {
            return;
        };
        let started = link.train(job);
        let this = self.clone();
        let job_id = job.id.clone();
        self.spawn(async move {
            if let Err(status) = started.await {
                let reason = format!("the agent could not start training: {}", status.message());
                this.cancel(&job_id, reason).await;
            }
        });
    }
}

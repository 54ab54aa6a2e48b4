//! Routes of inference jobs: a deployed job's route is opened at once (no
//! backends until an instance serves), an instance whose agent serves joins
//! it, and a job with a cooling instance gets its cooling supervisor.

use crate::records::{InstanceRecord, JobRecord};
use crate::router::Backend;
use crate::state::{InstanceState, JobKind, JobStatus, Role};

use super::Control;

impl Control {
    /// Opens the job's route (no backends until an instance serves).
    pub(crate) fn open_route(&self, job: &JobRecord) {
        if job.kind == JobKind::Inference && !job.state.is_ended() {
            let route = self.router().open(
                &job.owner,
                &job.model_name,
                &job.id,
                &job.client_ids,
                job.cooling.is_some(),
            );
            if job.cooling.is_some() {
                self.supervise_cooling(job.clone(), route);
            }
        }
    }

    /// An inference instance that is about to be recorded EXECUTING (a
    /// standby, or any instance of a DEPLOYED job) takes requests already, so
    /// that whoever sees the record can reach it.
    pub(crate) fn serve_before_commit(&self, inst: &InstanceRecord) {
        let Ok(Some(job)) = self.store().job(&inst.job_id) else {
            return;
        };
        let executing_next = inst.state == InstanceState::LAUNCHING
            && (inst.role == Role::Standby || job.state.status == JobStatus::Deployed);
        if job.kind == JobKind::Inference && executing_next {
            self.serve(&job, inst);
        }
    }

    /// Puts the instance's agent behind the job's route (idempotent).
    pub(crate) fn serve(&self, job: &JobRecord, inst: &InstanceRecord) {
        let Some(route) = self.router().route(&job.owner, &job.model_name) else {
            return;
        };
        if route.job_id != job.id || route.backend(&inst.id).is_some() {
            return;
        }
        if let Some(link) = self.agent_link(inst) {
            let backend = Backend::new(&inst.id, inst.role, link);
            self.router()
                .add_backend(&job.owner, &job.model_name, backend);
        }
    }
}

//! Dry runs (`Deploy{dryrun: true}`) on a short-lived instance of the
//! deploy's standby type: the scheduler never runs user code. The dry run is
//! a job of its own (it shows in `aibro instances` and is charged like any
//! other, but never serves and holds no model name); once its agent
//! registers, the agent runs the repo once on its sample input in the same
//! sandbox as serving, the outcome goes back to the Deploy call that waits
//! for it, and the job completes, terminating the instance.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::catalog::Machine;
use crate::error::{Error, Result};
use crate::link::Link;
use crate::records::JobRecord;
use crate::state::{JobEvent, Role};
use aibro_repo::DryRunOutcome;

use super::Control;

/// The Deploy calls waiting for their dry run, by job id. Dropping a
/// waiter's sender (the job ended without an outcome) wakes it.
#[derive(Default)]
pub(crate) struct PendingDryRuns {
    waiting: Mutex<HashMap<String, oneshot::Sender<DryRunOutcome>>>,
}

impl PendingDryRuns {
    fn wait_for(&self, job_id: &str) -> oneshot::Receiver<DryRunOutcome> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("dry runs lock")
            .insert(job_id.to_string(), tx);
        rx
    }

    fn deliver(&self, job_id: &str, outcome: DryRunOutcome) {
        if let Some(tx) = self.forget(job_id) {
            let _ = tx.send(outcome);
        }
    }

    /// The job ended: its waiter, if any, gets no outcome.
    pub(crate) fn forget(&self, job_id: &str) -> Option<oneshot::Sender<DryRunOutcome>> {
        self.waiting.lock().expect("dry runs lock").remove(job_id)
    }
}

/// Cancels the dry run when the Deploy call waiting for it goes away first.
struct CancelOnDrop {
    control: Control,
    job_id: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let (control, job_id) = (self.control.clone(), std::mem::take(&mut self.job_id));
        if control.dry_runs().forget(&job_id).is_some() {
            control.start_cancel(job_id, "the dry run's caller went away");
        }
    }
}

impl Control {
    /// Creates the dry-run job, launches its instance and waits for the outcome.
    pub(crate) async fn dry_run(&self, job: JobRecord, standby: Machine) -> Result<DryRunOutcome> {
        let job = self.create_job(job).await?;
        let outcome = self.dry_runs().wait_for(&job.id);
        let guard = CancelOnDrop {
            control: self.clone(),
            job_id: job.id.clone(),
        };
        self.start_launch(&job, vec![(Role::Standby, standby)]);
        let outcome = outcome.await;
        drop(guard);
        outcome.map_err(|_| self.why_no_outcome(&job.id))
    }

    /// The reason a dry-run job ended without an outcome (no machine, its
    /// agent failed or never connected).
    fn why_no_outcome(&self, job_id: &str) -> Error {
        let reason = match self.store().job(job_id) {
            Ok(Some(job)) if !job.reason.is_empty() => job.reason,
            _ => "the dry run's instance went away".to_string(),
        };
        Error::Unavailable(format!("the dry run could not run: {reason}"))
    }

    /// The dry run's agent registered: it runs the repo; the outcome goes to
    /// the waiting Deploy call and the job completes (its instance is
    /// terminated). An agent that cannot run it cancels the job.
    pub(crate) fn dry_run_on(&self, job: JobRecord, link: Link) {
        let running = link.dry_run(&job);
        let this = self.clone();
        self.spawn(async move {
            let ended = match running.await {
                Ok(outcome) => {
                    this.dry_runs().deliver(&job.id, outcome);
                    this.end_job(&job.id, JobEvent::Complete, String::new())
                        .await
                        .map(drop)
                }
                Err(status) => {
                    let reason =
                        format!("the agent could not run the dry run: {}", status.message());
                    this.cancel(&job.id, reason).await;
                    Ok(())
                }
            };
            if let Err(e) = ended {
                tracing::warn!(job_id = %job.id, error = %e, "the dry run's job did not end");
            }
        });
    }
}

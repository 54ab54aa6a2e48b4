//! The jobs part of the control plane: finding a caller's job (by id or by
//! its active model name), pages of them, creating one, the live instance an
//! agent speaks for, the artifact a job runs, and ending a job (complete or
//! cancel) with every instance it holds.

use crate::auth::User;
use crate::error::{Error, Result};
use crate::records::{ArtifactRecord, InstanceRecord, JobRecord};
use crate::state::{self, InstanceEvent, InstanceState, InstanceStatus, JobEvent};
use crate::store::StoreError;

use super::Control;

/// Jobs in a ListJobs page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most jobs in one ListJobs page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// How long a job waits for each machine when the request does not say.
const DEFAULT_WAIT_REQUEST_S: u32 = 30;

/// The jobs a listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The caller's own.
    Own,
    /// Those the caller may look at ([`may_see`]).
    Visible,
}

/// The admin may look at every job; a user at their own.
pub fn may_see(user: &User, job: &JobRecord) -> bool {
    user.is_admin() || job.owner == user.0
}

/// A request's `wait_request_s`, with 0 meaning the default.
pub(crate) fn wait_request_s(asked: u32) -> u32 {
    match asked {
        0 => DEFAULT_WAIT_REQUEST_S,
        s => s,
    }
}

impl Control {
    /// The caller's job, by id (wins) or by active model name.
    pub fn find_job(&self, user: &User, job_id: &str, model_name: &str) -> Result<JobRecord> {
        let job = if !job_id.is_empty() {
            self.store().job(job_id)?
        } else if !model_name.is_empty() {
            self.store().job_by_name(&user.0, model_name)?
        } else {
            return Err(Error::InvalidArgument(
                "give a job_id or a model_name".into(),
            ));
        };
        match job {
            Some(job) if job.owner == user.0 => Ok(job),
            _ if !job_id.is_empty() => Err(Error::NotFound(format!("job {job_id} not found"))),
            _ => Err(Error::NotFound(format!(
                "no active job with model name `{model_name}`"
            ))),
        }
    }

    /// A page of the caller's jobs (oldest first) and the token for the next
    /// page ("" when none follows). `page_size` 0 means
    /// [`DEFAULT_PAGE_SIZE`]; larger than [`MAX_PAGE_SIZE`] means that.
    /// `page_token` is the last job id of the previous page; anything that is
    /// not one of the caller's jobs is refused.
    pub fn list_jobs(
        &self,
        user: &User,
        active_only: bool,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<JobRecord>, String)> {
        self.jobs_page(user, Scope::Own, page_size, page_token, |j| {
            !active_only || !j.state.is_ended()
        })
    }

    /// As [`Control::list_jobs`], over the jobs the caller may look at (the
    /// admin: every job) that `keep` keeps.
    pub fn list_visible_jobs(
        &self,
        user: &User,
        page_size: u32,
        page_token: &str,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<(Vec<JobRecord>, String)> {
        self.jobs_page(user, Scope::Visible, page_size, page_token, keep)
    }

    /// A job the caller may look at (the admin: any job); acting on one
    /// stays its owner's ([`Control::find_job`]). Another user's job is as
    /// missing as one that does not exist.
    pub fn find_visible_job(&self, user: &User, job_id: &str) -> Result<JobRecord> {
        match self.store().job(job_id)? {
            Some(job) if may_see(user, &job) => Ok(job),
            _ => Err(Error::NotFound(format!("job {job_id} not found"))),
        }
    }

    fn jobs_page(
        &self,
        user: &User,
        scope: Scope,
        page_size: u32,
        page_token: &str,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<(Vec<JobRecord>, String)> {
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let every_job = scope == Scope::Visible && user.is_admin();
        let after = self.page_start(user, every_job, page_token)?;
        let (jobs, more) = if every_job {
            self.store().all_jobs_page(after, limit, keep)?
        } else {
            self.store().jobs_page(&user.0, after, limit, keep)?
        };
        let next = match jobs.last() {
            Some(last) if more => last.id.clone(),
            _ => String::new(),
        };
        Ok((jobs, next))
    }

    /// The job a page starts after: one the listing covers, or none for the first page.
    fn page_start<'a>(
        &self,
        user: &User,
        every_job: bool,
        page_token: &'a str,
    ) -> Result<Option<&'a str>> {
        if page_token.is_empty() {
            return Ok(None);
        }
        match self.store().job(page_token)? {
            Some(job) if every_job || job.owner == user.0 => Ok(Some(page_token)),
            _ => Err(Error::InvalidArgument(format!(
                "page_token `{}` is not one this server handed out to you: pass the \
                 next_page_token of your previous ListJobs response, or none for the \
                 first page",
                page_token.chars().take(80).collect::<String>()
            ))),
        }
    }

    /// Creates the job in its first state (durable and published on return).
    pub(crate) async fn create_job(&self, job: JobRecord) -> Result<JobRecord> {
        Ok(self.store().create_job(job).await?.job)
    }

    /// The caller's uploaded artifact `digest`.
    pub(crate) fn check_artifact(&self, user: &User, digest: &str) -> Result<ArtifactRecord> {
        if digest.is_empty() {
            return Err(Error::InvalidArgument(
                "artifact_digest is required: upload the repo with Artifacts.Upload first".into(),
            ));
        }
        self.store().artifact(&user.0, digest)?.ok_or_else(|| {
            Error::NotFound(format!(
                "artifact {digest} not found; upload it with Artifacts.Upload first"
            ))
        })
    }

    /// An instance that is not closed: its agent may still speak for it.
    pub(crate) fn live_instance(&self, instance_id: &str) -> Result<InstanceRecord> {
        let inst = self
            .store()
            .instance(instance_id)?
            .ok_or_else(|| Error::NotFound(format!("instance {instance_id} is unknown")))?;
        if inst.state.is_closed() {
            return Err(Error::FailedPrecondition(format!(
                "instance {instance_id} is closed"
            )));
        }
        Ok(inst)
    }

    /// A live instance that is not closing: its agent may (re)join and report in.
    pub(crate) fn open_instance(&self, instance_id: &str) -> Result<InstanceRecord> {
        let inst = self.live_instance(instance_id)?;
        if inst.state.status == InstanceStatus::Closing {
            return Err(Error::FailedPrecondition(format!(
                "instance {instance_id} is closing"
            )));
        }
        Ok(inst)
    }

    /// Cancels the job with `reason` and terminates its instances. A job that
    /// already ended is left as it is.
    pub(crate) async fn cancel(&self, job_id: &str, reason: String) {
        match self.end_job(job_id, JobEvent::Cancel, reason).await {
            Ok(_) | Err(Error::Store(StoreError::Stale(_))) => {}
            Err(e) => tracing::error!(job_id, error = %e, "cannot cancel job"),
        }
    }

    /// Cancels the job in the background: see [`Control::cancel`].
    pub(crate) fn start_cancel(&self, job_id: String, reason: &str) {
        let (this, reason) = (self.clone(), reason.to_string());
        self.spawn(async move { this.cancel(&job_id, reason).await });
    }

    /// Ends the job on `event` (complete or cancel): it stops serving at once
    /// and every instance it holds, stopped ones too, is terminated.
    pub(crate) async fn end_job(
        &self,
        job_id: &str,
        event: JobEvent,
        reason: String,
    ) -> Result<JobRecord> {
        let committed = self
            .store()
            .update(job_id, |job, insts| {
                if job.state.is_ended() {
                    return Err(StoreError::Stale(format!(
                        "job {} has already ended",
                        job.id
                    )));
                }
                job.state = state::next_job(job.kind, job.state, event)?;
                job.reason = reason.clone();
                // Stopped instances are terminated too: their disks go.
                for inst in insts
                    .iter_mut()
                    .filter(|i| i.state != InstanceState::TERMINATED)
                {
                    inst.state = state::next_instance(inst.state, InstanceEvent::Terminate)?;
                }
                Ok(vec![])
            })
            .await?;
        crate::crash::point("complete.recorded");
        let job = committed.job;
        self.dry_runs().forget(&job.id);
        self.router().close(&job.owner, &job.model_name, &job.id);
        self.metrics().model_ended(&job.owner, &job.model_name);
        for inst in committed
            .instances
            .into_iter()
            .filter(|i| i.state == InstanceState::TERMINATING)
        {
            self.start_close(inst.id);
        }
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cancel, control, job};
    use super::*;

    /// Every page of `user`'s listing with `page_size`; also checks that only
    /// the last page comes without a next token.
    fn pages(
        control: &Control,
        user: &User,
        active_only: bool,
        page_size: u32,
    ) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let (jobs, next) = control
                .list_jobs(user, active_only, page_size, &token)
                .unwrap();
            out.push(jobs.into_iter().map(|j| j.id).collect());
            if next.is_empty() {
                return out;
            }
            token = next;
        }
    }

    #[tokio::test]
    async fn list_jobs_pages_hand_out_every_job_once_in_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        let control = control(dir.path()).await;
        let ids: Vec<String> = (0..250).map(|i| format!("job-{i:04}")).collect();
        for id in &ids {
            control.store().create_job(job(id, "alice")).await.unwrap();
        }
        control
            .store()
            .create_job(job("job-bob", "bob"))
            .await
            .unwrap();
        for id in ids.iter().step_by(3) {
            cancel(&control, id).await;
        }
        let alice = User("alice".into());

        let default = pages(&control, &alice, false, 0);
        let sizes: Vec<usize> = default.iter().map(Vec::len).collect();
        assert_eq!(sizes, [DEFAULT_PAGE_SIZE, DEFAULT_PAGE_SIZE, 50]);
        assert_eq!(default.concat(), ids);

        for page_size in [1, 7, 83, 250, 251, u32::MAX] {
            let got = pages(&control, &alice, false, page_size);
            assert_eq!(got.concat(), ids, "page_size {page_size}");
            assert!(got.iter().all(|p| !p.is_empty()), "page_size {page_size}");
        }
        let active: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, id)| id.clone())
            .collect();
        for page_size in [1, 7, 100] {
            let got = pages(&control, &alice, true, page_size);
            assert_eq!(got.concat(), active, "active_only, page_size {page_size}");
        }
        let bob = pages(&control, &User("bob".into()), false, 0);
        assert_eq!(bob, [["job-bob"]]);
        let nobody = pages(&control, &User("carol".into()), false, 0);
        assert_eq!(nobody, [Vec::<String>::new()]);
    }

    #[tokio::test]
    async fn the_admin_may_look_at_every_job_a_user_at_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let control = control(dir.path()).await;
        for (id, owner) in [("job-1", "alice"), ("job-2", "bob"), ("job-3", "alice")] {
            control.store().create_job(job(id, owner)).await.unwrap();
        }
        let (admin, alice) = (User(crate::auth::ADMIN_USER.into()), User("alice".into()));
        let listed = |user: &User, page_size: u32, token: &str| {
            let (jobs, next) = control
                .list_visible_jobs(user, page_size, token, |_| true)
                .unwrap();
            (jobs.into_iter().map(|j| j.id).collect::<Vec<_>>(), next)
        };
        assert_eq!(
            listed(&admin, 2, ""),
            (vec!["job-1".into(), "job-2".into()], "job-2".into())
        );
        assert_eq!(
            listed(&admin, 2, "job-2"),
            (vec!["job-3".into()], String::new())
        );
        assert_eq!(
            listed(&alice, 0, ""),
            (vec!["job-1".into(), "job-3".into()], String::new())
        );
        assert!(control
            .list_visible_jobs(&alice, 1, "job-2", |_| true)
            .is_err());
        assert_eq!(
            control.find_visible_job(&admin, "job-2").unwrap().owner,
            "bob"
        );
        assert!(matches!(
            control.find_visible_job(&alice, "job-2"),
            Err(Error::NotFound(_))
        ));
        // Acting stays the owner's.
        assert!(control.find_job(&admin, "job-2", "").is_err());
    }

    #[tokio::test]
    async fn a_page_token_that_is_not_the_callers_is_invalid_argument() {
        let dir = tempfile::tempdir().unwrap();
        let control = control(dir.path()).await;
        for id in ["job-a1", "job-a2", "job-a3"] {
            control.store().create_job(job(id, "alice")).await.unwrap();
        }
        control
            .store()
            .create_job(job("job-b1", "bob"))
            .await
            .unwrap();
        let (alice, bob) = (User("alice".into()), User("bob".into()));
        let (_, token) = control.list_jobs(&alice, false, 1, "").unwrap();
        assert_eq!(token, "job-a1");
        // Bob may not page through Alice's listing, nor Alice with Bob's job.
        for (user, token) in [(&bob, "job-a1"), (&alice, "job-b1"), (&alice, "garbage")] {
            let err = control.list_jobs(user, false, 1, token).unwrap_err();
            match err {
                Error::InvalidArgument(message) => {
                    assert!(message.contains("page_token"), "{message}");
                    assert!(message.contains("next_page_token"), "{message}");
                }
                other => panic!("{token}: {other:?}"),
            }
        }
        let long = "x".repeat(10_000);
        let Err(Error::InvalidArgument(message)) = control.list_jobs(&alice, false, 1, &long)
        else {
            panic!("a long token is refused");
        };
        assert!(message.len() < 400, "the token is cut in the message");
    }
}

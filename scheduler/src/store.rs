//! The only code that touches sled. Every change is one transaction across
//! the trees it concerns, checked against the status model before commit, and
//! flushed (group commit) before the method returns.
//!
//! Trees: `jobs` (id → JobRecord), `instances` (id → InstanceRecord),
//! `events` (job id, seq → EventRecord), `names` (owner, model → active job id),
//! `by_owner` (owner, job id), `tokens` (sha256 → user), `artifacts`
//! (owner, digest → ArtifactRecord), `meta`.

mod durability;
pub mod records;

use std::ops::Bound;
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

pub use crate::clock::now_ms;
use crate::ledger;
use crate::state::{self, JobKind, StateError};
use durability::GroupCommit;
pub use records::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    JobNotFound(String),
    #[error("model name `{0}` is already used by an active job ({1}); complete it first or pick another name")]
    DuplicateName(String, String),
    #[error(transparent)]
    State(#[from] StateError),
    /// The change no longer applies (the job moved on meanwhile); nothing was written.
    #[error("{0}")]
    Stale(String),
    /// The change asks for something invalid; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The job is not in a state that allows the change; nothing was written.
    #[error("{0}")]
    Refused(String),
    #[error("store: {0}")]
    Sled(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e.to_string())
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// A timeline mark that an update adds besides its status changes.
#[derive(Debug, Clone, Default)]
pub struct Mark {
    pub instance_id: String,
    pub phase: String,
    pub message: String,
    pub progress: Option<Progress>,
}

impl Mark {
    pub fn phase(instance_id: &str, phase: &str) -> Self {
        Mark {
            instance_id: instance_id.to_string(),
            phase: phase.to_string(),
            ..Mark::default()
        }
    }
}

/// A job with its instances, as committed.
#[derive(Debug, Clone)]
pub struct Committed {
    pub job: JobRecord,
    pub instances: Vec<InstanceRecord>,
    pub events: Vec<EventRecord>,
}

#[derive(Clone)]
pub struct Store {
    jobs: sled::Tree,
    instances: sled::Tree,
    events: sled::Tree,
    names: sled::Tree,
    by_owner: sled::Tree,
    tokens: sled::Tree,
    artifacts: sled::Tree,
    meta: sled::Tree,
    commit: GroupCommit,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialise")
}

fn dec<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn event_key(job_id: &str, seq: u64) -> Vec<u8> {
    let mut k = key2(job_id, "");
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    match tree.get(key)? {
        Some(v) => dec(&v).map(Some).or_else(abort),
        None => Ok(None),
    }
}

fn unwrap_tx<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    })
}

/// The trees of one transaction, for changes to jobs and their instances.
struct Tx<'a> {
    jobs: &'a TransactionalTree,
    instances: &'a TransactionalTree,
    events: &'a TransactionalTree,
    names: &'a TransactionalTree,
}

impl Tx<'_> {
    /// One job's change; see [`Store::update`]. Instances the change hands to
    /// another job (their `job_id` changed) are written but no longer checked
    /// or shown as this job's.
    fn update<F>(&self, job_id: &str, change: &F) -> TxResult<Committed>
    where
        F: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<Mark>, StoreError>,
    {
        let (jobs, instances, events, names) = (self.jobs, self.instances, self.events, self.names);
        let Some(before) = tx_get::<JobRecord>(jobs, job_id.as_bytes())? else {
            return abort(StoreError::JobNotFound(job_id.to_string()));
        };
        let mut old_instances = Vec::with_capacity(before.instances.len());
        for id in &before.instances {
            match tx_get::<InstanceRecord>(instances, id.as_bytes())? {
                Some(inst) if inst.job_id == job_id => old_instances.push(inst),
                // Handed over to another job: no longer this job's.
                Some(_) => {}
                None => return abort(StoreError::Corrupt(format!("instance {id} is missing"))),
            }
        }
        let mut job = before.clone();
        let mut insts = old_instances.clone();
        let marks = change(&mut job, &mut insts).or_else(abort)?;
        let (mut insts, leaving): (Vec<_>, Vec<_>) =
            insts.into_iter().partition(|i| i.job_id == job.id);
        for inst in leaving {
            instances.insert(inst.id.as_bytes(), enc(&inst))?;
        }
        let pairs: Vec<_> = insts.iter().map(|i| (i.role, i.state)).collect();
        state::check_job(job.kind, job.state, &pairs)
            .map_err(StoreError::from)
            .or_else(abort)?;

        let now = now_ms();
        let mut new_events = Vec::new();
        let push = |new_events: &mut Vec<EventRecord>,
                    job: &mut JobRecord,
                    instance: Option<&InstanceRecord>,
                    mark: Option<&Mark>| {
            job.last_seq += 1;
            new_events.push(EventRecord {
                seq: job.last_seq,
                at_ms: now,
                job: job.state,
                instance_id: instance
                    .map(|i| i.id.clone())
                    .or_else(|| mark.map(|m| m.instance_id.clone()))
                    .unwrap_or_default(),
                instance: instance.map(|i| i.state),
                phase: mark.map(|m| m.phase.clone()).unwrap_or_default(),
                message: mark.map(|m| m.message.clone()).unwrap_or_default(),
                progress: mark.and_then(|m| m.progress.clone()),
                last: false,
            });
        };
        let mut changed_any = false;
        for inst in &mut insts {
            let old = old_instances.iter().find(|o| o.id == inst.id);
            if old.map(|o| o.state) != Some(inst.state) {
                ledger::account(old.map(|o| o.state), inst, now);
            }
            if old != Some(inst) {
                inst.updated_ms = now;
                instances.insert(inst.id.as_bytes(), enc(inst))?;
            }
            if old.map(|o| o.state) != Some(inst.state) {
                changed_any = true;
                push(&mut new_events, &mut job, Some(inst), None);
            }
        }
        if job.state != before.state && !changed_any {
            push(&mut new_events, &mut job, None, None);
        }
        for mark in &marks {
            push(&mut new_events, &mut job, None, Some(mark));
        }
        let settled = job.state.is_ended() && insts.iter().all(|i| i.state.is_settled());
        let was_settled =
            before.state.is_ended() && old_instances.iter().all(|i| i.state.is_settled());
        if settled && !was_settled {
            if new_events.is_empty() {
                push(&mut new_events, &mut job, None, None);
            }
            if let Some(e) = new_events.last_mut() {
                e.last = true;
            }
        }
        for e in &new_events {
            events.insert(event_key(&job.id, e.seq), enc(e))?;
        }
        if job.state.is_ended() && !before.state.is_ended() {
            let name_key = key2(&job.owner, &job.model_name);
            if names.get(&name_key)?.as_deref() == Some(job.id.as_bytes()) {
                names.remove(name_key)?;
            }
        }
        if job != before || !new_events.is_empty() {
            job.updated_ms = now;
            jobs.insert(job.id.as_bytes(), enc(&job))?;
        }
        Ok(Committed {
            job,
            instances: insts,
            events: new_events,
        })
    }
}

impl Store {
    /// Opens (or creates) the store under `dir`. Needs a tokio runtime.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // No periodic flusher thread: every change is flushed by the group
        // commit before it is acknowledged, and without that thread the last
        // handle dropped releases the data dir at once (close, then reopen).
        let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
        let tree = |name: &str| db.open_tree(name);
        Ok(Store {
            jobs: tree("jobs")?,
            instances: tree("instances")?,
            events: tree("events")?,
            names: tree("names")?,
            by_owner: tree("by_owner")?,
            tokens: tree("tokens")?,
            artifacts: tree("artifacts")?,
            meta: tree("meta")?,
            commit: GroupCommit::start(db),
        })
    }

    async fn durable(&self) -> Result<(), StoreError> {
        self.commit.durable().await.map_err(StoreError::Sled)
    }

    /// Flushes everything committed so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }

    /// Flushes and releases the data dir (once no other clone is left), so
    /// the same process can open it again.
    pub async fn close(self) -> Result<(), StoreError> {
        self.durable().await?;
        let commit = self.commit.clone();
        drop(self);
        commit.close().await;
        Ok(())
    }

    /// Creates a job in its first state, with its "job created" event. A name
    /// already held by an active job of the same owner is refused.
    pub async fn create_job(&self, job: JobRecord) -> Result<Committed, StoreError> {
        let name_key = key2(&job.owner, &job.model_name);
        let event = EventRecord {
            seq: 1,
            at_ms: job.created_ms,
            job: job.state,
            instance_id: String::new(),
            instance: None,
            phase: "job created".into(),
            message: String::new(),
            last: false,
            progress: None,
        };
        let mut job = job;
        job.last_seq = 1;
        let trees = (&self.jobs, &self.events, &self.names, &self.by_owner);
        unwrap_tx(trees.transaction(|(jobs, events, names, by_owner)| {
            if job.kind == JobKind::Inference {
                if let Some(other) = names.get(&name_key)? {
                    let other = String::from_utf8_lossy(&other).into_owned();
                    return abort(StoreError::DuplicateName(job.model_name.clone(), other));
                }
                names.insert(name_key.as_slice(), job.id.as_bytes())?;
            }
            jobs.insert(job.id.as_bytes(), enc(&job))?;
            by_owner.insert(key2(&job.owner, &job.id), &[])?;
            events.insert(event_key(&job.id, 1), enc(&event))?;
            Ok(())
        }))?;
        self.durable().await?;
        Ok(Committed {
            job,
            instances: vec![],
            events: vec![event],
        })
    }

    /// Runs `f` in one sled transaction over the job trees, then waits until
    /// it is on disk.
    async fn transact<T>(&self, f: impl Fn(&Tx) -> TxResult<T>) -> Result<T, StoreError> {
        let trees = (&self.jobs, &self.instances, &self.events, &self.names);
        let out = unwrap_tx(trees.transaction(|(jobs, instances, events, names)| {
            f(&Tx {
                jobs,
                instances,
                events,
                names,
            })
        }))?;
        self.durable().await?;
        Ok(out)
    }

    /// Applies `change` to a job and its instances in one transaction. `change`
    /// may run more than once (on conflict) and must not have side effects. The
    /// result is checked against the status model; each status change and each
    /// returned mark becomes a timeline event.
    pub async fn update<F>(&self, job_id: &str, change: F) -> Result<Committed, StoreError>
    where
        F: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<Mark>, StoreError>,
    {
        self.transact(|tx| tx.update(job_id, &change)).await
    }

    /// Two jobs' changes in one transaction, `first` before `second`: an
    /// instance handed from one job to the other (its `job_id` changed by
    /// `first`) is never seen by both or by neither.
    pub async fn update_two<F, G>(
        &self,
        first: (&str, F),
        second: (&str, G),
    ) -> Result<(Committed, Committed), StoreError>
    where
        F: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<Mark>, StoreError>,
        G: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<Mark>, StoreError>,
    {
        self.transact(|tx| {
            Ok((
                tx.update(first.0, &first.1)?,
                tx.update(second.0, &second.1)?,
            ))
        })
        .await
    }

    pub fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.jobs.get(job_id)?.map(|v| dec(&v)).transpose()
    }

    pub fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        self.instances.get(id)?.map(|v| dec(&v)).transpose()
    }

    /// The job's instances, without those it handed to another job.
    pub fn instances_of(&self, job: &JobRecord) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut out = Vec::with_capacity(job.instances.len());
        for id in &job.instances {
            if let Some(inst) = self.instance(id)?.filter(|i| i.job_id == job.id) {
                out.push(inst);
            }
        }
        Ok(out)
    }

    /// The owner's active inference job named `model_name`.
    pub fn job_by_name(
        &self,
        owner: &str,
        model_name: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        match self.names.get(key2(owner, model_name))? {
            Some(id) => self.job(&String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    /// The owner's jobs, oldest first (job ids sort by creation time).
    pub fn jobs_of(&self, owner: &str) -> Result<Vec<JobRecord>, StoreError> {
        let prefix = key2(owner, "");
        let mut out = Vec::new();
        for kv in self.by_owner.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(job) = self.job(&id)? {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// One page of the owner's jobs, oldest first: up to `limit` of those
    /// `keep` accepts, after the job `after` (None: from the first), and
    /// whether more such jobs follow.
    pub fn jobs_page(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<(Vec<JobRecord>, bool), StoreError> {
        let prefix = key2(owner, "");
        let start = match after {
            Some(id) => Bound::Excluded(key2(owner, id)),
            None => Bound::Included(prefix.clone()),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for kv in self.by_owner.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let id = String::from_utf8_lossy(&k[prefix.len()..]);
            let Some(job) = self.job(&id)?.filter(|j| keep(j)) else {
                continue;
            };
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(job);
        }
        Ok((out, false))
    }

    pub fn all_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.each_job().collect()
    }

    /// Every job, one at a time (none is held longer than the caller keeps it).
    pub fn each_job(&self) -> impl Iterator<Item = Result<JobRecord, StoreError>> + '_ {
        self.jobs.iter().values().map(|v| dec(&v?))
    }

    /// The active (not ended) inference jobs, from the name index.
    pub fn active_inference_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        for id in self.names.iter().values() {
            if let Some(job) = self.job(&String::from_utf8_lossy(&id?))? {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// Every instance record `keep` accepts, in one pass over the tree.
    pub fn instances_where(
        &self,
        keep: impl Fn(&InstanceRecord) -> bool,
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut out = Vec::new();
        for v in self.instances.iter().values() {
            let inst: InstanceRecord = dec(&v?)?;
            if keep(&inst) {
                out.push(inst);
            }
        }
        Ok(out)
    }

    pub fn events(&self, job_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        self.events_from(job_id, 0)
    }

    /// The job's timeline events with seq `from_seq` or later, in order.
    pub fn events_from(&self, job_id: &str, from_seq: u64) -> Result<Vec<EventRecord>, StoreError> {
        let prefix = key2(job_id, "");
        let mut out = Vec::new();
        for kv in self.events.range(event_key(job_id, from_seq)..) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(dec(&v)?);
        }
        Ok(out)
    }

    pub async fn put_token(&self, hash: &str, user: &str) -> Result<(), StoreError> {
        self.tokens.insert(hash, user.as_bytes())?;
        self.durable().await
    }

    pub fn token_user(&self, hash: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tokens
            .get(hash)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub async fn put_artifact(&self, owner: &str, rec: &ArtifactRecord) -> Result<(), StoreError> {
        self.artifacts.insert(key2(owner, &rec.digest), enc(rec))?;
        self.durable().await
    }

    pub fn artifact(
        &self,
        owner: &str,
        digest: &str,
    ) -> Result<Option<ArtifactRecord>, StoreError> {
        self.artifacts
            .get(key2(owner, digest))?
            .map(|v| dec(&v))
            .transpose()
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .meta
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub async fn put_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta.insert(key, value.as_bytes())?;
        self.durable().await
    }
}

#[cfg(test)]
pub(crate) mod tests;

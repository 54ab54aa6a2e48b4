//! The only code that touches sled. Every change is one transaction across
//! the trees it concerns, checked against the status model before commit, and
//! flushed (group commit) before the method returns; the timeline events of job changes
//! timeline events are then published to watchers ([`Store::subscribe`]), so
//! whoever writes through the store publishes, and nobody else does.
//!
//! Trees: `jobs` (id → JobRecord), `instances` (id → InstanceRecord),
//! `events` (job id, seq → EventRecord), `names` (owner, model → active job id),
//! `by_owner` (owner, job id), `tokens` (sha256 → user), `artifacts`
//! (owner, digest → ArtifactRecord), `credentials` (agents' credentials:
//! sha256 → CredentialRecord, and pool agent id → PoolCredentialRecord), `meta`.

mod change;
mod durability;
mod timings;

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::broadcast;

pub use crate::clock::now_ms;
use crate::hub::Hub;
use crate::records::*;
use crate::state::{JobKind, StateError};
use change::Tx;
use durability::GroupCommit;
pub use timings::StoreTimings;

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
    credentials: sled::Tree,
    meta: sled::Tree,
    commit: GroupCommit,
    timings: StoreTimings,
    /// Where committed events are published to watchers.
    hub: Arc<Hub>,
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

impl Store {
    /// Opens (or creates) the store under `dir`. Needs a tokio runtime.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // No periodic flusher thread: every change is flushed by the group
        // commit before it is acknowledged, and without that thread the last
        // handle dropped releases the data dir at once (close, then reopen).
        let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
        let tree = |name: &str| db.open_tree(name);
        let timings = StoreTimings::new();
        Ok(Store {
            jobs: tree("jobs")?,
            instances: tree("instances")?,
            events: tree("events")?,
            names: tree("names")?,
            by_owner: tree("by_owner")?,
            tokens: tree("tokens")?,
            artifacts: tree("artifacts")?,
            credentials: tree("credentials")?,
            meta: tree("meta")?,
            commit: GroupCommit::start(db, timings.clone()),
            timings,
            hub: Arc::default(),
        })
    }

    /// How long transactions and flushes take (recorded once enabled).
    pub fn timings(&self) -> &StoreTimings {
        &self.timings
    }

    async fn durable(&self) -> Result<(), StoreError> {
        self.commit
            .durable()
            .await
            .map_err(|e| StoreError::Sled(e.to_string()))
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
        let started = self.timings.start();
        let created = unwrap_tx(trees.transaction(|(jobs, events, names, by_owner)| {
            if job.kind == JobKind::Inference && !job.dryrun {
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
        }));
        self.timings.transaction_since(started);
        created?;
        self.durable().await?;
        let committed = Committed {
            job,
            instances: vec![],
            events: vec![event],
        };
        self.publish(&committed);
        Ok(committed)
    }

    fn publish(&self, committed: &Committed) {
        self.hub.publish(&committed.job.id, &committed.events);
        if !committed.events.is_empty() {
            self.hub.publish_job(&committed.job);
        }
    }

    /// Every job as committed from the next commit on (see [`Hub::subscribe_all`]).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<JobRecord>> {
        self.hub.subscribe_all()
    }

    /// Live events of the job, from the next commit on.
    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<EventRecord> {
        self.hub.subscribe(job_id)
    }

    /// The hub itself, for tests that publish out of order.
    #[cfg(test)]
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Ends a subscription (see [`Hub::unsubscribe`]).
    pub fn unsubscribe(&self, job_id: &str, rx: broadcast::Receiver<EventRecord>) {
        self.hub.unsubscribe(job_id, rx);
    }

    /// Runs `f` in one sled transaction over the job trees, then waits until
    /// it is on disk.
    async fn transact<T>(&self, f: impl Fn(&Tx) -> TxResult<T>) -> Result<T, StoreError> {
        let trees = (&self.jobs, &self.instances, &self.events, &self.names);
        let started = self.timings.start();
        let out = unwrap_tx(trees.transaction(|(jobs, instances, events, names)| {
            f(&Tx {
                jobs,
                instances,
                events,
                names,
            })
        }));
        self.timings.transaction_since(started);
        let out = out?;
        self.durable().await?;
        Ok(out)
    }

    /// Applies `change` to a job and its instances in one transaction. `change`
    /// may run more than once (on conflict) and must not have side effects. The
    /// result is checked against the status model; each status change and each
    /// returned mark becomes a timeline event.
    pub async fn update<F>(&self, job_id: &str, change: F) -> Result<Committed, StoreError>
    where
        F: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<TimelineNote>, StoreError>,
    {
        let committed = self.transact(|tx| tx.update(job_id, &change)).await?;
        self.publish(&committed);
        Ok(committed)
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
        F: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<TimelineNote>, StoreError>,
        G: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<TimelineNote>, StoreError>,
    {
        let both = self
            .transact(|tx| {
                Ok((
                    tx.update(first.0, &first.1)?,
                    tx.update(second.0, &second.1)?,
                ))
            })
            .await?;
        self.publish(&both.0);
        self.publish(&both.1);
        Ok(both)
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
        let ids = self
            .by_owner
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .keys()
            .take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(&prefix)))
            .map(|k| Ok(String::from_utf8_lossy(&k?[prefix.len()..]).into_owned()));
        self.page_of(ids, limit, keep)
    }

    /// A page of every owner's jobs, in id order: as [`Store::jobs_page`].
    pub fn all_jobs_page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<(Vec<JobRecord>, bool), StoreError> {
        let start = match after {
            Some(id) => Bound::Excluded(id.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let ids = self
            .jobs
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()));
        self.page_of(ids, limit, keep)
    }

    /// The first `limit` jobs of `ids` that `keep` keeps, and whether more follow.
    fn page_of(
        &self,
        ids: impl Iterator<Item = Result<String, sled::Error>>,
        limit: usize,
        keep: impl Fn(&JobRecord) -> bool,
    ) -> Result<(Vec<JobRecord>, bool), StoreError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for id in ids {
            let Some(job) = self.job(&id?)?.filter(|j| keep(j)) else {
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

    /// Records an agent credential's hash and what it speaks for.
    pub async fn put_credential(
        &self,
        hash: &str,
        rec: &CredentialRecord,
    ) -> Result<(), StoreError> {
        self.credentials.insert(key2("h", hash), enc(rec))?;
        self.durable().await
    }

    /// What the credential with this hash speaks for; None: never issued or revoked.
    pub fn credential(&self, hash: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.credentials
            .get(key2("h", hash))?
            .map(|v| dec(&v))
            .transpose()
    }

    pub async fn revoke_credential(&self, hash: &str) -> Result<(), StoreError> {
        self.credentials.remove(key2("h", hash))?;
        self.durable().await
    }

    /// The pool agent's current credential, if it joined.
    pub fn pool_credential(
        &self,
        agent_id: &str,
    ) -> Result<Option<PoolCredentialRecord>, StoreError> {
        self.credentials
            .get(key2("a", agent_id))?
            .map(|v| dec(&v))
            .transpose()
    }

    /// Gives the pool agent a new credential and revokes the one it had, in
    /// one transaction.
    pub async fn rotate_pool_credential(
        &self,
        agent_id: &str,
        new: &PoolCredentialRecord,
    ) -> Result<(), StoreError> {
        let binding = enc(&CredentialRecord::pool(agent_id));
        unwrap_tx(self.credentials.transaction(|t| {
            let agent_key = key2("a", agent_id);
            if let Some(old) = tx_get::<PoolCredentialRecord>(t, &agent_key)? {
                t.remove(key2("h", &old.hash))?;
            }
            t.insert(agent_key, enc(new))?;
            t.insert(key2("h", &new.hash), binding.clone())?;
            Ok(())
        }))?;
        self.durable().await
    }

    /// Records an instance's bootstrap token (by its hash); one it had
    /// before is revoked.
    pub async fn put_bootstrap(&self, hash: &str, rec: &BootstrapRecord) -> Result<(), StoreError> {
        let record = enc(rec);
        unwrap_tx(self.credentials.transaction(|t| {
            let by_instance = key2("bi", &rec.instance_id);
            if let Some(old) = t.get(&by_instance)? {
                t.remove(key2("b", &String::from_utf8_lossy(&old)))?;
            }
            t.insert(by_instance, hash.as_bytes())?;
            t.insert(key2("b", hash), record.clone())?;
            Ok(())
        }))?;
        self.durable().await
    }

    /// The bootstrap token with this hash, if it is still unused.
    pub fn bootstrap(&self, hash: &str) -> Result<Option<BootstrapRecord>, StoreError> {
        self.credentials
            .get(key2("b", hash))?
            .map(|v| dec(&v))
            .transpose()
    }

    /// Uses up the bootstrap token with this hash: exactly one caller gets
    /// its record, however many present it at once.
    pub async fn take_bootstrap(&self, hash: &str) -> Result<Option<BootstrapRecord>, StoreError> {
        let taken = unwrap_tx(self.credentials.transaction(|t| {
            let Some(rec) = tx_get::<BootstrapRecord>(t, &key2("b", hash))? else {
                return Ok(None);
            };
            t.remove(key2("b", hash))?;
            t.remove(key2("bi", &rec.instance_id))?;
            Ok(Some(rec))
        }))?;
        self.durable().await?;
        Ok(taken)
    }

    /// Revokes the instance's unused bootstrap token, if any.
    pub async fn revoke_bootstrap_of(&self, instance_id: &str) -> Result<(), StoreError> {
        unwrap_tx(self.credentials.transaction(|t| {
            if let Some(hash) = t.remove(key2("bi", instance_id))? {
                t.remove(key2("b", &String::from_utf8_lossy(&hash)))?;
            }
            Ok(())
        }))?;
        self.durable().await
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
pub(crate) mod tests {
    use super::*;
    use crate::state::{self, InstanceState, JobEvent, Role};

    pub(crate) fn job(id: &str, owner: &str, name: &str) -> JobRecord {
        JobRecord {
            model_name: name.into(),
            standby: "local.small.od".into(),
            ..JobRecord::queued(
                id.into(),
                owner,
                JobKind::Inference,
                "sha256:00".into(),
                now_ms(),
            )
        }
    }

    fn launch(
        job: &mut JobRecord,
        insts: &mut Vec<InstanceRecord>,
    ) -> Result<Vec<TimelineNote>, StoreError> {
        job.state = state::next_job(job.kind, job.state, JobEvent::InstanceLaunched)?;
        insts.push(InstanceRecord::launching(
            "i1",
            &job.id,
            Role::Standby,
            "local.small.od",
            0,
        ));
        job.instances.push("i1".into());
        Ok(vec![TimelineNote::phase("i1", "instance requested")])
    }

    #[tokio::test]
    async fn changes_survive_reopen_and_events_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.create_job(job("j1", "alice", "m")).await.unwrap();
            let c = store.update("j1", launch).await.unwrap();
            assert_eq!(c.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
            assert_eq!(c.events[0].instance, Some(InstanceState::LAUNCHING));
            assert_eq!(c.events[1].phase, "instance requested");
            store.close().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let j = store.job("j1").unwrap().unwrap();
        assert_eq!(
            j.state.substatus,
            crate::state::JobSubstatus::ConnectingServer
        );
        assert_eq!(
            store.instances_of(&j).unwrap()[0].state,
            InstanceState::LAUNCHING
        );
        assert_eq!(store.events("j1").unwrap().len(), 3);
        assert_eq!(store.jobs_of("alice").unwrap().len(), 1);
        assert!(store.jobs_of("bob").unwrap().is_empty());
    }

    #[tokio::test]
    async fn duplicate_active_name_is_refused_until_the_job_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_job(job("j1", "alice", "m")).await.unwrap();
        let err = store.create_job(job("j2", "alice", "m")).await.unwrap_err();
        assert!(matches!(err, StoreError::DuplicateName(..)), "{err}");
        assert!(store.job("j2").unwrap().is_none());
        store.create_job(job("j3", "bob", "m")).await.unwrap();
        store
            .update("j1", |j, _| {
                j.state = state::next_job(j.kind, j.state, JobEvent::Complete)?;
                Ok(vec![])
            })
            .await
            .unwrap();
        store.create_job(job("j2", "alice", "m")).await.unwrap();
        assert_eq!(store.job_by_name("alice", "m").unwrap().unwrap().id, "j2");
    }

    #[tokio::test]
    async fn an_illegal_combination_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_job(job("j1", "alice", "m")).await.unwrap();
        store.update("j1", launch).await.unwrap();
        let before = store.job("j1").unwrap().unwrap();
        // EXECUTING while the job is still QUEUING is not in the seed's map.
        let err = store
            .update("j1", |_, insts| {
                insts[0].state = InstanceState::EXECUTING;
                Ok(vec![])
            })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::State(_)), "{err}");
        assert_eq!(store.job("j1").unwrap().unwrap(), before);
        assert_eq!(store.events("j1").unwrap().len(), 3);
    }

    #[tokio::test]
    async fn the_settling_event_is_marked_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_job(job("j1", "alice", "m")).await.unwrap();
        store.update("j1", launch).await.unwrap();
        let c = store
            .update("j1", |j, insts| {
                j.state = state::next_job(j.kind, j.state, JobEvent::Cancel)?;
                insts[0].state =
                    state::next_instance(insts[0].state, crate::state::InstanceEvent::Terminate)?;
                Ok(vec![])
            })
            .await
            .unwrap();
        assert!(c.events.iter().all(|e| !e.last));
        let c = store
            .update("j1", |_, insts| {
                insts[0].state =
                    state::next_instance(insts[0].state, crate::state::InstanceEvent::Closed)?;
                Ok(vec![])
            })
            .await
            .unwrap();
        assert!(c.events.last().unwrap().last);
    }

    #[tokio::test]
    async fn events_from_reads_only_the_jobs_events_from_that_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // "j1" is a prefix of "j10": their events must not mix.
        store.create_job(job("j1", "alice", "m1")).await.unwrap();
        store.create_job(job("j10", "alice", "m10")).await.unwrap();
        store.update("j1", launch).await.unwrap();
        let seqs = |from| -> Vec<u64> {
            let events = store.events_from("j1", from).unwrap();
            events.iter().map(|e| e.seq).collect()
        };
        assert_eq!(seqs(0), [1, 2, 3]);
        assert_eq!(seqs(2), [2, 3]);
        assert!(seqs(4).is_empty());
        assert_eq!(store.events_from("j10", 1).unwrap().len(), 1);
        assert!(store.events_from("j", 0).unwrap().is_empty());
    }

    #[tokio::test]
    async fn jobs_page_goes_on_after_the_given_job_and_says_whether_more_follow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            let id = format!("j{i}");
            store.create_job(job(&id, "alice", &id)).await.unwrap();
        }
        // "alice2" starts with "alice": its jobs are not alice's.
        store.create_job(job("k0", "alice2", "m")).await.unwrap();
        let ids = |page: &[JobRecord]| page.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
        let all = |_: &JobRecord| true;
        let (page, more) = store.jobs_page("alice", None, 2, all).unwrap();
        assert_eq!((ids(&page), more), (vec!["j0".into(), "j1".into()], true));
        let (page, more) = store.jobs_page("alice", Some("j1"), 2, all).unwrap();
        assert_eq!((ids(&page), more), (vec!["j2".into(), "j3".into()], true));
        let (page, more) = store.jobs_page("alice", Some("j3"), 2, all).unwrap();
        assert_eq!((ids(&page), more), (vec!["j4".into()], false));
        // Exactly full, nothing after: no next page.
        let (page, more) = store.jobs_page("alice", Some("j2"), 2, all).unwrap();
        assert_eq!((ids(&page), more), (vec!["j3".into(), "j4".into()], false));
        let odd = |j: &JobRecord| j.id.ends_with(['1', '3']);
        let (page, more) = store.jobs_page("alice", None, 1, odd).unwrap();
        assert_eq!((ids(&page), more), (vec!["j1".into()], true));
        let (page, more) = store.jobs_page("alice", Some("j1"), 1, odd).unwrap();
        assert_eq!((ids(&page), more), (vec!["j3".into()], false));
        let (page, more) = store.jobs_page("bob", None, 10, all).unwrap();
        assert!(page.is_empty() && !more);
    }
}

//! One job's change inside a transaction: load the job and its instances,
//! apply the caller's change, check it against the status model, keep the
//! ledger's running times, turn it into timeline events and write it all.

use sled::transaction::TransactionalTree;

use super::{abort, enc, event_key, key2, tx_get, Committed, StoreError, TxResult};
use crate::clock::now_ms;
use crate::ledger;
use crate::records::{EventRecord, InstanceRecord, JobRecord, TimelineNote};
use crate::state;

/// The trees of one transaction, for changes to jobs and their instances.
pub(super) struct Tx<'a> {
    pub(super) jobs: &'a TransactionalTree,
    pub(super) instances: &'a TransactionalTree,
    pub(super) events: &'a TransactionalTree,
    pub(super) names: &'a TransactionalTree,
}

/// A job and its instances as they were before a change.
struct Before {
    job: JobRecord,
    instances: Vec<InstanceRecord>,
}

impl Tx<'_> {
    /// One job's change; see [`super::Store::update`]. Instances the change
    /// hands to another job (their `job_id` changed) are written but no
    /// longer checked or shown as this job's.
    pub(super) fn update<F>(&self, job_id: &str, change: &F) -> TxResult<Committed>
    where
        F: Fn(&mut JobRecord, &mut Vec<InstanceRecord>) -> Result<Vec<TimelineNote>, StoreError>,
    {
        let before = self.load(job_id)?;
        let mut job = before.job.clone();
        let mut insts = before.instances.clone();
        let notes = change(&mut job, &mut insts).or_else(abort)?;
        let mut insts = self.hand_over(&job, insts)?;
        let pairs: Vec<_> = insts.iter().map(|i| (i.role, i.state)).collect();
        state::check_job(job.kind, job.state, &pairs)
            .map_err(StoreError::from)
            .or_else(abort)?;
        let now = now_ms();
        ledger::account_changes(&before.instances, &mut insts, now);
        let events = timeline(&before, &mut job, &insts, &notes, now);
        self.write_instances(&before.instances, &mut insts, now)?;
        for e in &events {
            self.events.insert(event_key(&job.id, e.seq), enc(e))?;
        }
        self.release_name(&before.job, &job)?;
        if job != before.job || !events.is_empty() {
            job.updated_ms = now;
            self.jobs.insert(job.id.as_bytes(), enc(&job))?;
        }
        Ok(Committed {
            job,
            instances: insts,
            events,
        })
    }

    fn load(&self, job_id: &str) -> TxResult<Before> {
        let Some(job) = tx_get::<JobRecord>(self.jobs, job_id.as_bytes())? else {
            return abort(StoreError::JobNotFound(job_id.to_string()));
        };
        let mut instances = Vec::with_capacity(job.instances.len());
        for id in &job.instances {
            match tx_get::<InstanceRecord>(self.instances, id.as_bytes())? {
                Some(inst) if inst.job_id == job_id => instances.push(inst),
                // Handed over to another job: no longer this job's.
                Some(_) => {}
                None => return abort(StoreError::Corrupt(format!("instance {id} is missing"))),
            }
        }
        Ok(Before { job, instances })
    }

    /// Writes the instances the change handed to another job; returns the rest.
    fn hand_over(
        &self,
        job: &JobRecord,
        insts: Vec<InstanceRecord>,
    ) -> TxResult<Vec<InstanceRecord>> {
        let (stay, leaving): (Vec<_>, Vec<_>) = insts.into_iter().partition(|i| i.job_id == job.id);
        for inst in leaving {
            self.instances.insert(inst.id.as_bytes(), enc(&inst))?;
        }
        Ok(stay)
    }

    fn write_instances(
        &self,
        old: &[InstanceRecord],
        insts: &mut [InstanceRecord],
        now: u64,
    ) -> TxResult<()> {
        for inst in insts {
            if old.iter().find(|o| o.id == inst.id) != Some(inst) {
                inst.updated_ms = now;
                self.instances.insert(inst.id.as_bytes(), enc(inst))?;
            }
        }
        Ok(())
    }

    /// An ended job gives its model name back to its owner.
    fn release_name(&self, before: &JobRecord, job: &JobRecord) -> TxResult<()> {
        if job.state.is_ended() && !before.state.is_ended() {
            let name_key = key2(&job.owner, &job.model_name);
            if self.names.get(&name_key)?.as_deref() == Some(job.id.as_bytes()) {
                self.names.remove(name_key)?;
            }
        }
        Ok(())
    }
}

/// The change's timeline events, numbered on from the job's `last_seq`: one
/// per instance status change (or one for the job's own when no instance
/// moved), one per note; the event that leaves the job ended and settled is
/// marked `last`.
fn timeline(
    before: &Before,
    job: &mut JobRecord,
    insts: &[InstanceRecord],
    notes: &[TimelineNote],
    now: u64,
) -> Vec<EventRecord> {
    let mut events = Vec::new();
    let moved: Vec<&InstanceRecord> = insts
        .iter()
        .filter(|i| {
            let old = before.instances.iter().find(|o| o.id == i.id);
            old.map(|o| o.state) != Some(i.state)
        })
        .collect();
    for inst in &moved {
        events.push(next_event(job, Some(inst), None, now));
    }
    if job.state != before.job.state && moved.is_empty() {
        events.push(next_event(job, None, None, now));
    }
    for note in notes {
        events.push(next_event(job, None, Some(note), now));
    }
    let settled = job.state.is_ended() && insts.iter().all(|i| i.state.is_settled());
    let was_settled =
        before.job.state.is_ended() && before.instances.iter().all(|i| i.state.is_settled());
    if settled && !was_settled {
        if events.is_empty() {
            events.push(next_event(job, None, None, now));
        }
        if let Some(e) = events.last_mut() {
            e.last = true;
        }
    }
    events
}

/// The job's next event: its state now, with the instance that moved or the note.
fn next_event(
    job: &mut JobRecord,
    inst: Option<&InstanceRecord>,
    note: Option<&TimelineNote>,
    now: u64,
) -> EventRecord {
    job.last_seq += 1;
    EventRecord {
        seq: job.last_seq,
        at_ms: now,
        job: job.state,
        instance_id: inst
            .map(|i| i.id.clone())
            .or_else(|| note.map(|n| n.instance_id.clone()))
            .unwrap_or_default(),
        instance: inst.map(|i| i.state),
        phase: note.map(|n| n.phase.clone()).unwrap_or_default(),
        message: note.map(|n| n.message.clone()).unwrap_or_default(),
        progress: note.and_then(|n| n.progress.clone()),
        last: false,
    }
}

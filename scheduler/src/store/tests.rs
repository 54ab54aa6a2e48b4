use super::*;
use crate::state::{InstanceState, JobEvent, Role};

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

fn launch(job: &mut JobRecord, insts: &mut Vec<InstanceRecord>) -> Result<Vec<Mark>, StoreError> {
    job.state = state::next_job(job.kind, job.state, JobEvent::InstanceLaunched)?;
    insts.push(InstanceRecord::launching(
        "i1",
        &job.id,
        Role::Standby,
        "local.small.od",
        0,
    ));
    job.instances.push("i1".into());
    Ok(vec![Mark::phase("i1", "instance requested")])
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

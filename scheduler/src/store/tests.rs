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

//! The control plane over a real store without machines: ListJobs paging,
//! and WatchJob delivering live events in order, each once.

use std::time::Duration;

use futures::StreamExt;

use super::*;
use crate::state::{JobEvent, JobKind};
use crate::store::EventRecord;

async fn control(dir: &std::path::Path) -> Control {
    let store = Store::open(&dir.join("db")).unwrap();
    let settings = Settings {
        public_url: "http://127.0.0.1:1".into(),
        connect_timeout: Duration::from_secs(60),
        heartbeat_interval: Duration::from_secs(1),
        ..Settings::in_process(dir)
    };
    let auth = Auth::open(store.clone()).await.unwrap();
    Control::new(
        settings,
        store,
        Catalog::shipped(),
        Providers::default(),
        auth,
        TaskTracker::new(),
        CancellationToken::new(),
    )
}

fn job(id: &str, owner: &str) -> JobRecord {
    let mut job = JobRecord::queued(
        id.into(),
        owner,
        JobKind::Inference,
        "sha256:00".into(),
        crate::store::now_ms(),
    );
    job.model_name = id.into();
    job.standby = "local.small.od".into();
    job
}

async fn cancel(control: &Control, id: &str) {
    control
        .store()
        .update(id, |j, _| {
            j.state = crate::state::next_job(j.kind, j.state, JobEvent::Cancel)?;
            Ok(vec![])
        })
        .await
        .unwrap();
}

/// Every page of `user`'s listing with `page_size`; also checks that only
/// the last page comes without a next token.
fn pages(control: &Control, user: &User, active_only: bool, page_size: u32) -> Vec<Vec<String>> {
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
    let Err(Error::InvalidArgument(message)) = control.list_jobs(&alice, false, 1, &long) else {
        panic!("a long token is refused");
    };
    assert!(message.len() < 400, "the token is cut in the message");
}

#[tokio::test]
async fn a_watcher_gets_each_event_once_in_order_even_when_published_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let control = control(dir.path()).await;
    control
        .store()
        .create_job(job("job-w", "alice"))
        .await
        .unwrap();
    let mut watch = control.watch("job-w".into());
    let next_seq = |e: Option<crate::error::Result<EventRecord>>| e.unwrap().unwrap().seq;
    assert_eq!(next_seq(watch.next().await), 1);

    let mark = |phase: &'static str| {
        move |_: &mut JobRecord, _: &mut Vec<InstanceRecord>| Ok(vec![Mark::phase("", phase)])
    };
    // In order, through the one apply path.
    control.apply("job-w", mark("a")).await.unwrap();
    assert_eq!(next_seq(watch.next().await), 2);
    // Two commits published in reverse order: the gap is filled from the
    // store, and the late event is not sent again.
    let c3 = control.store().update("job-w", mark("b")).await.unwrap();
    let c4 = control.store().update("job-w", mark("c")).await.unwrap();
    control.hub().publish("job-w", &c4.events);
    control.hub().publish("job-w", &c3.events);
    assert_eq!(next_seq(watch.next().await), 3);
    assert_eq!(next_seq(watch.next().await), 4);
    control.apply("job-w", mark("d")).await.unwrap();
    assert_eq!(next_seq(watch.next().await), 5);
    // The job ends and settles: its last event ends the stream.
    cancel(&control, "job-w").await;
    let last = control.store().events_from("job-w", 6).unwrap();
    control.hub().publish("job-w", &last);
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!((e.seq, e.last), (6, true));
    assert!(watch.next().await.is_none());
}

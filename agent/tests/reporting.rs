//! The agent's link to the fake scheduler: starting without an identity, the
//! orphan timeout, and registering again and re-sending after the scheduler forgot.

mod common;

use common::*;

use std::sync::atomic::Ordering;
use std::time::Duration;

use aibro_proto::v1::{AgentPhase, JobKind, PrepareRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_without_an_identity_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let args = <aibro_agent::Args as clap::Parser>::parse_from([
        "aibro-agent",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = aibro_agent::run(args, listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(e, aibro_agent::Error::NoIdentity), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("--instance-id") && msg.contains("--machine-id"),
        "{msg}"
    );
}

#[tokio::test]
async fn orphaned_agent_exits() {
    // Nothing listens on the scheduler address.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let tmp = tempfile::tempdir().unwrap();
    let args = <aibro_agent::Args as clap::Parser>::parse_from([
        "aibro-agent",
        "--scheduler",
        &format!("http://{addr}"),
        "--dir",
        tmp.path().to_str().unwrap(),
        "--machine-id",
        "local.small",
        "--orphan-timeout-s",
        "0",
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        aibro_agent::run(args, listener, std::future::pending()),
    )
    .await
    .expect("agent did not give up");
    assert!(
        matches!(res, Err(aibro_agent::Error::Orphaned(_))),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregisters_and_resends_after_scheduler_forgets() {
    let mut h = Harness::start().await;
    assert!(matches!(h.next_event().await, Event::Registered(..)));
    // The scheduler "restarts": reports fail with NotFound until the agent registers again.
    h.registered.store(false, Ordering::SeqCst);
    let digest = h.add_artifact(&[(
        "predict.py",
        "def load_model():\n    return 0\ndef run(m, d):\n    return d\n",
    )]);
    let mut c = h.client().await;
    c.prepare(PrepareRequest {
        job_id: "j".into(),
        artifact_digest: digest,
        kind: JobKind::Inference.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut reregistered = false;
    while seen.last() != Some(&AgentPhase::Serving) {
        match h.next_event().await {
            Event::Registered(..) => reregistered = true,
            Event::Phase(p, _) => seen.push(p.phase()),
            Event::Heartbeat(..) | Event::Progress(_) => {}
        }
    }
    assert!(reregistered);
    // Every phase arrives exactly once, in order.
    assert_eq!(
        seen,
        [
            AgentPhase::GearingUpEnv,
            AgentPhase::ModelLoading,
            AgentPhase::Serving
        ]
    );
    h.stop_agent().await;
}

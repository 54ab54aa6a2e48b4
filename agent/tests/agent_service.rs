//! The agent against a fake scheduler (an in-test AgentGateway): register, Prepare,
//! phase reports, Predict, error codes, Stop, heartbeats and the orphan timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aibro_proto::v1::agent_client::AgentClient;
use aibro_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use aibro_proto::v1::{
    report_request, AgentPhase, AgentPredictRequest, Chunk, FetchArtifactRequest, JobKind,
    PhaseReport, PrepareRequest, RegisterRequest, RegisterResponse, ReportRequest, ReportResponse,
    StopRequest,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// (digest, bytes) of the artifacts the fake scheduler serves.
type Artifacts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[derive(Debug)]
enum Event {
    Registered(RegisterRequest, String),
    Phase(PhaseReport),
    Heartbeat(u32),
}

struct FakeGateway {
    events: mpsc::UnboundedSender<Event>,
    artifacts: Artifacts,
    /// Cleared to act like a restarted scheduler that forgot the instance.
    registered: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl AgentGateway for FakeGateway {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        self.registered.store(true, Ordering::SeqCst);
        let _ = self
            .events
            .send(Event::Registered(request.into_inner(), auth));
        Ok(Response::new(RegisterResponse {
            heartbeat_interval_ms: 100,
        }))
    }

    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        if !self.registered.load(Ordering::SeqCst) {
            return Err(Status::not_found("unknown instance; register first"));
        }
        match request.into_inner().body {
            Some(report_request::Body::Phase(p)) => {
                let _ = self.events.send(Event::Phase(p));
            }
            Some(report_request::Body::Heartbeat(h)) => {
                let _ = self.events.send(Event::Heartbeat(h.workers_alive));
            }
            None => {}
        }
        Ok(Response::new(ReportResponse {}))
    }

    type FetchArtifactStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<Chunk, Status>> + Send>>;

    async fn fetch_artifact(
        &self,
        request: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let digest = request.into_inner().digest;
        let data = self
            .artifacts
            .lock()
            .unwrap()
            .iter()
            .find(|(d, _)| *d == digest)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| Status::not_found("no such artifact"))?;
        let chunks: Vec<Result<Chunk, Status>> = data
            .chunks(1000)
            .map(|c| Ok(Chunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }
}

struct Harness {
    registered: Arc<AtomicBool>,
    events: mpsc::UnboundedReceiver<Event>,
    artifacts: Artifacts,
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    agent_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent: tokio::task::JoinHandle<Result<(), aibro_agent::Error>>,
}

impl Harness {
    async fn start() -> Harness {
        let (tx, events) = mpsc::unbounded_channel();
        let artifacts = Arc::new(Mutex::new(Vec::new()));
        let registered = Arc::new(AtomicBool::new(false));
        let gw = FakeGateway {
            events: tx,
            artifacts: artifacts.clone(),
            registered: registered.clone(),
        };
        let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_addr = gw_listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentGatewayServer::new(gw))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(gw_listener)),
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agent");
        let args = <aibro_agent::Args as clap::Parser>::parse_from([
            "aibro-agent",
            "--scheduler",
            &format!("http://{gw_addr}"),
            "--join-token",
            "join-secret",
            "--instance-id",
            "inst-1",
            "--dir",
            dir.to_str().unwrap(),
            "--workers",
            "2",
        ]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(aibro_agent::run(args, listener, async {
            let _ = stopped.await;
        }));
        Harness {
            registered,
            events,
            artifacts,
            _tmp: tmp,
            dir,
            agent_url,
            stop: Some(stop),
            agent,
        }
    }

    fn add_artifact(&self, files: &[(&str, &str)]) -> String {
        let src = tempfile::tempdir().unwrap();
        for (name, body) in files {
            let p = src.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let mut bytes = Vec::new();
        aibro_agent::archive::pack_dir(src.path(), &mut bytes).unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        self.artifacts.lock().unwrap().push((digest.clone(), bytes));
        digest
    }

    async fn next_event(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(60), self.events.recv())
            .await
            .expect("timed out waiting for an agent event")
            .expect("gateway gone")
    }

    /// The next phase report (heartbeats and registrations are skipped).
    async fn next_phase(&mut self) -> PhaseReport {
        loop {
            if let Event::Phase(p) = self.next_event().await {
                return p;
            }
        }
    }

    async fn client(&self) -> AgentClient<tonic::transport::Channel> {
        AgentClient::connect(self.agent_url.clone()).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_predict_stop() {
    let mut h = Harness::start().await;
    match h.next_event().await {
        Event::Registered(req, auth) => {
            assert_eq!(req.instance_id, "inst-1");
            assert_eq!(auth, "Bearer join-secret");
            assert_eq!(format!("http://{}", req.address), h.agent_url);
            assert!(req.hardware.unwrap().cpus >= 1);
        }
        other => panic!("expected Register, got {other:?}"),
    }
    let digest = h.add_artifact(&[
        (
            "predict.py",
            "import json\ndef load_model():\n    print('loading')\n    return 3\n\
             def run(model):\n    return {'y': json.load(open('data/in.json'))['x'] * model}\n",
        ),
        ("data/in.json", r#"{"x": 1}"#),
        ("requirements.txt", "# nothing to install\n"),
    ]);
    let mut c = h.client().await;

    // Unknown job.
    let e = c
        .predict(AgentPredictRequest {
            job_id: "job-1".into(),
            payload: b"{}".to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    c.prepare(PrepareRequest {
        job_id: "job-1".into(),
        artifact_digest: digest.clone(),
        kind: JobKind::Inference.into(),
    })
    .await
    .unwrap();
    let phases = [
        AgentPhase::GearingUpEnv,
        AgentPhase::ModelLoading,
        AgentPhase::Serving,
    ];
    for want in phases {
        let p = h.next_phase().await;
        assert_eq!(p.job_id, "job-1");
        assert_eq!(p.phase(), want, "{p:?}");
    }
    let out = c
        .predict(AgentPredictRequest {
            job_id: "job-1".into(),
            payload: br#"{"x": 14}"#.to_vec(),
            content_type: "application/json".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.content_type, "application/json");
    let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(v, serde_json::json!({"y": 42}));

    // Heartbeats report both workers.
    loop {
        if let Event::Heartbeat(alive) = h.next_event().await {
            if alive == 2 {
                break;
            }
        }
    }

    // Training is not there yet.
    let e = c
        .prepare(PrepareRequest {
            job_id: "job-2".into(),
            artifact_digest: digest,
            kind: JobKind::Training.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);

    c.stop(StopRequest { terminate: true }).await.unwrap();
    assert!(!h.dir.join("jobs").exists());
    let e = c
        .predict(AgentPredictRequest {
            job_id: "job-1".into(),
            payload: b"{}".to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    h.stop.take().unwrap().send(()).unwrap();
    h.agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_load_reports_traceback() {
    let mut h = Harness::start().await;
    let digest = h.add_artifact(&[(
        "predict.py",
        "def load_model():\n    raise RuntimeError('no weights here')\ndef run(m, d):\n    pass\n",
    )]);
    let mut c = h.client().await;
    c.prepare(PrepareRequest {
        job_id: "bad".into(),
        artifact_digest: digest,
        kind: JobKind::Inference.into(),
    })
    .await
    .unwrap();
    let p = loop {
        let p = h.next_phase().await;
        if p.phase() == AgentPhase::Failed {
            break p;
        }
        assert_ne!(p.phase(), AgentPhase::Serving);
    };
    assert!(
        p.traceback.contains("RuntimeError: no weights here"),
        "{p:?}"
    );
    let e = c
        .predict(AgentPredictRequest {
            job_id: "bad".into(),
            payload: b"{}".to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    // A missing artifact fails too, with the scheduler's reason.
    c.prepare(PrepareRequest {
        job_id: "missing".into(),
        artifact_digest: "sha256:00".into(),
        kind: JobKind::Inference.into(),
    })
    .await
    .unwrap();
    let p = loop {
        let p = h.next_phase().await;
        if p.phase() == AgentPhase::Failed {
            break p;
        }
    };
    assert!(p.traceback.contains("no such artifact"), "{p:?}");
    h.stop.take().unwrap().send(()).unwrap();
    h.agent.await.unwrap().unwrap();
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
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut reregistered = false;
    while seen.last() != Some(&AgentPhase::Serving) {
        match h.next_event().await {
            Event::Registered(..) => reregistered = true,
            Event::Phase(p) => seen.push(p.phase()),
            Event::Heartbeat(_) => {}
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
    h.stop.take().unwrap().send(()).unwrap();
    h.agent.await.unwrap().unwrap();
}

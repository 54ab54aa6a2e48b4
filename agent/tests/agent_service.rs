//! The agent against a fake scheduler (an in-test AgentGateway): register, Prepare,
//! phase reports, Predict, error codes, Stop, heartbeats, the orphan timeout,
//! training (Train, Progress reports, UploadResult, environment reuse), pool agents
//! (Assign, re-registration, reuse of a stopped job's files) and GPU assignment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aibro_proto::v1::agent_client::AgentClient;
use aibro_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use aibro_proto::v1::{
    report_request, AgentPhase, AgentPredictRequest, ArtifactRef, AssignRequest, Chunk,
    FetchArtifactRequest, Heartbeat, JobKind, PhaseReport, PrepareRequest, Progress,
    RegisterRequest, RegisterResponse, ReportRequest, ReportResponse, ResultChunk, StopRequest,
    TrainRequest,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// (digest, bytes) of the artifacts the fake scheduler serves.
type Artifacts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A result the agent uploaded.
#[derive(Debug, Clone)]
struct Upload {
    job_id: String,
    auth: String,
    chunks: usize,
    bytes: Vec<u8>,
}

type Uploads = Arc<Mutex<Vec<Upload>>>;

/// Who sent a report.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ids {
    instance_id: String,
    agent_id: String,
}

#[derive(Debug)]
enum Event {
    Registered(RegisterRequest, String),
    Phase(PhaseReport, Ids),
    Progress(Progress),
    Heartbeat(Heartbeat, Ids),
}

struct FakeGateway {
    events: mpsc::UnboundedSender<Event>,
    artifacts: Artifacts,
    uploads: Uploads,
    /// Set to refuse uploads.
    fail_uploads: Arc<AtomicBool>,
    /// Cleared to act like a restarted scheduler that forgot the instance.
    registered: Arc<AtomicBool>,
    /// Set to fail every report as if the scheduler were unreachable.
    refuse_reports: Arc<AtomicBool>,
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
        if self.refuse_reports.load(Ordering::SeqCst) {
            return Err(Status::unavailable("the scheduler is restarting"));
        }
        if !self.registered.load(Ordering::SeqCst) {
            return Err(Status::not_found("unknown instance; register first"));
        }
        let req = request.into_inner();
        let ids = Ids {
            instance_id: req.instance_id,
            agent_id: req.agent_id,
        };
        match req.body {
            Some(report_request::Body::Phase(p)) => {
                let _ = self.events.send(Event::Phase(p, ids));
            }
            Some(report_request::Body::Heartbeat(h)) => {
                let _ = self.events.send(Event::Heartbeat(h, ids));
            }
            Some(report_request::Body::Progress(p)) => {
                let _ = self.events.send(Event::Progress(p));
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

    async fn upload_result(
        &self,
        request: Request<tonic::Streaming<ResultChunk>>,
    ) -> Result<Response<ArtifactRef>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        if self.fail_uploads.load(Ordering::SeqCst) {
            return Err(Status::resource_exhausted("result store is full"));
        }
        let mut stream = request.into_inner();
        let mut upload = Upload {
            job_id: String::new(),
            auth,
            chunks: 0,
            bytes: Vec::new(),
        };
        while let Some(chunk) = stream.message().await? {
            if chunk.job_id.is_empty() || (upload.chunks > 0 && chunk.job_id != upload.job_id) {
                return Err(Status::invalid_argument(
                    "every chunk must name the same job",
                ));
            }
            if chunk.data.len() > 1 << 20 {
                return Err(Status::invalid_argument("chunk over 1 MiB"));
            }
            upload.job_id = chunk.job_id;
            upload.chunks += 1;
            upload.bytes.extend_from_slice(&chunk.data);
        }
        let stored = ArtifactRef {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&upload.bytes))),
            size: upload.bytes.len() as u64,
        };
        self.uploads.lock().unwrap().push(upload);
        Ok(Response::new(stored))
    }
}

struct Harness {
    registered: Arc<AtomicBool>,
    refuse_reports: Arc<AtomicBool>,
    events: mpsc::UnboundedReceiver<Event>,
    artifacts: Artifacts,
    uploads: Uploads,
    fail_uploads: Arc<AtomicBool>,
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    agent_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent: tokio::task::JoinHandle<Result<(), aibro_agent::Error>>,
}

impl Harness {
    /// An agent started as instance `inst-1` with two workers.
    async fn start() -> Harness {
        Harness::start_with(&["--instance-id", "inst-1", "--workers", "2"]).await
    }

    /// An agent started with `flags` besides the scheduler, join token and dir.
    async fn start_with(flags: &[&str]) -> Harness {
        let (tx, events) = mpsc::unbounded_channel();
        let artifacts = Arc::new(Mutex::new(Vec::new()));
        let uploads = Uploads::default();
        let fail_uploads = Arc::new(AtomicBool::new(false));
        let registered = Arc::new(AtomicBool::new(false));
        let refuse_reports = Arc::new(AtomicBool::new(false));
        let gw = FakeGateway {
            events: tx,
            artifacts: artifacts.clone(),
            uploads: uploads.clone(),
            fail_uploads: fail_uploads.clone(),
            registered: registered.clone(),
            refuse_reports: refuse_reports.clone(),
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
        let scheduler = format!("http://{gw_addr}");
        let args = <aibro_agent::Args as clap::Parser>::parse_from(
            [
                "aibro-agent",
                "--scheduler",
                &scheduler,
                "--join-token",
                "join-secret",
                "--dir",
                dir.to_str().unwrap(),
            ]
            .iter()
            .chain(flags),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent_url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(aibro_agent::run(args, listener, async {
            let _ = stopped.await;
        }));
        Harness {
            registered,
            refuse_reports,
            events,
            artifacts,
            uploads,
            fail_uploads,
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
        self.add_dir_artifact(src.path())
    }

    fn add_dir_artifact(&self, dir: &Path) -> String {
        let mut bytes = Vec::new();
        aibro_repo::archive::pack_dir(dir, &mut bytes).unwrap();
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
        self.next_phase_from().await.0
    }

    /// The next phase report and who sent it.
    async fn next_phase_from(&mut self) -> (PhaseReport, Ids) {
        loop {
            if let Event::Phase(p, ids) = self.next_event().await {
                return (p, ids);
            }
        }
    }

    /// The next registration.
    async fn next_register(&mut self) -> RegisterRequest {
        loop {
            if let Event::Registered(req, _) = self.next_event().await {
                return req;
            }
        }
    }

    /// The next heartbeat that satisfies `want`.
    async fn heartbeat_where(&mut self, want: impl Fn(&Heartbeat, &Ids) -> bool) -> Heartbeat {
        loop {
            if let Event::Heartbeat(hb, ids) = self.next_event().await {
                if want(&hb, &ids) {
                    return hb;
                }
            }
        }
    }

    async fn stop_agent(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.agent.await.unwrap().unwrap();
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
            assert!(req.agent_id.starts_with("agent-"), "{req:?}");
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

    // Only pool agents can be assigned.
    let e = c
        .assign(AssignRequest {
            instance_id: "inst-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("inst-1"), "{e:?}");

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
        ..Default::default()
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
        if let Event::Heartbeat(hb, _) = h.next_event().await {
            if hb.workers_alive == 2 && hb.workers == 2 && hb.queued == 0 {
                break;
            }
        }
    }

    // An inference job cannot train.
    let e = c
        .train(TrainRequest {
            job_id: "job-1".into(),
            args: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("TRAINING"), "{e:?}");

    // A repo without train.py cannot be prepared for training.
    c.prepare(PrepareRequest {
        job_id: "job-2".into(),
        artifact_digest: digest,
        kind: JobKind::Training.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let p = loop {
        let p = h.next_phase().await;
        assert_eq!(p.job_id, "job-2");
        if p.phase() == AgentPhase::Failed {
            break p;
        }
        assert_ne!(p.phase(), AgentPhase::Serving, "{p:?}");
    };
    assert!(
        p.message.contains("train.py") && p.message.contains("train(output_dir, **args)"),
        "{p:?}"
    );

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
        ..Default::default()
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
        ..Default::default()
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
    h.stop.take().unwrap().send(()).unwrap();
    h.agent.await.unwrap().unwrap();
}

/// A phase or progress report, in the order the fake scheduler got them.
#[derive(Debug)]
enum Item {
    Phase(PhaseReport),
    Progress(Progress),
}

impl Harness {
    /// The reports of `job_id` up to its RETURNED or FAILED report.
    async fn until_trained(&mut self, job_id: &str) -> Vec<Item> {
        let mut items = Vec::new();
        loop {
            match self.next_event().await {
                Event::Phase(p, _) => {
                    assert_eq!(p.job_id, job_id, "{p:?}");
                    let end = matches!(p.phase(), AgentPhase::Returned | AgentPhase::Failed);
                    items.push(Item::Phase(p));
                    if end {
                        return items;
                    }
                }
                Event::Progress(p) => {
                    assert_eq!(p.job_id, job_id, "{p:?}");
                    items.push(Item::Progress(p));
                }
                Event::Registered(..) | Event::Heartbeat(..) => {}
            }
        }
    }

    async fn expect_phases(&mut self, job_id: &str, want: &[(AgentPhase, bool)]) {
        for (phase, cached) in want {
            let p = self.next_phase().await;
            assert_eq!(p.job_id, job_id, "{p:?}");
            assert_eq!(p.phase(), *phase, "{p:?}");
            assert_eq!(p.env_cached, *cached, "{p:?}");
        }
    }

    fn uploads(&self) -> Vec<Upload> {
        self.uploads.lock().unwrap().clone()
    }
}

fn phases(items: &[Item]) -> Vec<AgentPhase> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Phase(p) => Some(p.phase()),
            Item::Progress(_) => None,
        })
        .collect()
}

fn progress(items: &[Item]) -> Vec<&Progress> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Progress(p) => Some(p),
            Item::Phase(_) => None,
        })
        .collect()
}

fn last_phase(items: &[Item]) -> &PhaseReport {
    match items.last() {
        Some(Item::Phase(p)) => p,
        other => panic!("{other:?}"),
    }
}

/// Every file under `dir`, by relative path.
fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The files of an uploaded tar.gz.
fn unpack_result(bytes: &[u8]) -> BTreeMap<PathBuf, Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("result.tar.gz");
    std::fs::write(&archive, bytes).unwrap();
    let dest = tmp.path().join("out");
    aibro_repo::archive::unpack(&archive, &dest, &Default::default()).unwrap();
    read_tree(&dest)
}

fn train_req(job_id: &str, args: &[(&str, &str)]) -> TrainRequest {
    TrainRequest {
        job_id: job_id.into(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn prepare_req(job_id: &str, digest: &str, kind: JobKind) -> PrepareRequest {
    PrepareRequest {
        job_id: job_id.into(),
        artifact_digest: digest.into(),
        kind: kind.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_the_example_and_uploads_its_outputs() {
    let mut h = Harness::start().await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/train-linear");
    let digest = h.add_dir_artifact(&example);
    let mut c = h.client().await;

    // Train needs a prepared training job.
    let e = c.train(train_req("fit-1", &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    c.prepare(prepare_req("fit-1", &digest, JobKind::Training))
        .await
        .unwrap();
    // No requirements: nothing cached, but gearing up is still a phase.
    h.expect_phases(
        "fit-1",
        &[
            (AgentPhase::GearingUpEnv, false),
            (AgentPhase::ModelLoading, false),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    // A repeated Prepare re-reports SERVING only.
    c.prepare(prepare_req("fit-1", &digest, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases("fit-1", &[(AgentPhase::Serving, false)])
        .await;
    // A training job serves no Predict.
    let e = c
        .predict(AgentPredictRequest {
            job_id: "fit-1".into(),
            payload: b"{}".to_vec(),
            content_type: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    c.train(train_req("fit-1", &[("epochs", "5"), ("lr", "0.05")]))
        .await
        .unwrap();
    let items = h.until_trained("fit-1").await;
    assert_eq!(
        phases(&items),
        [
            AgentPhase::Training,
            AgentPhase::Returning,
            AgentPhase::Returned
        ],
        "{items:#?}"
    );
    // All progress comes between TRAINING and RETURNING.
    assert!(matches!(&items[0], Item::Phase(p) if p.phase() == AgentPhase::Training));
    let returning = items
        .iter()
        .position(|i| matches!(i, Item::Phase(p) if p.phase() == AgentPhase::Returning))
        .unwrap();
    assert!(items[1..returning]
        .iter()
        .all(|i| matches!(i, Item::Progress(_))));
    let prog = progress(&items);
    let seqs: Vec<u64> = prog.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=prog.len() as u64).collect::<Vec<_>>());
    let epochs: Vec<_> = prog.iter().filter(|p| p.epoch > 0).collect();
    assert_eq!(
        epochs
            .iter()
            .map(|p| (p.epoch, p.total_epochs))
            .collect::<Vec<_>>(),
        (1..=5).map(|e| (e, 5)).collect::<Vec<_>>()
    );
    let losses: Vec<f64> = epochs.iter().map(|p| p.metrics["loss"]).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[4] < losses[0], "{losses:?}");
    let logs: Vec<&str> = prog
        .iter()
        .filter(|p| p.stream == "stdout")
        .map(|p| p.log_line.as_str())
        .collect();
    assert_eq!(logs.len(), 5, "{logs:?}");
    for (i, line) in logs.iter().enumerate() {
        assert!(
            line.starts_with(&format!("epoch {}/5 loss=", i + 1)),
            "{line}"
        );
    }
    assert!(prog.iter().all(|p| p.stream != "stderr"), "{prog:?}");

    // The upload: what train() wrote, under the reported address.
    let returned = last_phase(&items).clone();
    let uploads = h.uploads();
    assert_eq!(uploads.len(), 1);
    let up = &uploads[0];
    assert_eq!(up.job_id, "fit-1");
    assert_eq!(up.auth, "Bearer join-secret");
    assert!(up.chunks >= 1);
    assert_eq!(
        returned.result_digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&up.bytes)))
    );
    assert_eq!(returned.result_size, up.bytes.len() as u64);
    let files = unpack_result(&up.bytes);
    let written = read_tree(&h.dir.join("jobs/fit-1/output"));
    assert_eq!(files, written);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        [Path::new("metrics.csv"), Path::new("model.json")]
    );
    let model: serde_json::Value = serde_json::from_slice(&files[Path::new("model.json")]).unwrap();
    assert!(model["w"].is_f64() && model["b"].is_f64(), "{model}");
    let csv = String::from_utf8(files[Path::new("metrics.csv")].clone()).unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");

    // A repeated Train re-sends the outcome; it does not train again.
    c.train(train_req("fit-1", &[])).await.unwrap();
    let again = h.next_phase().await;
    assert_eq!(again, returned);
    assert_eq!(h.uploads().len(), 1);

    h.stop.take().unwrap().send(()).unwrap();
    h.agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_jobs_reuse_the_environment() {
    let mut h = Harness::start().await;
    // An options-only requirements file: a virtualenv is built, pip installs nothing.
    let reqs = ("requirements.txt", "--no-index\n");
    let first = h.add_artifact(&[
        (
            "train.py",
            "import sys\ndef train(output_dir, tag='?'):\n    \
             open(output_dir + '/env.txt', 'w').write(sys.prefix + '\\n' + tag)\n",
        ),
        reqs,
    ]);
    let mut c = h.client().await;
    c.prepare(prepare_req("a", &first, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases(
        "a",
        &[
            (AgentPhase::GearingUpEnv, false),
            (AgentPhase::ModelLoading, false),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    c.train(train_req("a", &[("tag", "A")])).await.unwrap();
    let items = h.until_trained("a").await;
    assert_eq!(
        phases(&items),
        [
            AgentPhase::Training,
            AgentPhase::Returning,
            AgentPhase::Returned
        ],
        "{items:#?}"
    );
    let files = unpack_result(&h.uploads()[0].bytes);
    let env = String::from_utf8(files[Path::new("env.txt")].clone()).unwrap();
    let (prefix, tag) = env.split_once('\n').unwrap();
    assert!(
        Path::new(prefix).starts_with(h.dir.join("envs")),
        "trained outside the job's venv: {prefix}"
    );
    assert_eq!(tag, "A");

    // The instance is reused for another job: the environment stays.
    c.stop(StopRequest { terminate: false }).await.unwrap();
    assert!(h.dir.join("envs").is_dir());

    // A second job with the same requirements: no gearing up; train() raises.
    let second = h.add_artifact(&[
        (
            "train.py",
            "import aibro\ndef train(output_dir, **args):\n    \
             aibro.report(epoch=1, total_epochs=3, loss=1.5)\n    \
             print('about to fail')\n    \
             raise ValueError('diverged at lr=' + args['lr'])\n",
        ),
        reqs,
    ]);
    c.prepare(prepare_req("b", &second, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases(
        "b",
        &[
            (AgentPhase::ModelLoading, true),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    c.train(train_req("b", &[("lr", "9")])).await.unwrap();
    let items = h.until_trained("b").await;
    assert_eq!(
        phases(&items),
        [AgentPhase::Training, AgentPhase::Failed],
        "{items:#?}"
    );
    let failed = last_phase(&items);
    assert!(failed.traceback.contains("Traceback"), "{failed:?}");
    assert!(
        failed.traceback.contains("ValueError: diverged at lr=9"),
        "{failed:?}"
    );
    assert!(failed.traceback.contains("train.py"), "{failed:?}");
    assert!(failed.message.contains("ValueError"), "{failed:?}");
    // Lines and reports come through different pipes: the order between the two
    // kinds is the order the agent read them in, so either may come first.
    let prog = progress(&items);
    assert_eq!(prog.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2]);
    let report = prog.iter().find(|p| p.epoch > 0).unwrap();
    assert_eq!((report.epoch, report.total_epochs), (1, 3));
    assert_eq!(report.metrics["loss"], 1.5);
    let line = prog.iter().find(|p| !p.stream.is_empty()).unwrap();
    assert_eq!(
        (line.stream.as_str(), line.log_line.as_str()),
        ("stdout", "about to fail")
    );
    assert_eq!(h.uploads().len(), 1);

    // Stop ends a running training process.
    let third = h.add_artifact(&[
        (
            "train.py",
            "import os, time\ndef train(output_dir):\n    \
             print('pid', os.getpid())\n    time.sleep(600)\n",
        ),
        reqs,
    ]);
    c.prepare(prepare_req("c", &third, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases(
        "c",
        &[
            (AgentPhase::ModelLoading, true),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    c.train(train_req("c", &[])).await.unwrap();
    h.expect_phases("c", &[(AgentPhase::Training, false)]).await;
    let pid = loop {
        if let Event::Progress(p) = h.next_event().await {
            break p.log_line.strip_prefix("pid ").unwrap().to_string();
        }
    };
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    c.stop(StopRequest { terminate: true }).await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "training process {pid} survived Stop"
    );
    assert!(!h.dir.join("jobs").exists());
    assert!(h.dir.join("envs").is_dir());
    let e = c.train(train_req("c", &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    h.stop.take().unwrap().send(()).unwrap();
    h.agent.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_reconnects_and_upload_failures() {
    let mut h = Harness::start().await;
    assert!(matches!(h.next_event().await, Event::Registered(..)));
    let digest = h.add_artifact(&[(
        "train.py",
        "import os, aibro\ndef train(output_dir, n='30'):\n    \
         for e in range(1, int(n) + 1):\n        \
         print('line', e)\n        aibro.report(epoch=e, total_epochs=int(n), step=e)\n    \
         os.makedirs(output_dir + '/ckpt')\n    \
         with open(output_dir + '/ckpt/weights.bin', 'wb') as f:\n        \
         f.write(os.urandom(2_500_000))\n",
    )]);
    let mut c = h.client().await;
    c.prepare(prepare_req("big", &digest, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases(
        "big",
        &[
            (AgentPhase::GearingUpEnv, false),
            (AgentPhase::ModelLoading, false),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    // The scheduler "restarts": reports fail until the agent registers again, and
    // are then sent again, each once, in order.
    h.registered.store(false, Ordering::SeqCst);
    c.train(train_req("big", &[])).await.unwrap();
    let items = h.until_trained("big").await;
    assert_eq!(
        phases(&items),
        [
            AgentPhase::Training,
            AgentPhase::Returning,
            AgentPhase::Returned
        ],
        "{items:#?}"
    );
    let prog = progress(&items);
    assert_eq!(prog.len(), 60);
    let seqs: Vec<u64> = prog.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    let epochs: Vec<u32> = prog
        .iter()
        .filter(|p| p.epoch > 0)
        .map(|p| p.epoch)
        .collect();
    assert_eq!(epochs, (1..=30).collect::<Vec<_>>());
    let lines: Vec<&str> = prog
        .iter()
        .filter(|p| p.stream == "stdout")
        .map(|p| p.log_line.as_str())
        .collect();
    let want: Vec<String> = (1..=30).map(|e| format!("line {e}")).collect();
    assert_eq!(lines, want);
    let up = h.uploads().pop().unwrap();
    assert!(up.chunks >= 3, "{} chunks", up.chunks);
    let returned = last_phase(&items);
    assert_eq!(
        returned.result_digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&up.bytes)))
    );
    let files = unpack_result(&up.bytes);
    assert_eq!(files, read_tree(&h.dir.join("jobs/big/output")));
    assert_eq!(files[Path::new("ckpt/weights.bin")].len(), 2_500_000);

    // An upload the scheduler refuses fails the job with its reason.
    h.fail_uploads.store(true, Ordering::SeqCst);
    c.prepare(prepare_req("refused", &digest, JobKind::Training))
        .await
        .unwrap();
    h.expect_phases(
        "refused",
        &[
            (AgentPhase::GearingUpEnv, false),
            (AgentPhase::ModelLoading, false),
            (AgentPhase::Serving, false),
        ],
    )
    .await;
    c.train(train_req("refused", &[("n", "1")])).await.unwrap();
    let items = h.until_trained("refused").await;
    assert_eq!(
        phases(&items),
        [
            AgentPhase::Training,
            AgentPhase::Returning,
            AgentPhase::Failed
        ],
        "{items:#?}"
    );
    let failed = last_phase(&items);
    assert!(
        failed.traceback.contains("result store is full"),
        "{failed:?}"
    );

    h.stop.take().unwrap().send(()).unwrap();
    h.agent.await.unwrap().unwrap();
}

fn predict_req(job_id: &str, payload: serde_json::Value) -> AgentPredictRequest {
    AgentPredictRequest {
        job_id: job_id.into(),
        payload: serde_json::to_vec(&payload).unwrap(),
        content_type: "application/json".into(),
    }
}

fn assign(instance_id: &str) -> AssignRequest {
    AssignRequest {
        instance_id: instance_id.into(),
    }
}

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

/// What the scheduler does with a pool agent: assign it (it registers again as the
/// instance and is prepared), stop the instance (Stop, then back to the pool), start
/// it again (the job's unpacked repo and environment are reused), terminate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_agent_is_assigned_stopped_and_started_again() {
    let mut h = Harness::start_with(&["--machine-id", "gpu.small", "--workers", "1"]).await;
    let joined = h.next_register().await;
    assert_eq!(joined.instance_id, "");
    assert_eq!(joined.machine_id, "gpu.small");
    let agent_id = joined.agent_id.clone();
    assert!(agent_id.starts_with("agent-"), "{joined:?}");
    assert_eq!(
        std::fs::read_to_string(h.dir.join("agent-id")).unwrap(),
        agent_id
    );
    let idle = Ids {
        instance_id: String::new(),
        agent_id: agent_id.clone(),
    };
    h.heartbeat_where(|hb, ids| *ids == idle && hb.workers == 0)
        .await;
    let digest = h.add_artifact(&[
        (
            "predict.py",
            "import os\ndef load_model():\n    return os.getpid()\n\
             def run(model, data):\n    return {'x': data['x'], 'pid': model}\n",
        ),
        ("requirements.txt", "--no-index\n"),
    ]);
    let mut c = h.client().await;
    // An idle agent takes no job.
    let e = c
        .prepare(prepare_req("job-1", &digest, JobKind::Inference))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // Launch: assigned, it registers again as the instance.
    c.assign(assign("inst-9")).await.unwrap();
    let req = h.next_register().await;
    assert_eq!(
        (req.instance_id.as_str(), req.agent_id.as_str()),
        ("inst-9", agent_id.as_str())
    );
    let inst = Ids {
        instance_id: "inst-9".into(),
        agent_id: agent_id.clone(),
    };
    c.prepare(prepare_req("job-1", &digest, JobKind::Inference))
        .await
        .unwrap();
    for (phase, cached) in [
        (AgentPhase::GearingUpEnv, false),
        (AgentPhase::ModelLoading, false),
        (AgentPhase::Serving, false),
    ] {
        let (p, ids) = h.next_phase_from().await;
        assert_eq!((p.phase(), p.env_cached), (phase, cached), "{p:?}");
        assert_eq!(ids, inst);
    }
    let out = c
        .predict(predict_req("job-1", serde_json::json!({"x": 1})))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(v["x"], 1);
    let pid = v["pid"].as_u64().unwrap();
    h.heartbeat_where(|hb, ids| *ids == inst && hb.workers == 1 && hb.workers_alive == 1)
        .await;
    let repo_file = h.dir.join("jobs/job-1/repo/predict.py");
    let unpacked = std::fs::metadata(&repo_file).unwrap().modified().unwrap();

    // Assigning the instance it already runs as changes nothing.
    c.assign(assign("inst-9")).await.unwrap();
    // Stop: the worker has exited when Stop returns; back to the pool.
    c.stop(StopRequest { terminate: false }).await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "worker {pid} survived Stop"
    );
    c.assign(assign("")).await.unwrap();
    // The next registration is the idle one (the no-op Assign sent none).
    let req = h.next_register().await;
    assert_eq!(
        (req.instance_id.as_str(), req.agent_id.as_str()),
        ("", agent_id.as_str())
    );
    h.heartbeat_where(|hb, ids| *ids == idle && hb.workers == 0 && hb.workers_alive == 0)
        .await;
    assert!(repo_file.exists());

    // Start again: nothing is fetched (the artifact is gone from the scheduler) and
    // nothing installed.
    h.artifacts.lock().unwrap().clear();
    c.assign(assign("inst-9")).await.unwrap();
    assert_eq!(h.next_register().await.instance_id, "inst-9");
    c.prepare(prepare_req("job-1", &digest, JobKind::Inference))
        .await
        .unwrap();
    for (phase, cached) in [
        (AgentPhase::ModelLoading, true),
        (AgentPhase::Serving, false),
    ] {
        let (p, ids) = h.next_phase_from().await;
        assert_eq!((p.phase(), p.env_cached), (phase, cached), "{p:?}");
        assert_eq!(ids, inst);
    }
    assert_eq!(
        std::fs::metadata(&repo_file).unwrap().modified().unwrap(),
        unpacked
    );
    let out = c
        .predict(predict_req("job-1", serde_json::json!({"x": 2})))
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(v["x"], 2);
    assert_ne!(v["pid"], pid);

    // Terminate: the job's files go, the environment stays for later jobs.
    c.stop(StopRequest { terminate: true }).await.unwrap();
    c.assign(assign("")).await.unwrap();
    assert_eq!(h.next_register().await.instance_id, "");
    assert!(!h.dir.join("jobs").exists());
    assert!(h.dir.join("envs").is_dir());
    h.stop_agent().await;
}

/// Reports queued for an instance are not sent once the agent runs as another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_an_earlier_instance_are_dropped() {
    let mut h = Harness::start_with(&["--machine-id", "gpu.small", "--workers", "1"]).await;
    assert_eq!(h.next_register().await.instance_id, "");
    let digest = h.add_artifact(&[(
        "predict.py",
        "def load_model():\n    return 0\ndef run(m, d):\n    return d\n",
    )]);
    let mut c = h.client().await;
    c.assign(assign("inst-a")).await.unwrap();
    assert_eq!(h.next_register().await.instance_id, "inst-a");
    // The scheduler becomes unreachable: the job's reports stay queued.
    h.refuse_reports.store(true, Ordering::SeqCst);
    c.prepare(prepare_req("old", &digest, JobKind::Inference))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while c
        .predict(predict_req("old", serde_json::json!(1)))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "job never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reassigned meanwhile (the scheduler's Stop is skipped: the job stays).
    c.assign(assign("inst-b")).await.unwrap();
    loop {
        if h.next_register().await.instance_id == "inst-b" {
            break;
        }
    }
    h.refuse_reports.store(false, Ordering::SeqCst);
    c.prepare(prepare_req("new", &digest, JobKind::Inference))
        .await
        .unwrap();
    // The first report to arrive is the new job's, under the new instance.
    let (p, ids) = h.next_phase_from().await;
    assert_eq!(p.job_id, "new", "{p:?}");
    assert_eq!(ids.instance_id, "inst-b");
    loop {
        let (p, ids) = h.next_phase_from().await;
        assert_eq!(
            (p.job_id.as_str(), ids.instance_id.as_str()),
            ("new", "inst-b")
        );
        if p.phase() == AgentPhase::Serving {
            break;
        }
    }
    h.stop_agent().await;
}

/// An idle pool agent keeps heartbeating, so the orphan timeout never hits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pool_agent_is_not_orphaned() {
    let mut h =
        Harness::start_with(&["--machine-id", "gpu.small", "--orphan-timeout-s", "1"]).await;
    assert_eq!(h.next_register().await.instance_id, "");
    let first = tokio::time::Instant::now();
    // Heartbeats spanning twice the orphan timeout, every one of them idle.
    while first.elapsed() < Duration::from_secs(2) {
        h.heartbeat_where(|_, ids| ids.instance_id.is_empty()).await;
    }
    assert!(!h.agent.is_finished(), "the idle agent exited");
    h.stop_agent().await;
}

/// `--gpus 0,1` with two workers: each worker sees one GPU through
/// CUDA_VISIBLE_DEVICES; heartbeats count the requests waiting for a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpus_are_spread_over_the_workers() {
    let mut h =
        Harness::start_with(&["--instance-id", "inst-g", "--workers", "2", "--gpus", "0,1"]).await;
    let req = h.next_register().await;
    // Only detected GPUs are reported, and only those named by --gpus.
    let reported = req.hardware.unwrap().gpus;
    assert!(reported.iter().all(|g| g.index <= 1), "{reported:?}");
    let digest = h.add_artifact(&[(
        "predict.py",
        "import os, time\ndef load_model():\n    return None\n\
         def run(model, data):\n    \
         open(os.path.join(data['dir'], 'started-%d' % os.getpid()), 'w').close()\n    \
         deadline = time.time() + 60\n    \
         while not os.path.exists(os.path.join(data['dir'], 'release')) and time.time() < deadline:\n        \
         time.sleep(0.01)\n    \
         return {'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), 'pid': os.getpid()}\n",
    )]);
    let mut c = h.client().await;
    c.prepare(prepare_req("g", &digest, JobKind::Inference))
        .await
        .unwrap();
    loop {
        if h.next_phase().await.phase() == AgentPhase::Serving {
            break;
        }
    }
    let sync = tempfile::tempdir().unwrap();
    let call = |c: &AgentClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        let req = predict_req("g", serde_json::json!({ "dir": sync.path() }));
        tokio::spawn(async move { c.predict(req).await })
    };
    let busy = [call(&c), call(&c)];
    // Both requests run at once: one on each worker.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(sync.path()).unwrap().count() < 2 {
        assert!(std::time::Instant::now() < deadline, "workers never busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = call(&c);
    h.heartbeat_where(|hb, _| {
        (hb.in_flight, hb.queued, hb.workers, hb.workers_alive) == (3, 1, 2, 2)
    })
    .await;
    std::fs::write(sync.path().join("release"), "").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut pids = std::collections::BTreeSet::new();
    for r in busy.into_iter().chain([waiting]) {
        let out = r.await.unwrap().unwrap().into_inner();
        let v: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
        seen.insert(v["cuda"].as_str().unwrap().to_string());
        pids.insert(v["pid"].as_u64().unwrap());
    }
    assert_eq!(seen, ["0".to_string(), "1".to_string()].into());
    assert_eq!(pids.len(), 2);
    h.heartbeat_where(|hb, _| hb.in_flight == 0 && hb.queued == 0)
        .await;
    // Stop returns once the workers (and so their GPU memory) are gone.
    c.stop(StopRequest { terminate: false }).await.unwrap();
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} survived Stop"
        );
    }
    h.stop_agent().await;
}

//! The fake scheduler the agent's integration tests run against (an in-test
//! AgentGateway that records what the agent sends), the harness that starts an
//! agent beside it, and the request builders and report readers the tests share.
// Each test file uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aibro_proto::v1::agent_client::AgentClient;
use aibro_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use aibro_proto::v1::{
    report_request, AgentPhase, AgentPredictRequest, ArtifactRef, AssignRequest, Chunk,
    FetchArtifactRequest, Heartbeat, JobKind, PhaseReport, PrepareRequest, Progress,
    RegisterRequest, RegisterResponse, ReportRequest, ReportResponse, ResultChunk, TrainRequest,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The join token the agents under test are started with.
pub const JOIN_TOKEN: &str = "join-secret";
/// The credential the fake scheduler gives agents: in a file to one started
/// as an instance, at Register to a pool agent that sent the join token.
pub const CREDENTIAL: &str = "agent_fake-credential";

/// A client of the agent's service that sends its credential.
pub type Client = AgentClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <credential>` to every call.
#[derive(Clone)]
pub struct Bearer(pub String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0).parse().unwrap();
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

/// (digest, bytes) of the artifacts the fake scheduler serves.
pub type Artifacts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A result the agent uploaded.
#[derive(Debug, Clone)]
pub struct Upload {
    pub job_id: String,
    pub auth: String,
    pub chunks: usize,
    pub bytes: Vec<u8>,
}

pub type Uploads = Arc<Mutex<Vec<Upload>>>;

/// Who sent a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub instance_id: String,
    pub agent_id: String,
}

#[derive(Debug)]
pub enum Event {
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
        // Like the scheduler: the join token is traded for a credential.
        let credential = if auth == format!("Bearer {JOIN_TOKEN}") {
            CREDENTIAL.to_string()
        } else {
            String::new()
        };
        let _ = self
            .events
            .send(Event::Registered(request.into_inner(), auth));
        Ok(Response::new(RegisterResponse {
            heartbeat_interval_ms: 100,
            credential,
            ..Default::default()
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
            // No test here watches a metadata service.
            Some(report_request::Body::SpotNotice(_)) | None => {}
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

pub struct Harness {
    pub registered: Arc<AtomicBool>,
    pub refuse_reports: Arc<AtomicBool>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub artifacts: Artifacts,
    pub uploads: Uploads,
    pub fail_uploads: Arc<AtomicBool>,
    pub _tmp: tempfile::TempDir,
    pub dir: std::path::PathBuf,
    pub agent_url: String,
    /// Started without an instance id: it gets its credential at Register.
    pub pool: bool,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub agent: tokio::task::JoinHandle<Result<(), aibro_agent::Error>>,
}

impl Harness {
    /// An agent started as instance `inst-1` with two workers.
    pub async fn start() -> Harness {
        Harness::start_with(&["--instance-id", "inst-1", "--workers", "2"]).await
    }

    /// An agent started with `flags` besides the scheduler, join token and
    /// dir; one started as an instance also gets its credential in a file.
    pub async fn start_with(flags: &[&str]) -> Harness {
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
        let mut all = vec![
            "aibro-agent".to_string(),
            "--scheduler".into(),
            scheduler,
            "--join-token".into(),
            JOIN_TOKEN.into(),
            "--dir".into(),
            dir.to_str().unwrap().into(),
            "--sandbox-helper".into(),
            env!("CARGO_BIN_EXE_aibro-agent").into(),
        ];
        let pool = !flags.contains(&"--instance-id");
        if !pool {
            let file = tmp.path().join("credential-handed-over");
            std::fs::write(&file, CREDENTIAL).unwrap();
            all.extend(["--credential-file".into(), file.to_str().unwrap().into()]);
        }
        all.extend(flags.iter().map(|f| f.to_string()));
        let args = <aibro_agent::Args as clap::Parser>::parse_from(all);
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
            pool,
            stop: Some(stop),
            agent,
        }
    }

    pub fn add_artifact(&self, files: &[(&str, &str)]) -> String {
        let src = tempfile::tempdir().unwrap();
        for (name, body) in files {
            let p = src.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        self.add_dir_artifact(src.path())
    }

    pub fn add_dir_artifact(&self, dir: &Path) -> String {
        let mut bytes = Vec::new();
        aibro_repo::archive::pack_dir(dir, &mut bytes).unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        self.artifacts.lock().unwrap().push((digest.clone(), bytes));
        digest
    }

    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(60), self.events.recv())
            .await
            .expect("timed out waiting for an agent event")
            .expect("gateway gone")
    }

    /// The next phase report (heartbeats and registrations are skipped).
    pub async fn next_phase(&mut self) -> PhaseReport {
        self.next_phase_from().await.0
    }

    /// The next phase report and who sent it.
    pub async fn next_phase_from(&mut self) -> (PhaseReport, Ids) {
        loop {
            if let Event::Phase(p, ids) = self.next_event().await {
                return (p, ids);
            }
        }
    }

    /// The next registration.
    pub async fn next_register(&mut self) -> RegisterRequest {
        loop {
            if let Event::Registered(req, _) = self.next_event().await {
                return req;
            }
        }
    }

    /// The next heartbeat that satisfies `want`.
    pub async fn heartbeat_where(&mut self, want: impl Fn(&Heartbeat, &Ids) -> bool) -> Heartbeat {
        loop {
            if let Event::Heartbeat(hb, ids) = self.next_event().await {
                if want(&hb, &ids) {
                    return hb;
                }
            }
        }
    }

    pub async fn stop_agent(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.agent.await.unwrap().unwrap();
    }

    /// A client of the agent's service that sends its credential (a pool
    /// agent's once it has it).
    pub async fn client(&self) -> Client {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.pool && !self.dir.join("credential").exists() {
            assert!(std::time::Instant::now() < deadline, "no credential kept");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.client_with(CREDENTIAL).await
    }

    /// A client of the agent's service that sends `credential`.
    pub async fn client_with(&self, credential: &str) -> Client {
        let channel = Channel::from_shared(self.agent_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        AgentClient::with_interceptor(channel, Bearer(credential.to_string()))
    }
}

/// A phase or progress report, in the order the fake scheduler got them.
#[derive(Debug)]
pub enum Item {
    Phase(PhaseReport),
    Progress(Progress),
}

impl Harness {
    /// The reports of `job_id` up to its RETURNED or FAILED report.
    pub async fn until_trained(&mut self, job_id: &str) -> Vec<Item> {
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

    pub async fn expect_phases(&mut self, job_id: &str, want: &[(AgentPhase, bool)]) {
        for (phase, cached) in want {
            let p = self.next_phase().await;
            assert_eq!(p.job_id, job_id, "{p:?}");
            assert_eq!(p.phase(), *phase, "{p:?}");
            assert_eq!(p.env_cached, *cached, "{p:?}");
        }
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.uploads.lock().unwrap().clone()
    }

    /// Prepares `job_id` for training from `digest`, expecting the `prepared`
    /// reports (phase, env_cached), then trains it with `args`: its reports up
    /// to RETURNED or FAILED.
    pub async fn prepare_then_train(
        &mut self,
        c: &mut Client,
        job_id: &str,
        digest: &str,
        prepared: &[(AgentPhase, bool)],
        args: &[(&str, &str)],
    ) -> Vec<Item> {
        c.prepare(prepare_req(job_id, digest, JobKind::Training))
            .await
            .unwrap();
        self.expect_phases(job_id, prepared).await;
        c.train(train_req(job_id, args)).await.unwrap();
        self.until_trained(job_id).await
    }
}

pub fn phases(items: &[Item]) -> Vec<AgentPhase> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Phase(p) => Some(p.phase()),
            Item::Progress(_) => None,
        })
        .collect()
}

pub fn progress(items: &[Item]) -> Vec<&Progress> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Progress(p) => Some(p),
            Item::Phase(_) => None,
        })
        .collect()
}

pub fn last_phase(items: &[Item]) -> &PhaseReport {
    match items.last() {
        Some(Item::Phase(p)) => p,
        other => panic!("{other:?}"),
    }
}

/// Every file under `dir`, by relative path.
pub fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
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
pub fn unpack_result(bytes: &[u8]) -> BTreeMap<PathBuf, Vec<u8>> {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("result.tar.gz");
    std::fs::write(&archive, bytes).unwrap();
    let dest = tmp.path().join("out");
    aibro_repo::archive::unpack(&archive, &dest, &Default::default()).unwrap();
    read_tree(&dest)
}

pub fn train_req(job_id: &str, args: &[(&str, &str)]) -> TrainRequest {
    TrainRequest {
        job_id: job_id.into(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

pub fn prepare_req(job_id: &str, digest: &str, kind: JobKind) -> PrepareRequest {
    PrepareRequest {
        job_id: job_id.into(),
        artifact_digest: digest.into(),
        kind: kind.into(),
        ..Default::default()
    }
}

pub fn predict_req(job_id: &str, payload: serde_json::Value) -> AgentPredictRequest {
    AgentPredictRequest {
        job_id: job_id.into(),
        payload: serde_json::to_vec(&payload).unwrap(),
        content_type: "application/json".into(),
    }
}

pub fn assign(instance_id: &str) -> AssignRequest {
    AssignRequest {
        instance_id: instance_id.into(),
    }
}

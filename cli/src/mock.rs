//! Test-only in-process scheduler stand-in: just enough Artifacts, Inference
//! and Jobs to drive the CLI's deploy, predict, jobs list and timeline code end
//! to end.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use aibro_proto::v1::{
    artifacts_server::{Artifacts, ArtifactsServer},
    inference_server::{Inference, InferenceServer},
    jobs_server::{Jobs, JobsServer},
    ArtifactRef, Chunk, ClientsResponse, CompleteRequest, CompleteResponse, DeployRequest,
    DeployResponse, GetJobRequest, GetTimelineRequest, Job, JobEvent, ListClientsRequest,
    ListInstancesRequest, ListInstancesResponse, ListJobsRequest, ListJobsResponse, PredictRequest,
    PredictResponse, Timeline, UpdateClientsRequest, WatchJobRequest,
};
use futures::Stream;
use prost_types::Timestamp;
use tonic::{Request, Response, Status, Streaming};

/// What the mock saw.
#[derive(Default)]
pub struct Seen {
    pub chunk_sizes: Vec<usize>,
    pub uploaded: Vec<u8>,
    pub auth: Vec<Option<String>>,
    pub deploy: Option<DeployRequest>,
    pub predict: Option<PredictRequest>,
    /// The page_token of each ListJobs call.
    pub list_tokens: Vec<String>,
}

#[derive(Clone)]
pub struct Mock {
    pub seen: Arc<Mutex<Seen>>,
    /// The job's final state: DEPLOYED (2) or CANCELED (4).
    pub final_status: i32,
}

fn record_auth<T>(mock: &Mock, req: &Request<T>) {
    let auth = req
        .metadata()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    mock.seen.lock().unwrap().auth.push(auth);
}

fn event(seq: u64, ms: i64, status: i32, substatus: i32) -> JobEvent {
    JobEvent {
        job_id: "j-1".into(),
        seq,
        at: Some(Timestamp {
            seconds: 100 + ms / 1000,
            nanos: (ms % 1000) as i32 * 1_000_000,
        }),
        status,
        substatus,
        ..Default::default()
    }
}

impl Mock {
    fn job(&self) -> Job {
        let canceled = self.final_status == 4;
        Job {
            job_id: "j-1".into(),
            owner: "alice".into(),
            status: self.final_status,
            substatus: if canceled { 9 } else { 6 },
            reason: if canceled {
                "Traceback (most recent call last):\nValueError: boom".into()
            } else {
                String::new()
            },
            predict_address: "http://127.0.0.1:1/v1/alice/public/echo/predict".into(),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl Artifacts for Mock {
    async fn upload(
        &self,
        req: Request<Streaming<Chunk>>,
    ) -> Result<Response<ArtifactRef>, Status> {
        record_auth(self, &req);
        let mut stream = req.into_inner();
        while let Some(chunk) = stream.message().await? {
            let mut seen = self.seen.lock().unwrap();
            seen.chunk_sizes.push(chunk.data.len());
            seen.uploaded.extend_from_slice(&chunk.data);
        }
        let size = self.seen.lock().unwrap().uploaded.len() as u64;
        Ok(Response::new(ArtifactRef {
            digest: "sha256:abc".into(),
            size,
        }))
    }
}

#[tonic::async_trait]
impl Inference for Mock {
    async fn deploy(
        &self,
        req: Request<DeployRequest>,
    ) -> Result<Response<DeployResponse>, Status> {
        record_auth(self, &req);
        self.seen.lock().unwrap().deploy = Some(req.into_inner());
        Ok(Response::new(DeployResponse {
            job_id: "j-1".into(),
            predict_address: "addr".into(),
            dryrun: None,
        }))
    }
    async fn complete(
        &self,
        _: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn update_clients(
        &self,
        _: Request<UpdateClientsRequest>,
    ) -> Result<Response<ClientsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_clients(
        &self,
        _: Request<ListClientsRequest>,
    ) -> Result<Response<ClientsResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn predict(
        &self,
        req: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        record_auth(self, &req);
        let req = req.into_inner();
        let output = req.payload.clone();
        self.seen.lock().unwrap().predict = Some(req);
        Ok(Response::new(PredictResponse {
            output,
            content_type: "application/json".into(),
            instance_id: "i-1".into(),
            role: 1,
        }))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Jobs for Mock {
    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        record_auth(self, &req);
        Ok(Response::new(self.job()))
    }
    /// Five jobs, two per page; the page token is the index to go on from.
    async fn list_jobs(
        &self,
        req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        const JOBS: usize = 5;
        let token = req.into_inner().page_token;
        self.seen.lock().unwrap().list_tokens.push(token.clone());
        let from: usize = match token.as_str() {
            "" => 0,
            t => t
                .parse()
                .map_err(|_| Status::invalid_argument("bad page_token"))?,
        };
        let jobs: Vec<Job> = (from..(from + 2).min(JOBS))
            .map(|i| Job {
                job_id: format!("j-{i}"),
                ..Default::default()
            })
            .collect();
        let next = from + jobs.len();
        Ok(Response::new(ListJobsResponse {
            jobs,
            next_page_token: if next < JOBS {
                next.to_string()
            } else {
                String::new()
            },
        }))
    }
    type WatchJobStream = EventStream;
    async fn watch_job(
        &self,
        req: Request<WatchJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        record_auth(self, &req);
        let last = if self.final_status == 4 { 9 } else { 6 };
        let events = vec![
            Ok(event(1, 0, 1, 1)),
            Ok(event(2, 400, 1, 2)),
            // Instance-only change: same job state, no new progress line.
            Ok(event(3, 450, 1, 2)),
            Ok(event(4, 1200, 1, 3)),
            Ok(event(5, 2500, self.final_status, last)),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }
    async fn get_timeline(
        &self,
        _: Request<GetTimelineRequest>,
    ) -> Result<Response<Timeline>, Status> {
        Err(Status::unimplemented("mock"))
    }
    async fn list_instances(
        &self,
        _: Request<ListInstancesRequest>,
    ) -> Result<Response<ListInstancesResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
}

/// Serves a mock whose jobs end in `final_status`, and a CLI context
/// (token `secret_t`, JSON output or not) connected to it.
pub async fn connected(final_status: i32, json: bool) -> (Mock, crate::commands::Ctx) {
    let mock = Mock {
        seen: Default::default(),
        final_status,
    };
    let endpoint = serve(mock.clone()).await;
    let client = crate::client::Client::connect(&endpoint, Some("secret_t"), None)
        .await
        .unwrap();
    (mock, crate::commands::Ctx { client, json })
}

/// Serves the mock on 127.0.0.1:0; returns its endpoint.
pub async fn serve(mock: Mock) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ArtifactsServer::new(mock.clone()))
            .add_service(InferenceServer::new(mock.clone()))
            .add_service(JobsServer::new(mock))
            .serve_with_incoming(incoming),
    );
    endpoint
}

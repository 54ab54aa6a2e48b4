//! The Agent service the scheduler calls back on the simulated agents (it
//! sends Prepare after an active instance's agent registers again): accepts
//! everything, runs nothing. One server on loopback serves the whole fleet.

use aibro_proto::v1 as pb;
use anyhow::Result;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

pub struct StubAgent {
    /// Where it serves: every simulated agent's address.
    pub address: String,
    task: JoinHandle<()>,
}

struct StubService;

/// The Agent service with `predict` and `dry_run` refused and every other
/// call answered with an empty response.
macro_rules! accept_all_but_predict {
    ($($call:ident($request:ident) -> $response:ident;)*) => {
        #[tonic::async_trait]
        impl pb::agent_server::Agent for StubService {
            $(
                async fn $call(
                    &self,
                    _: Request<pb::$request>,
                ) -> Result<Response<pb::$response>, Status> {
                    Ok(Response::new(Default::default()))
                }
            )*

            async fn predict(
                &self,
                _: Request<pb::AgentPredictRequest>,
            ) -> Result<Response<pb::AgentPredictResponse>, Status> {
                Err(Status::unimplemented("fleet bench agents run no model"))
            }

            async fn dry_run(
                &self,
                _: Request<pb::DryRunRequest>,
            ) -> Result<Response<pb::DryRunResult>, Status> {
                Err(Status::unimplemented("fleet bench agents run no model"))
            }
        }
    };
}

accept_all_but_predict! {
    prepare(PrepareRequest) -> PrepareResponse;
    train(TrainRequest) -> TrainResponse;
    stop(StopRequest) -> StopResponse;
    assign(AssignRequest) -> AssignResponse;
}

impl StubAgent {
    pub async fn start() -> Result<StubAgent> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let server = tonic::transport::Server::builder()
            .add_service(pb::agent_server::AgentServer::new(StubService))
            .serve_with_incoming(aibro_proto::transport::incoming(listener));
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("stub agent server failed: {e}");
            }
        });
        Ok(StubAgent { address, task })
    }
}

impl Drop for StubAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

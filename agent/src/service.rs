//! The `Agent` gRPC service the scheduler calls. Thin: it delegates to the runtime
//! (jobs) and the identity (Assign), and maps errors to `tonic::Status` with
//! messages a user can act on.

use std::sync::Arc;

use aibro_proto::v1::agent_server::Agent;
use aibro_proto::v1::{
    AgentPredictRequest, AgentPredictResponse, AssignRequest, AssignResponse, JobKind,
    PrepareRequest, PrepareResponse, StopRequest, StopResponse, TrainRequest, TrainResponse,
};
use tonic::{Request, Response, Status};

use crate::identity::{AssignError, Identity};
use crate::pool::{Batching, PoolError};
use crate::runtime::{Runtime, RuntimeError};

pub(crate) struct AgentService {
    pub runtime: Arc<Runtime>,
    pub identity: Arc<Identity>,
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn prepare(
        &self,
        request: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        let req = request.into_inner();
        let kind = JobKind::try_from(req.kind).unwrap_or(JobKind::Unspecified);
        self.runtime
            .prepare(
                req.job_id,
                req.artifact_digest,
                kind,
                batching(req.batching),
            )
            .map_err(to_status)?;
        Ok(Response::new(PrepareResponse {}))
    }

    async fn predict(
        &self,
        request: Request<AgentPredictRequest>,
    ) -> Result<Response<AgentPredictResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .runtime
            .predict(&req.job_id, req.payload, req.content_type)
            .await
            .map_err(to_status)?;
        Ok(Response::new(AgentPredictResponse {
            output: out.body,
            content_type: out.content_type,
        }))
    }

    async fn train(
        &self,
        request: Request<TrainRequest>,
    ) -> Result<Response<TrainResponse>, Status> {
        let req = request.into_inner();
        self.runtime
            .train(req.job_id, req.args)
            .map_err(to_status)?;
        Ok(Response::new(TrainResponse {}))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        self.runtime
            .stop(request.into_inner().terminate)
            .await
            .map_err(to_status)?;
        Ok(Response::new(StopResponse {}))
    }

    /// Answers once the agent runs as the new instance; its registration under it
    /// follows from the reporter.
    async fn assign(
        &self,
        request: Request<AssignRequest>,
    ) -> Result<Response<AssignResponse>, Status> {
        self.identity
            .assign(request.into_inner().instance_id)
            .map_err(assign_status)?;
        Ok(Response::new(AssignResponse {}))
    }
}

fn assign_status(e: AssignError) -> Status {
    match e {
        AssignError::NotPool(_) => Status::failed_precondition(e.to_string()),
    }
}

/// The one mapping from agent errors to gRPC statuses.
pub(crate) fn to_status(e: RuntimeError) -> Status {
    let msg = e.to_string();
    match e {
        RuntimeError::NoJobId => Status::invalid_argument(msg),
        RuntimeError::UnknownJob(_)
        | RuntimeError::Unassigned
        | RuntimeError::JobFailed { .. }
        | RuntimeError::NotTraining(_)
        | RuntimeError::NotServing(_)
        | RuntimeError::TrainNotReady(_) => Status::failed_precondition(msg),
        RuntimeError::NotReady(_) => Status::unavailable(msg),
        RuntimeError::Pool(p) => match p {
            PoolError::Overloaded | PoolError::WorkerDied(_) | PoolError::Stopped => {
                Status::unavailable(msg)
            }
            PoolError::RunRaised(_) => Status::unknown(msg),
            PoolError::BadInput(_) => Status::invalid_argument(msg),
            PoolError::Start(_) | PoolError::Dir { .. } => Status::internal(msg),
        },
        _ => Status::internal(msg),
    }
}

/// The deploy's batching; off when the scheduler sent none (or a size of 1).
/// An unset wait is the default of `Batching` in common.proto.
fn batching(b: Option<aibro_proto::v1::Batching>) -> Batching {
    const DEFAULT_WAIT_MS: u32 = 2;
    match b {
        Some(b) if b.max_batch_size > 1 => Batching {
            max_size: b.max_batch_size as usize,
            max_wait: std::time::Duration::from_millis(
                b.max_wait_ms.unwrap_or(DEFAULT_WAIT_MS).into(),
            ),
        },
        _ => Batching::OFF,
    }
}

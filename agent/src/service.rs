//! The `Agent` gRPC service the scheduler calls. Thin: it delegates to the jobs
//! (Prepare, Predict, Train, Stop, DryRun) and the identity (Assign), and maps errors to
//! `tonic::Status` with messages a user can act on.

use std::sync::Arc;

use aibro_proto::v1::agent_server::Agent;
use aibro_proto::v1::{
    AgentPredictRequest, AgentPredictResponse, AssignRequest, AssignResponse, DryRunRequest,
    DryRunResult, JobKind, PrepareRequest, PrepareResponse, StopRequest, StopResponse,
    TrainRequest, TrainResponse,
};
use tonic::{Request, Response, Status};

use crate::jobs::{JobError, JobOptions, Jobs};
use crate::link::identity::{AssignError, Identity};
use crate::sandbox::Network;
use crate::serving::worker_pool::{BatchPolicy, WorkerPoolError};

pub(crate) struct AgentService {
    pub jobs: Arc<Jobs>,
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
        let options = JobOptions {
            kind,
            batching: batching(req.batching),
            network: Network::of_job(req.isolate_network),
        };
        self.jobs
            .prepare(req.job_id, req.artifact_digest, options)
            .map_err(to_status)?;
        Ok(Response::new(PrepareResponse {}))
    }

    async fn predict(
        &self,
        request: Request<AgentPredictRequest>,
    ) -> Result<Response<AgentPredictResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .jobs
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
        self.jobs.train(req.job_id, req.args).map_err(to_status)?;
        Ok(Response::new(TrainResponse {}))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        self.jobs
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

    /// Answers when the dry run is over, with its outcome.
    async fn dry_run(
        &self,
        request: Request<DryRunRequest>,
    ) -> Result<Response<DryRunResult>, Status> {
        let req = request.into_inner();
        let outcome = self
            .jobs
            .dry_run(
                &req.job_id,
                &req.artifact_digest,
                Network::of_job(req.isolate_network),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(outcome.into()))
    }
}

fn assign_status(e: AssignError) -> Status {
    match e {
        AssignError::NotPool(_) => Status::failed_precondition(e.to_string()),
    }
}

/// The one mapping from agent errors to gRPC statuses.
pub(crate) fn to_status(e: JobError) -> Status {
    let msg = e.to_string();
    match e {
        JobError::NoJobId => Status::invalid_argument(msg),
        JobError::UnknownJob(_)
        | JobError::Unassigned
        | JobError::JobFailed { .. }
        | JobError::NotTraining(_)
        | JobError::NotServing(_)
        | JobError::TrainNotReady(_) => Status::failed_precondition(msg),
        JobError::NotReady(_) => Status::unavailable(msg),
        JobError::Pool(p) => match p {
            WorkerPoolError::Overloaded
            | WorkerPoolError::WorkerDied(_)
            | WorkerPoolError::Stopped => Status::unavailable(msg),
            WorkerPoolError::RunRaised(_) => Status::unknown(msg),
            WorkerPoolError::BadInput(_) => Status::invalid_argument(msg),
            WorkerPoolError::Start(_) | WorkerPoolError::Dir { .. } => Status::internal(msg),
        },
        _ => Status::internal(msg),
    }
}

/// The deploy's batching; off when the scheduler sent none (or a size of 1).
/// An unset wait is the default of `Batching` in common.proto.
fn batching(b: Option<aibro_proto::v1::Batching>) -> BatchPolicy {
    const DEFAULT_WAIT_MS: u32 = 2;
    match b {
        Some(b) if b.max_batch_size > 1 => BatchPolicy {
            max_size: b.max_batch_size as usize,
            max_wait: std::time::Duration::from_millis(
                b.max_wait_ms.unwrap_or(DEFAULT_WAIT_MS).into(),
            ),
        },
        _ => BatchPolicy::OFF,
    }
}

//! `aibro.v1.Inference`: deploy, complete, client ids, predict.

use aibro_proto::v1::{
    inference_server::Inference, ClientsResponse, CompleteRequest, CompleteResponse, DeployRequest,
    DeployResponse, ListClientsRequest, PredictRequest, PredictResponse, UpdateClientsRequest,
};
use tonic::{Request, Response, Status};

use super::convert;
use crate::control::{Control, DeploySpec, Deployed};
use crate::error::Error;

pub struct InferenceApi {
    pub control: Control,
    pub max_payload_bytes: usize,
}

#[tonic::async_trait]
impl Inference for InferenceApi {
    #[tracing::instrument(skip_all, fields(model_name = %request.get_ref().model_name))]
    async fn deploy(
        &self,
        request: Request<DeployRequest>,
    ) -> Result<Response<DeployResponse>, Status> {
        let user = super::caller(&request)?;
        let spec = DeploySpec::from(request.into_inner());
        let response = match self.control.deploy(&user, spec).await? {
            Deployed::Job(job) => DeployResponse {
                predict_address: self.control.predict_address(&job),
                job_id: job.id,
                dryrun: None,
            },
            Deployed::DryRun(outcome) => DeployResponse {
                dryrun: Some(outcome.into()),
                ..DeployResponse::default()
            },
        };
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let user = super::caller(&request)?;
        let r = request.into_inner();
        let job = self
            .control
            .complete(&user, &r.job_id, &r.model_name)
            .await?;
        Ok(Response::new(CompleteResponse { job_id: job.id }))
    }

    async fn update_clients(
        &self,
        request: Request<UpdateClientsRequest>,
    ) -> Result<Response<ClientsResponse>, Status> {
        let user = super::caller(&request)?;
        let r = request.into_inner();
        let job = self
            .control
            .update_clients(
                &user,
                &r.job_id,
                &r.model_name,
                r.add,
                r.remove,
                r.be_public,
            )
            .await?;
        Ok(Response::new(ClientsResponse {
            job_id: job.id,
            client_ids: job.client_ids,
        }))
    }

    async fn list_clients(
        &self,
        request: Request<ListClientsRequest>,
    ) -> Result<Response<ClientsResponse>, Status> {
        let user = super::caller(&request)?;
        let r = request.into_inner();
        let job = self.control.find_job(&user, &r.job_id, &r.model_name)?;
        Ok(Response::new(ClientsResponse {
            job_id: job.id,
            client_ids: job.client_ids,
        }))
    }

    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let r = request.into_inner();
        if r.payload.len() > self.max_payload_bytes {
            return Err(Error::ResourceExhausted(format!(
                "payload is {} bytes; the limit is {} bytes (scheduler flag --max-payload-bytes)",
                r.payload.len(),
                self.max_payload_bytes
            ))
            .into());
        }
        let routed = self
            .control
            .predict(
                &r.owner,
                &r.client_id,
                &r.model_name,
                r.payload,
                r.content_type,
            )
            .await?;
        Ok(Response::new(PredictResponse {
            output: routed.output,
            content_type: routed.content_type,
            instance_id: routed.instance_id,
            role: convert::role(routed.role) as i32,
        }))
    }
}

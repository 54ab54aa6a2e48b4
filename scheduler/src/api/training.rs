//! `aibro.v1.Training`: Fit and the trained outputs.

use aibro_proto::v1::{
    training_server::Training, Chunk, DownloadResultRequest, FitRequest, FitResponse,
};
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};

use crate::control::{Control, FitSpec};

pub struct TrainingApi {
    pub control: Control,
}

#[tonic::async_trait]
impl Training for TrainingApi {
    type DownloadResultStream = BoxStream<'static, Result<Chunk, Status>>;

    #[tracing::instrument(skip_all)]
    async fn fit(&self, request: Request<FitRequest>) -> Result<Response<FitResponse>, Status> {
        let user = super::caller(&request)?;
        let spec = FitSpec::from(request.into_inner());
        let job = self.control.fit(&user, spec).await?;
        Ok(Response::new(FitResponse { job_id: job.id }))
    }

    #[tracing::instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn download_result(
        &self,
        request: Request<DownloadResultRequest>,
    ) -> Result<Response<Self::DownloadResultStream>, Status> {
        let user = super::caller(&request)?;
        let path = self.control.result_path(&user, &request.get_ref().job_id)?;
        Ok(Response::new(super::file_chunks(path, "result").await?))
    }
}

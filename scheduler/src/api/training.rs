//! `aibro.v1.Training`: not available yet.

use aibro_proto::v1::{
    training_server::Training, Chunk, DownloadResultRequest, FitRequest, FitResponse,
};
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};

pub struct TrainingApi;

#[tonic::async_trait]
impl Training for TrainingApi {
    type DownloadResultStream = BoxStream<'static, Result<Chunk, Status>>;

    async fn fit(&self, _: Request<FitRequest>) -> Result<Response<FitResponse>, Status> {
        Err(Status::unimplemented("training jobs are not available yet"))
    }

    async fn download_result(
        &self,
        _: Request<DownloadResultRequest>,
    ) -> Result<Response<Self::DownloadResultStream>, Status> {
        Err(Status::unimplemented("training jobs are not available yet"))
    }
}

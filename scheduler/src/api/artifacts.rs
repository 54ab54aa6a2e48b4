//! `aibro.v1.Artifacts`: streamed, content-addressed uploads.

use aibro_proto::v1::{artifacts_server::Artifacts, ArtifactRef, Chunk};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::control::Control;

pub struct ArtifactsApi {
    pub control: Control,
    pub max_artifact_bytes: u64,
}

#[tonic::async_trait]
impl Artifacts for ArtifactsApi {
    #[tracing::instrument(skip_all)]
    async fn upload(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<ArtifactRef>, Status> {
        let user = super::caller(&request)?;
        let record = self
            .control
            .upload(
                &user,
                request.into_inner().map(|c| c.map(|c| c.data)),
                self.max_artifact_bytes,
            )
            .await?;
        Ok(Response::new(ArtifactRef {
            digest: record.digest,
            size: record.size,
        }))
    }
}

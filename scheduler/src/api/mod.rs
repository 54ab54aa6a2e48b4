//! User-facing gRPC services: thin adapters that authenticate, unpack the
//! request, call the control plane and convert the answer. No business logic.

pub mod admin;
pub mod artifacts;
pub mod inference;
pub mod jobs;
pub mod marketplace;
pub mod training;

use aibro_proto::v1::Chunk;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_util::io::ReaderStream;
use tonic::{Request, Status};

const CHUNK_BYTES: usize = 1 << 20;

use crate::auth::User;
use crate::control::Control;

/// A stored file as a stream of 1 MiB chunks; `what` names it in errors.
pub(crate) async fn file_chunks(
    path: std::path::PathBuf,
    what: &'static str,
) -> Result<BoxStream<'static, Result<Chunk, Status>>, Status> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Status::internal(format!("cannot open the {what}: {e}")))?;
    let stream = ReaderStream::with_capacity(file, CHUNK_BYTES).map(move |r| {
        r.map(|data| Chunk {
            data: data.to_vec(),
        })
        .map_err(|e| Status::internal(format!("cannot read the {what}: {e}")))
    });
    Ok(stream.boxed())
}

/// The caller of `request`, from its bearer token.
pub(crate) fn caller<T>(control: &Control, request: &Request<T>) -> Result<User, Status> {
    Ok(control
        .auth()
        .authenticate(request.metadata())
        .map_err(crate::error::Error::from)?)
}

//! A training run's outputs returned to the scheduler: the output directory
//! packed (aibro-repo's deterministic tar.gz) into a temporary file while it is
//! hashed, then streamed in `ResultChunk`s and checked against what was stored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aibro_proto::v1::{ArtifactRef, ResultChunk};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::link::gateway::{retrying, CallError, Gateway};

/// Data bytes per `ResultChunk` of an uploaded result.
const UPLOAD_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResultError {
    #[error("cannot pack the training outputs: {0}")]
    Pack(#[source] std::io::Error),
    #[error("uploading the training outputs to the scheduler failed: {0}")]
    Upload(tonic::Status),
    #[error("the scheduler stored the training outputs as `{got}` but `{sent}` was sent; the upload is corrupt")]
    UploadMismatch { sent: String, got: String },
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CallError for ResultError {
    fn status(&self) -> Option<&tonic::Status> {
        match self {
            ResultError::Upload(status) => Some(status),
            _ => None,
        }
    }
}

/// The packed outputs, and the address they have.
pub(crate) struct Packed {
    file: tempfile::NamedTempFile,
    sent: ArtifactRef,
}

/// Packs `output` into a temporary file in `dir` (blocking).
pub(crate) fn pack(output: &Path, dir: &Path) -> Result<Packed, ResultError> {
    struct Hashing<W> {
        inner: W,
        hasher: Sha256,
        size: u64,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let packed = || -> std::io::Result<Packed> {
        let mut file = tempfile::Builder::new()
            .prefix(".result-")
            .suffix(".tar.gz")
            .tempfile_in(dir)?;
        let sent = {
            let mut w = Hashing {
                inner: std::io::BufWriter::new(file.as_file_mut()),
                hasher: Sha256::new(),
                size: 0,
            };
            aibro_repo::archive::pack_dir(output, &mut w)?;
            w.flush()?;
            ArtifactRef {
                digest: format!("sha256:{}", hex::encode(w.hasher.finalize())),
                size: w.size,
            }
        };
        Ok(Packed { file, sent })
    };
    packed().map_err(ResultError::Pack)
}

/// Uploads the packed outputs of `job_id` (retried while the scheduler is
/// unreachable) and checks that the scheduler stored what was sent.
pub(crate) async fn upload(
    gateway: &Gateway,
    job_id: &str,
    packed: &Packed,
) -> Result<ArtifactRef, ResultError> {
    let path = packed.file.path();
    let stored = retrying("uploading the outputs", || send(gateway, job_id, path)).await?;
    let sent = &packed.sent;
    if stored.digest != sent.digest || stored.size != sent.size {
        return Err(ResultError::UploadMismatch {
            sent: format!("{} ({} bytes)", sent.digest, sent.size),
            got: format!("{} ({} bytes)", stored.digest, stored.size),
        });
    }
    Ok(stored)
}

/// Streams the file at `path` to the scheduler in `ResultChunk`s.
async fn send(gateway: &Gateway, job_id: &str, path: &Path) -> Result<ArtifactRef, ResultError> {
    let read_err = |source| ResultError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let job = job_id.to_string();
    let errs = read_error.clone();
    let chunks = futures::stream::unfold(Some(file), move |file| {
        let job = job.clone();
        let errs = errs.clone();
        async move {
            let mut file = file?;
            let mut data = vec![0; UPLOAD_CHUNK];
            let mut n = 0;
            while n < UPLOAD_CHUNK {
                match file.read(&mut data[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => {
                        *errs.lock().expect("upload error") = Some(e);
                        return None;
                    }
                }
            }
            if n == 0 {
                return None;
            }
            data.truncate(n);
            let next = (n == UPLOAD_CHUNK).then_some(file);
            Some((ResultChunk { job_id: job, data }, next))
        }
    });
    let res = gateway.clone().upload_result(chunks).await;
    if let Some(e) = read_error.lock().expect("upload error").take() {
        return Err(read_err(e));
    }
    res.map_err(ResultError::Upload).map(|r| r.into_inner())
}

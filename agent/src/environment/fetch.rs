//! A job's repo on disk: its artifact streamed from the scheduler (sha256
//! checked) and unpacked with aibro-repo's safe unpack into `<job dir>/repo`. A
//! complete unpack of the same artifact is marked and reused.

use std::path::{Path, PathBuf};

use aibro_proto::v1::FetchArtifactRequest;
use aibro_repo::archive::{self, ArchiveError, Limits};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::link::gateway::{retrying, CallError, Gateway};

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("cannot fetch artifact `{digest}` from the scheduler: {status}")]
    Fetch {
        digest: String,
        status: tonic::Status,
    },
    #[error("artifact `{digest}` arrived with digest `{got}`; the download is corrupt")]
    DigestMismatch { digest: String, got: String },
    #[error("invalid model repo archive: {0}")]
    Archive(#[from] ArchiveError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CallError for FetchError {
    fn status(&self) -> Option<&tonic::Status> {
        match self {
            FetchError::Fetch { status, .. } => Some(status),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The unpacked repo of the job in `job_dir`: fetched and unpacked unless a
/// complete one of the same artifact is already on disk.
pub(crate) async fn repo(
    gateway: &Gateway,
    job_dir: &Path,
    digest: &str,
) -> Result<PathBuf, FetchError> {
    let repo = job_dir.join("repo");
    let marker = job_dir.join("repo.complete");
    if tokio::fs::read_to_string(&marker).await.ok().as_deref() == Some(digest) {
        tracing::info!(job_dir = %job_dir.display(), "reusing the unpacked repo");
        return Ok(repo);
    }
    tokio::fs::create_dir_all(job_dir)
        .await
        .map_err(io_err(job_dir))?;
    let archive_path = job_dir.join("artifact.tar.gz");
    archive(gateway, digest, &archive_path).await?;
    match tokio::fs::remove_file(&marker).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&marker)(e)),
    }
    if repo.exists() {
        tokio::fs::remove_dir_all(&repo)
            .await
            .map_err(io_err(&repo))?;
    }
    let (a, r) = (archive_path.clone(), repo.clone());
    tokio::task::spawn_blocking(move || archive::unpack(&a, &r, &Limits::default()))
        .await
        .expect("unpack task")?;
    tokio::fs::write(&marker, digest)
        .await
        .map_err(io_err(&marker))?;
    let _ = tokio::fs::remove_file(&archive_path).await;
    Ok(repo)
}

/// Streams the artifact into `path`, checking its sha256 (retried while the
/// scheduler is unreachable).
pub(crate) async fn archive(
    gateway: &Gateway,
    digest: &str,
    path: &Path,
) -> Result<(), FetchError> {
    retrying("fetching the repo", || download(gateway, digest, path)).await
}

/// Streams the artifact into `path`, checking its sha256.
async fn download(gateway: &Gateway, digest: &str, path: &Path) -> Result<(), FetchError> {
    let ferr = |status| FetchError::Fetch {
        digest: digest.to_string(),
        status,
    };
    let mut stream = gateway
        .clone()
        .fetch_artifact(FetchArtifactRequest {
            digest: digest.to_string(),
        })
        .await
        .map_err(ferr)?
        .into_inner();
    let mut file = tokio::fs::File::create(path).await.map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.message().await.map_err(ferr)? {
        hasher.update(&chunk.data);
        file.write_all(&chunk.data).await.map_err(io_err(path))?;
    }
    file.flush().await.map_err(io_err(path))?;
    if let Some(want) = digest.strip_prefix("sha256:") {
        let got = hex::encode(hasher.finalize());
        if !got.eq_ignore_ascii_case(want) {
            return Err(FetchError::DigestMismatch {
                digest: digest.to_string(),
                got: format!("sha256:{got}"),
            });
        }
    }
    Ok(())
}

//! Content-addressed artifact storage: uploads are streamed to a temp file
//! while hashed, checked as an archive (no escaping paths, within limits),
//! then renamed to `<data-dir>/blobs/sha256/<hex>` and indexed for the owner.

use std::path::PathBuf;

use aibro_repo::archive;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::auth::User;
use crate::error::{Error, Result};
use crate::records::{ArtifactRecord, RECORD_VERSION};

use super::Control;

const DIGEST_PREFIX: &str = "sha256:";

impl Control {
    fn blobs_dir(&self) -> PathBuf {
        self.settings().data_dir.join("blobs")
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix(DIGEST_PREFIX).unwrap_or(digest);
        self.blobs_dir().join("sha256").join(hex)
    }

    /// A stored blob's path, if `digest` is well-formed and present.
    pub fn existing_blob(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix(DIGEST_PREFIX)?;
        let well_formed = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let path = self.blob_path(digest);
        (well_formed && path.is_file()).then_some(path)
    }

    /// Stores an uploaded archive. Nothing is kept when it is refused.
    pub async fn upload<S>(
        &self,
        owner: &User,
        mut chunks: S,
        max_bytes: u64,
    ) -> Result<ArtifactRecord>
    where
        S: Stream<Item = std::result::Result<Vec<u8>, tonic::Status>> + Unpin,
    {
        let io = |e: std::io::Error| Error::Internal(format!("artifact storage: {e}"));
        let tmp_dir = self.blobs_dir().join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(io)?;
        tokio::fs::create_dir_all(self.blobs_dir().join("sha256"))
            .await
            .map_err(io)?;
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io)?;
        let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(Error::Agent)?;
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "artifact is larger than the {max_bytes}-byte limit (scheduler flag --max-artifact-bytes)"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        if size == 0 {
            return Err(Error::InvalidArgument(
                "the upload was empty; send a tar.gz of the repo".into(),
            ));
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        let path = tmp.path().to_path_buf();
        let manifest =
            tokio::task::spawn_blocking(move || archive::scan(&path, &archive::Limits::default()))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?
                .map_err(|e| Error::InvalidArgument(format!("the archive was refused: {e}")))?;
        let digest = format!("{DIGEST_PREFIX}{}", hex::encode(hasher.finalize()));
        tmp.persist(self.blob_path(&digest))
            .map_err(|e| io(e.error))?;
        let record = ArtifactRecord {
            v: RECORD_VERSION,
            digest,
            size,
            files: manifest.files,
            unpacked_bytes: manifest.total_bytes,
            has_predict: manifest.has_predict,
            has_train: manifest.has_train,
        };
        self.store().put_artifact(&owner.0, &record).await?;
        Ok(record)
    }
}

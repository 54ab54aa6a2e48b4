//! Artifact upload: pack a repo directory into a temporary tar.gz (or take an
//! existing one) and stream it to `Artifacts.Upload` in 1 MiB chunks, reading
//! the file progressively so multi-GB models never sit in memory.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aibro_proto::v1::{ArtifactRef, Chunk};
use anyhow::{bail, Context, Result};
use tempfile::NamedTempFile;
use tokio::io::AsyncReadExt;

use crate::client::Client;

/// Size of each streamed chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// A tar.gz ready to upload; a packed temporary file is removed on drop.
pub struct Archive {
    path: PathBuf,
    _temp: Option<NamedTempFile>,
}

impl Archive {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the archive was packed from a directory by this run.
    pub fn was_packed(&self) -> bool {
        self._temp.is_some()
    }
}

/// Packs `src` if it is a directory, or accepts it as is if it is a tar.gz file.
pub async fn prepare(src: &Path) -> Result<Archive> {
    let meta = tokio::fs::metadata(src)
        .await
        .with_context(|| format!("--artifacts {}", src.display()))?;
    if meta.is_dir() {
        let src = src.to_path_buf();
        let temp = tokio::task::spawn_blocking(move || -> Result<NamedTempFile> {
            let temp = tempfile::Builder::new()
                .prefix("aibro-repo-")
                .suffix(".tar.gz")
                .tempfile()
                .context("creating a temporary archive")?;
            let mut out = BufWriter::new(temp.as_file());
            aibro_repo::archive::pack_dir(&src, &mut out)
                .with_context(|| format!("packing {}", src.display()))?;
            out.into_inner()
                .map_err(|e| e.into_error())
                .context("writing the temporary archive")?
                .sync_all()
                .context("writing the temporary archive")?;
            Ok(temp)
        })
        .await
        .context("packing task failed")??;
        Ok(Archive {
            path: temp.path().to_path_buf(),
            _temp: Some(temp),
        })
    } else if is_tar_gz(src) {
        Ok(Archive {
            path: src.to_path_buf(),
            _temp: None,
        })
    } else {
        bail!(
            "--artifacts {} must be a repo directory or a .tar.gz file",
            src.display()
        )
    }
}

fn is_tar_gz(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Streams the file at `path` to the scheduler; returns its digest and size.
pub async fn upload(client: &Client, path: &Path) -> Result<ArtifactRef> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    // A read error ends the stream early; it is reported instead of the
    // server's answer to the truncated upload.
    let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let slot = read_error.clone();
    let chunks = futures::stream::unfold(Some(file), move |file| {
        let slot = slot.clone();
        async move {
            let mut file = file?;
            match read_chunk(&mut file).await {
                Ok(data) if data.is_empty() => None,
                Ok(data) => Some((Chunk { data }, Some(file))),
                Err(e) => {
                    *slot.lock().unwrap() = Some(e);
                    None
                }
            }
        }
    });
    let result = client.artifacts().upload(chunks).await;
    if let Some(e) = read_error.lock().unwrap().take() {
        return Err(e).with_context(|| format!("reading {}", path.display()));
    }
    Ok(result?.into_inner())
}

/// Reads up to one full chunk (less only at end of file).
async fn read_chunk(file: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    while buf.len() < CHUNK_BYTES {
        let mut limited = (&mut *file).take((CHUNK_BYTES - buf.len()) as u64);
        if limited.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf)
}

/// Packs (if a directory) and uploads a repo, saying what it did.
pub async fn upload_repo(ctx: &crate::commands::Ctx, src: &Path) -> Result<ArtifactRef> {
    let started = std::time::Instant::now();
    let archive = prepare(src).await?;
    if archive.was_packed() {
        ctx.say(format!(
            "packed {} ({})",
            src.display(),
            crate::display::bytes(std::fs::metadata(archive.path())?.len())
        ));
    }
    let artifact = upload(&ctx.client, archive.path()).await?;
    drop(archive);
    ctx.say(format!(
        "uploaded {} ({}) in {:.1}s",
        artifact.digest,
        crate::display::bytes(artifact.size),
        started.elapsed().as_secs_f64()
    ));
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn recognises_tar_gz_names() {
        assert!(is_tar_gz(Path::new("a/repo.tar.gz")));
        assert!(is_tar_gz(Path::new("REPO.TGZ")));
        assert!(!is_tar_gz(Path::new("repo.zip")));
    }

    #[tokio::test]
    async fn chunks_are_full_except_the_last() {
        let mut f = NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; CHUNK_BYTES * 2 + 10]).unwrap();
        let mut file = tokio::fs::File::open(f.path()).await.unwrap();
        let sizes = [
            read_chunk(&mut file).await.unwrap().len(),
            read_chunk(&mut file).await.unwrap().len(),
            read_chunk(&mut file).await.unwrap().len(),
            read_chunk(&mut file).await.unwrap().len(),
        ];
        assert_eq!(sizes, [CHUNK_BYTES, CHUNK_BYTES, 10, 0]);
    }

    #[tokio::test]
    async fn rejects_other_files() {
        let f = tempfile::Builder::new().suffix(".zip").tempfile().unwrap();
        assert!(prepare(f.path()).await.is_err());
    }
}

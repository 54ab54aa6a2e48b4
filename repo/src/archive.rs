//! Model repo archives (tar.gz): [`pack_dir`] packs a directory, [`scan`] checks
//! an upload without extracting it, [`unpack`] extracts it safely, all within
//! [`Limits`]. Paths may never escape the extraction root: no absolute paths, no
//! `..`, no links pointing outside, no special files.

mod limits;
mod pack;
mod scan;
mod unpack;

#[cfg(test)]
pub(crate) mod fixtures;

use std::io;
use std::path::PathBuf;

use limits::{MAX_NAME_BYTES, MAX_PATH_BYTES};

pub use limits::Limits;
pub use pack::pack_dir;
pub use scan::scan;
pub use unpack::unpack;

/// Why an archive was rejected or could not be read/extracted.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read the archive: {0} (it must be a tar.gz of the repo directory)")]
    Read(#[source] io::Error),
    #[error("cannot extract the archive into `{path}`: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive entry `{0}` has an absolute path; paths must be relative to the repo root")]
    AbsolutePath(String),
    #[error("archive entry `{0}` escapes the repo root (`..` is not allowed in paths)")]
    ParentDir(String),
    #[error("archive entry `{path}` is a link to `{target}`, which points outside the repo root")]
    LinkEscapes { path: String, target: String },
    #[error("archive entry `{path}` is a symlink to `{target}`; symlink targets must be plain relative paths (`..` only at the start)")]
    LinkNotNormalized { path: String, target: String },
    #[error("archive entry `{path}` is a hard link to `{target}`, which is not an earlier regular file in the archive")]
    HardLinkTarget { path: String, target: String },
    #[error("archive entry `{path}` lies under `{link}`, which is a symlink; entries may not be written through links")]
    ThroughSymlink { path: String, link: String },
    #[error("archive entry `{path}` is a {kind}; only files, directories and links are allowed")]
    UnsupportedType { path: String, kind: String },
    #[error("archive expands to more than {limit} bytes; make the repo smaller")]
    TooLarge { limit: u64 },
    #[error("archive has more than {limit} entries; make the repo smaller")]
    TooManyFiles { limit: u64 },
    #[error("archive compression ratio exceeds {limit}:1 (possible zip bomb)")]
    RatioExceeded { limit: u64 },
    #[error("archive entry headers (long names or pax records) take more than {limit} bytes; it is not a tar.gz of a repo")]
    HeadersTooLarge { limit: u64 },
    #[error("archive entry `{path}` has a name or link target longer than the system allows ({MAX_NAME_BYTES} bytes a name, {MAX_PATH_BYTES} a path)")]
    NameTooLong { path: String },
    #[error("archive entry `{path}` {problem}")]
    Conflict { path: String, problem: String },
}

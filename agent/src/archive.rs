//! Model repo archives (tar.gz): packing a directory, scanning an upload without
//! extracting it, and safe extraction. Shared by the agent, the scheduler (upload
//! validation) and the CLI (packing). Paths may never escape the extraction root:
//! no absolute paths, no `..`, no links pointing outside, no special files.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, HeaderMode};

/// Below this many uncompressed bytes the compression ratio is not checked (small
/// repos of repetitive text legitimately compress very well).
const RATIO_FLOOR_BYTES: u64 = 16 << 20;

/// Upper bounds on what an archive may expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sum of the sizes of all entries, uncompressed.
    pub max_total_bytes: u64,
    /// Number of entries (files, directories and links).
    pub max_files: u64,
    /// Uncompressed size / compressed size (checked above 16 MiB uncompressed).
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 8 << 30,
            max_files: 100_000,
            max_ratio: 200,
        }
    }
}

/// What a valid archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Number of entries (files, directories and links).
    pub files: u64,
    /// Sum of the file sizes, uncompressed.
    pub total_bytes: u64,
    /// `predict.py` is a file at the repo root.
    pub has_predict: bool,
    /// `train.py` is a file at the repo root.
    pub has_train: bool,
    /// `requirements.txt` is a file at the repo root.
    pub has_requirements: bool,
}

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
}

/// Writes a tar.gz of the contents of `src` (paths relative to `src`) to `out`.
/// `__pycache__` directories are skipped; symlinks are stored as symlinks. Entries
/// are sorted and headers deterministic, so the same tree gives the same bytes.
pub fn pack_dir(src: &Path, out: impl Write) -> io::Result<()> {
    let gz = GzEncoder::new(out, Compression::default());
    let mut builder = tar::Builder::new(gz);
    builder.follow_symlinks(false);
    builder.mode(HeaderMode::Deterministic);
    append_tree(&mut builder, src, Path::new(""))?;
    builder.into_inner()?.finish()?.flush()
}

fn append_tree<W: Write>(b: &mut tar::Builder<W>, root: &Path, rel: &Path) -> io::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        if name == "__pycache__" {
            continue;
        }
        let rel_path = rel.join(&name);
        let full = root.join(&rel_path);
        let meta = fs::symlink_metadata(&full)?;
        if meta.is_dir() {
            b.append_dir(&rel_path, &full)?;
            append_tree(b, root, &rel_path)?;
        } else {
            b.append_path_with_name(&full, &rel_path)?;
        }
    }
    Ok(())
}

/// Checks an archive without extracting anything.
pub fn scan(archive: &Path, limits: &Limits) -> Result<Manifest, ArchiveError> {
    walk(archive, limits, None)
}

/// Scans `archive`, then extracts it into `dest` (created if missing). Never writes
/// through a symlink and never outside `dest`.
pub fn unpack(archive: &Path, dest: &Path, limits: &Limits) -> Result<Manifest, ArchiveError> {
    walk(archive, limits, None)?;
    fs::create_dir_all(dest).map_err(|source| ArchiveError::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    walk(archive, limits, Some(dest))
}

/// What a validated entry is.
enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    HardLink(PathBuf),
}

fn walk(archive: &Path, limits: &Limits, dest: Option<&Path>) -> Result<Manifest, ArchiveError> {
    let file = File::open(archive).map_err(ArchiveError::Read)?;
    let compressed = file.metadata().map_err(ArchiveError::Read)?.len().max(1);
    let mut ar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let mut manifest = Manifest::default();
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut files: HashSet<PathBuf> = HashSet::new();
    for entry in ar.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            continue;
        }
        let raw = entry.path().map_err(ArchiveError::Read)?.into_owned();
        let shown = raw.display().to_string();
        let path = normalize_entry_path(&raw, &shown)?;
        if let Some(link) = ancestors_in(&path, &symlinks) {
            return Err(ArchiveError::ThroughSymlink {
                path: shown,
                link: link.display().to_string(),
            });
        }
        let kind = match ty {
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => {
                let target = link_target(&entry, &shown)?;
                check_symlink(&path, &target, &shown)?;
                Kind::Symlink(target)
            }
            EntryType::Link => {
                let target = link_target(&entry, &shown)?;
                let t = hard_link_target(&target, &shown)?;
                // Only to regular files: a hard link to a symlink would move
                // the symlink (and its relative target) to another depth.
                if !files.contains(&t) {
                    return Err(ArchiveError::HardLinkTarget {
                        path: shown,
                        target: target.display().to_string(),
                    });
                }
                Kind::HardLink(t)
            }
            other => {
                return Err(ArchiveError::UnsupportedType {
                    path: shown,
                    kind: type_name(other).to_string(),
                })
            }
        };
        manifest.files += 1;
        if manifest.files > limits.max_files {
            return Err(ArchiveError::TooManyFiles {
                limit: limits.max_files,
            });
        }
        if let Kind::File = kind {
            let size = entry.header().size().map_err(ArchiveError::Read)?;
            manifest.total_bytes = manifest.total_bytes.saturating_add(size);
            if manifest.total_bytes > limits.max_total_bytes {
                return Err(ArchiveError::TooLarge {
                    limit: limits.max_total_bytes,
                });
            }
            if manifest.total_bytes > RATIO_FLOOR_BYTES
                && manifest.total_bytes / compressed > limits.max_ratio
            {
                return Err(ArchiveError::RatioExceeded {
                    limit: limits.max_ratio,
                });
            }
            if path == Path::new("predict.py") {
                manifest.has_predict = true;
            } else if path == Path::new("train.py") {
                manifest.has_train = true;
            } else if path == Path::new("requirements.txt") {
                manifest.has_requirements = true;
            }
        }
        match &kind {
            Kind::Symlink(_) => {
                files.remove(&path);
                symlinks.insert(path.clone());
            }
            Kind::File | Kind::HardLink(_) => {
                symlinks.remove(&path);
                files.insert(path.clone());
            }
            Kind::Dir => {}
        }
        if let Some(dest) = dest {
            extract(&mut entry, &kind, dest, &path)?;
        }
    }
    Ok(manifest)
}

/// Relative path with `.` components removed; rejects absolute paths and `..`.
fn normalize_entry_path(raw: &Path, shown: &str) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => {
                return Err(ArchiveError::AbsolutePath(shown.to_string()))
            }
            Component::ParentDir => return Err(ArchiveError::ParentDir(shown.to_string())),
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// The first proper ancestor of `path` that is a symlink entry.
fn ancestors_in<'a>(path: &Path, symlinks: &'a HashSet<PathBuf>) -> Option<&'a PathBuf> {
    path.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find_map(|a| symlinks.get(a))
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<PathBuf, ArchiveError> {
    match entry.link_name().map_err(ArchiveError::Read)? {
        Some(t) => Ok(t.into_owned()),
        None => Err(ArchiveError::LinkEscapes {
            path: shown.to_string(),
            target: String::new(),
        }),
    }
}

/// A symlink target must be relative, may only start with `..` components and must
/// stay inside the root when resolved from the link's own directory. Together with
/// the rule that no entry lies under a symlink, no chain of links can escape.
fn check_symlink(path: &Path, target: &Path, shown: &str) -> Result<(), ArchiveError> {
    let escapes = || ArchiveError::LinkEscapes {
        path: shown.to_string(),
        target: target.display().to_string(),
    };
    let mut depth = path.components().count().saturating_sub(1);
    let mut seen_normal = false;
    for c in target.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Err(escapes()),
            Component::CurDir => {}
            Component::ParentDir if seen_normal => {
                return Err(ArchiveError::LinkNotNormalized {
                    path: shown.to_string(),
                    target: target.display().to_string(),
                })
            }
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or_else(escapes)?;
            }
            Component::Normal(_) => seen_normal = true,
        }
    }
    Ok(())
}

/// Hard link targets are archive paths (relative to the root).
fn hard_link_target(target: &Path, shown: &str) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(ArchiveError::LinkEscapes {
                    path: shown.to_string(),
                    target: target.display().to_string(),
                })
            }
        }
    }
    Ok(out)
}

fn type_name(ty: EntryType) -> &'static str {
    match ty {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

fn extract<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    kind: &Kind,
    dest: &Path,
    rel: &Path,
) -> Result<(), ArchiveError> {
    let target = dest.join(rel);
    let werr = |source: io::Error| ArchiveError::Write {
        path: rel.to_path_buf(),
        source,
    };
    if rel.as_os_str().is_empty() {
        return Ok(()); // the root itself (`./`)
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(werr)?;
    }
    match kind {
        Kind::Dir => {
            if let Ok(m) = fs::symlink_metadata(&target) {
                if !m.is_dir() {
                    fs::remove_file(&target).map_err(werr)?;
                }
            }
            fs::create_dir_all(&target).map_err(werr)?;
        }
        Kind::File => {
            remove_non_dir(&target).map_err(werr)?;
            let mode = entry.header().mode().unwrap_or(0o644);
            let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(werr)?;
            io::copy(entry, &mut f).map_err(werr)?;
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(werr)?;
        }
        Kind::Symlink(link) => {
            remove_non_dir(&target).map_err(werr)?;
            std::os::unix::fs::symlink(link, &target).map_err(werr)?;
        }
        Kind::HardLink(src) => {
            remove_non_dir(&target).map_err(werr)?;
            fs::hard_link(dest.join(src), &target).map_err(werr)?;
        }
    }
    Ok(())
}

fn remove_non_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory of that name already exists",
        )),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::Header;

    /// Builds a tar.gz from raw entries: (path, type, link target, data).
    fn build(entries: &[(&str, EntryType, &str, &[u8])]) -> tempfile::NamedTempFile {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        {
            let gz = GzEncoder::new(tmp.as_file_mut(), Compression::default());
            let mut b = tar::Builder::new(gz);
            for (path, ty, link, data) in entries {
                let mut h = Header::new_gnu();
                // Write the raw name so that `..` and absolute paths get through.
                let name = &mut h.as_old_mut().name;
                name.fill(0);
                name[..path.len()].copy_from_slice(path.as_bytes());
                if !link.is_empty() {
                    let ln = &mut h.as_old_mut().linkname;
                    ln.fill(0);
                    ln[..link.len()].copy_from_slice(link.as_bytes());
                }
                h.set_entry_type(*ty);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            b.into_inner().unwrap().finish().unwrap();
        }
        tmp
    }

    fn scan_err(entries: &[(&str, EntryType, &str, &[u8])]) -> ArchiveError {
        let tmp = build(entries);
        scan(tmp.path(), &Limits::default()).unwrap_err()
    }

    #[test]
    fn rejects_parent_dir() {
        let e = scan_err(&[("../x", EntryType::Regular, "", b"hi")]);
        assert!(matches!(e, ArchiveError::ParentDir(_)), "{e}");
        assert!(
            e.to_string().contains("`../x` escapes the repo root"),
            "{e}"
        );
        let e = scan_err(&[("a/../../x", EntryType::Regular, "", b"hi")]);
        assert!(matches!(e, ArchiveError::ParentDir(_)), "{e}");
    }

    #[test]
    fn rejects_absolute_path() {
        let e = scan_err(&[("/etc/passwd", EntryType::Regular, "", b"x")]);
        assert!(matches!(e, ArchiveError::AbsolutePath(_)), "{e}");
    }

    #[test]
    fn rejects_escaping_symlinks() {
        let e = scan_err(&[("l", EntryType::Symlink, "/etc", b"")]);
        assert!(matches!(e, ArchiveError::LinkEscapes { .. }), "{e}");
        let e = scan_err(&[("a/l", EntryType::Symlink, "../..", b"")]);
        assert!(matches!(e, ArchiveError::LinkEscapes { .. }), "{e}");
        let e = scan_err(&[
            ("x", EntryType::Symlink, ".", b""),
            ("t", EntryType::Symlink, "x/..", b""),
        ]);
        assert!(matches!(e, ArchiveError::LinkNotNormalized { .. }), "{e}");
        // Writing through a link (even one that points inside) is refused.
        let e = scan_err(&[
            ("d", EntryType::Directory, "", b""),
            ("x", EntryType::Symlink, "d", b""),
            ("x/f", EntryType::Regular, "", b"1"),
        ]);
        assert!(matches!(e, ArchiveError::ThroughSymlink { .. }), "{e}");
    }

    #[test]
    fn accepts_inner_symlinks() {
        let tmp = build(&[
            ("predict.py", EntryType::Regular, "", b"x"),
            ("a/b", EntryType::Directory, "", b""),
            ("a/b/l", EntryType::Symlink, "../../predict.py", b""),
            ("h", EntryType::Link, "predict.py", b""),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let m = unpack(tmp.path(), dir.path(), &Limits::default()).unwrap();
        assert!(m.has_predict);
        assert_eq!(fs::read(dir.path().join("a/b/l")).unwrap(), b"x");
        assert_eq!(fs::read(dir.path().join("h")).unwrap(), b"x");
    }

    #[test]
    fn rejects_escaping_hardlinks() {
        let e = scan_err(&[("h", EntryType::Link, "/etc/passwd", b"")]);
        assert!(matches!(e, ArchiveError::LinkEscapes { .. }), "{e}");
        let e = scan_err(&[("h", EntryType::Link, "../x", b"")]);
        assert!(matches!(e, ArchiveError::LinkEscapes { .. }), "{e}");
        let e = scan_err(&[("h", EntryType::Link, "missing", b"")]);
        assert!(matches!(e, ArchiveError::HardLinkTarget { .. }), "{e}");
        // A symlink that stays inside at its depth, hard-linked to the root,
        // would point three levels out.
        let e = scan_err(&[
            ("a", EntryType::Directory, "", b""),
            ("a/b", EntryType::Directory, "", b""),
            ("a/b/c", EntryType::Directory, "", b""),
            ("a/b/c/up", EntryType::Symlink, "../../..", b""),
            ("top", EntryType::Link, "a/b/c/up", b""),
        ]);
        assert!(matches!(e, ArchiveError::HardLinkTarget { .. }), "{e}");
    }

    #[test]
    fn rejects_special_files() {
        let e = scan_err(&[("dev", EntryType::Char, "", b"")]);
        assert!(matches!(e, ArchiveError::UnsupportedType { .. }), "{e}");
        let e = scan_err(&[("p", EntryType::Fifo, "", b"")]);
        assert!(e.to_string().contains("FIFO"), "{e}");
    }

    #[test]
    fn enforces_limits() {
        let tmp = build(&[
            ("a", EntryType::Regular, "", b"0123456789"),
            ("b", EntryType::Regular, "", b"0123456789"),
        ]);
        let l = Limits {
            max_total_bytes: 15,
            ..Limits::default()
        };
        assert!(matches!(
            scan(tmp.path(), &l),
            Err(ArchiveError::TooLarge { limit: 15 })
        ));
        let l = Limits {
            max_files: 1,
            ..Limits::default()
        };
        assert!(matches!(
            scan(tmp.path(), &l),
            Err(ArchiveError::TooManyFiles { limit: 1 })
        ));
        let zeros = vec![0u8; 20 << 20];
        let bomb = build(&[("z", EntryType::Regular, "", &zeros)]);
        assert!(matches!(
            scan(bomb.path(), &Limits::default()),
            Err(ArchiveError::RatioExceeded { limit: 200 })
        ));
    }

    #[test]
    fn rejects_garbage() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(b"not a tarball").unwrap();
        let e = scan(tmp.path(), &Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::Read(_)), "{e}");
    }

    #[test]
    fn pack_unpack_round_trip() {
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::write(s.join("predict.py"), "def load_model(): pass\n").unwrap();
        fs::write(s.join("requirements.txt"), "").unwrap();
        fs::create_dir_all(s.join("model/sub")).unwrap();
        fs::write(s.join("model/sub/w.bin"), [1u8, 2, 3]).unwrap();
        fs::create_dir_all(s.join("data")).unwrap();
        fs::write(s.join("data/x.json"), "{}").unwrap();
        fs::create_dir_all(s.join("__pycache__")).unwrap();
        fs::write(s.join("__pycache__/p.pyc"), "junk").unwrap();
        std::os::unix::fs::symlink("model/sub/w.bin", s.join("weights")).unwrap();
        fs::write(s.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(s.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();

        let mut packed = tempfile::NamedTempFile::new().unwrap();
        pack_dir(s, packed.as_file_mut()).unwrap();
        let mut again = Vec::new();
        pack_dir(s, &mut again).unwrap();
        assert_eq!(fs::read(packed.path()).unwrap(), again, "deterministic");

        let dest = tempfile::tempdir().unwrap();
        let d = dest.path().join("repo");
        let m = unpack(packed.path(), &d, &Limits::default()).unwrap();
        assert!(m.has_predict && m.has_requirements && !m.has_train);
        assert_eq!(m.files, 9, "{m:?}");
        assert_eq!(fs::read(d.join("model/sub/w.bin")).unwrap(), [1, 2, 3]);
        assert_eq!(fs::read(d.join("weights")).unwrap(), [1, 2, 3]);
        assert!(fs::symlink_metadata(d.join("weights"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!d.join("__pycache__").exists());
        let mode = fs::metadata(d.join("run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111);
    }
}

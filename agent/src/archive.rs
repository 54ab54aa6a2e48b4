//! Model repo archives (tar.gz): packing a directory, scanning an upload without
//! extracting it, and safe extraction. Shared by the agent, the scheduler (upload
//! validation) and the CLI (packing). Paths may never escape the extraction root:
//! no absolute paths, no `..`, no links pointing outside, no special files.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, HeaderMode};

/// Below this many uncompressed bytes the compression ratio is not checked (small
/// repos of repetitive text legitimately compress very well).
const RATIO_FLOOR_BYTES: u64 = 16 << 20;

/// What the tar stream may hold between one entry's data and the next entry:
/// padding, the next 512-byte header and any GNU long name/link or pax records
/// for it. The tar reader holds those records in memory whole, so they are
/// capped rather than counted against the size limit.
const HEADER_ROOM: u64 = 64 << 10;

/// Longest file name (one path component), as Linux allows (NAME_MAX).
const MAX_NAME_BYTES: usize = 255;

/// Longest entry path or link target, as Linux allows (PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;

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
    #[error("archive entry headers (long names or pax records) take more than {limit} bytes; it is not a tar.gz of a repo")]
    HeadersTooLarge { limit: u64 },
    #[error("archive entry `{path}` has a name or link target longer than the system allows ({MAX_NAME_BYTES} bytes a name, {MAX_PATH_BYTES} a path)")]
    NameTooLong { path: String },
    #[error("archive entry `{path}` {problem}")]
    Conflict { path: String, problem: String },
}

/// Writes a tar.gz of the contents of `src` (paths relative to `src`) to `out`.
/// `__pycache__` directories are skipped; symlinks are stored as symlinks. Entries
/// are sorted and headers deterministic, so the same tree gives the same bytes.
pub fn pack_dir(src: &Path, out: impl Write) -> io::Result<()> {
    let gz = GzEncoder::new(out, Compression::default());
    let mut builder = tar::Builder::new(gz);
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
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, HeaderMode::Deterministic);
        let path = rel_path.as_os_str().as_bytes();
        set_long(
            b,
            EntryType::GNULongName,
            path,
            &mut header.as_old_mut().name,
        )?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&full)?;
            let target = target.as_os_str().as_bytes();
            set_long(
                b,
                EntryType::GNULongLink,
                target,
                &mut header.as_old_mut().linkname,
            )?;
        }
        header.set_cksum();
        if meta.is_file() {
            b.append(&header, File::open(&full)?)?;
        } else {
            b.append(&header, io::empty())?;
        }
        if meta.is_dir() {
            append_tree(b, root, &rel_path)?;
        }
    }
    Ok(())
}

/// Puts `value` in a 100-byte header field (`name` or `linkname`), preceded by
/// a GNU long name/link entry when it is longer. (The tar crate's own fallback
/// fails on a long path whose first bytes are not UTF-8.)
fn set_long<W: Write>(
    b: &mut tar::Builder<W>,
    kind: EntryType,
    value: &[u8],
    field: &mut [u8; 100],
) -> io::Result<()> {
    if value.len() > field.len() {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_mtime(0);
        long.set_entry_type(kind);
        long.set_size(value.len() as u64 + 1);
        long.set_cksum();
        b.append(&long, value.chain(&[0u8][..]))?;
    }
    let n = value.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&value[..n]);
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

/// Why the [`Metered`] reader stopped the tar reader.
#[derive(Debug, Clone, Copy)]
enum Trip {
    Ratio,
    Headers,
}

/// Counts the decompressed bytes the tar reader takes and holds them to what
/// the entries seen so far account for, so that no part of the stream (entry
/// data, padding, long names, pax records) is inflated unchecked.
struct Meter {
    read: Cell<u64>,
    allowed: Cell<u64>,
    compressed: u64,
    max_ratio: u64,
    tripped: Cell<Option<Trip>>,
}

impl Meter {
    /// Lets the reader go on through `size` bytes of the current entry's data,
    /// then through the headers of the next entry.
    fn allow(&self, size: u64) {
        self.allowed.set(
            self.read
                .get()
                .saturating_add(size)
                .saturating_add(HEADER_ROOM),
        );
    }

    fn error(&self, limits: &Limits) -> Option<ArchiveError> {
        self.tripped.get().map(|t| match t {
            Trip::Ratio => ArchiveError::RatioExceeded {
                limit: limits.max_ratio,
            },
            Trip::Headers => ArchiveError::HeadersTooLarge { limit: HEADER_ROOM },
        })
    }
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        let trip = |t| {
            m.tripped.set(Some(t));
            Err(io::Error::other("archive limit exceeded"))
        };
        if m.tripped.get().is_some() {
            return Err(io::Error::other("archive limit exceeded"));
        }
        let room = m.allowed.get().saturating_sub(m.read.get());
        if room == 0 && !buf.is_empty() {
            return trip(Trip::Headers);
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        let read = m.read.get().saturating_add(n as u64);
        m.read.set(read);
        if read > RATIO_FLOOR_BYTES && read / m.compressed > m.max_ratio {
            return trip(Trip::Ratio);
        }
        Ok(n)
    }
}

fn walk(archive: &Path, limits: &Limits, dest: Option<&Path>) -> Result<Manifest, ArchiveError> {
    let file = File::open(archive).map_err(ArchiveError::Read)?;
    let compressed = file.metadata().map_err(ArchiveError::Read)?.len().max(1);
    let meter = Rc::new(Meter {
        read: Cell::new(0),
        allowed: Cell::new(HEADER_ROOM),
        compressed,
        max_ratio: limits.max_ratio,
        tripped: Cell::new(None),
    });
    let reader = Metered {
        inner: GzDecoder::new(BufReader::new(file)),
        meter: meter.clone(),
    };
    // Whatever error the tar reader or the extraction makes of a tripped
    // meter, the limit is the reason.
    walk_entries(reader, &meter, limits, dest).map_err(|e| meter.error(limits).unwrap_or(e))
}

fn walk_entries<R: Read>(
    reader: R,
    meter: &Meter,
    limits: &Limits,
    dest: Option<&Path>,
) -> Result<Manifest, ArchiveError> {
    let mut ar = tar::Archive::new(reader);
    let mut manifest = Manifest::default();
    // Data bytes of every entry (what the stream inflates to, less headers).
    let mut charged: u64 = 0;
    let mut charge = |size: u64| {
        charged = charged.saturating_add(size);
        if charged > limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_total_bytes,
            });
        }
        if charged > RATIO_FLOOR_BYTES && charged / meter.compressed > limits.max_ratio {
            return Err(ArchiveError::RatioExceeded {
                limit: limits.max_ratio,
            });
        }
        meter.allow(size);
        Ok(())
    };
    // What each path is once the entries so far are extracted: symlinks,
    // non-directories (files and hard links) and directories (explicit or
    // made for the entries under them).
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    for entry in ar.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        // The data size, from a pax record where there is one: what is read.
        let size = entry.size();
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            charge(size)?;
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
        check_conflicts(&path, &kind, &files, &dirs, &shown)?;
        manifest.files += 1;
        if manifest.files > limits.max_files {
            return Err(ArchiveError::TooManyFiles {
                limit: limits.max_files,
            });
        }
        charge(size)?;
        if let Kind::File = kind {
            manifest.total_bytes = manifest.total_bytes.saturating_add(size);
        }
        // The last entry of a name decides what it is.
        let is_file = matches!(kind, Kind::File | Kind::HardLink(_));
        if path == Path::new("predict.py") {
            manifest.has_predict = is_file;
        } else if path == Path::new("train.py") {
            manifest.has_train = is_file;
        } else if path == Path::new("requirements.txt") {
            manifest.has_requirements = is_file;
        }
        dirs.extend(
            path.ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .map(Path::to_path_buf),
        );
        match &kind {
            Kind::Symlink(_) => {
                files.remove(&path);
                symlinks.insert(path.clone());
            }
            Kind::File | Kind::HardLink(_) => {
                symlinks.remove(&path);
                files.insert(path.clone());
            }
            // A symlink replaced by a directory stays in `symlinks`: nothing
            // may be written under that path (the scan would have to trust
            // the replacement).
            Kind::Dir => {
                files.remove(&path);
                dirs.insert(path.clone());
            }
        }
        if let Some(dest) = dest {
            extract(&mut entry, &kind, dest, &path)?;
        }
    }
    Ok(manifest)
}

/// Relative path with `.` components removed; rejects absolute paths, `..`
/// and names the system could not create.
fn normalize_entry_path(raw: &Path, shown: &str) -> Result<PathBuf, ArchiveError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => {
                return Err(ArchiveError::AbsolutePath(shown.to_string()))
            }
            Component::ParentDir => return Err(ArchiveError::ParentDir(shown.to_string())),
            Component::CurDir => {}
            Component::Normal(n) if n.len() > MAX_NAME_BYTES => return Err(name_too_long(shown)),
            Component::Normal(n) => out.push(n),
        }
    }
    if out.as_os_str().len() > MAX_PATH_BYTES {
        return Err(name_too_long(shown));
    }
    Ok(out)
}

fn name_too_long(shown: &str) -> ArchiveError {
    let mut path: String = shown.chars().take(64).collect();
    if path.len() < shown.len() {
        path.push('…');
    }
    ArchiveError::NameTooLong { path }
}

/// Refuses an entry that extraction could not write where the earlier entries
/// put something else: a path that is both a directory and not one, an entry
/// under a file, or a non-directory at the root itself.
fn check_conflicts(
    path: &Path,
    kind: &Kind,
    files: &HashSet<PathBuf>,
    dirs: &HashSet<PathBuf>,
    shown: &str,
) -> Result<(), ArchiveError> {
    let conflict = |problem: String| ArchiveError::Conflict {
        path: shown.to_string(),
        problem,
    };
    if let Some(file) = path
        .ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| files.contains(*a))
    {
        return Err(conflict(format!(
            "lies under `{}`, which is a file earlier in the archive",
            file.display()
        )));
    }
    if matches!(kind, Kind::Dir) {
        return Ok(());
    }
    if path.as_os_str().is_empty() {
        return Err(conflict(
            "is the repo root itself, which can only be a directory".into(),
        ));
    }
    if dirs.contains(path) {
        return Err(conflict(
            "replaces a directory of the same name; a path cannot be both a directory and a file or link"
                .into(),
        ));
    }
    Ok(())
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
        Some(t) if t.as_os_str().as_bytes().len() > MAX_PATH_BYTES => Err(name_too_long(shown)),
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
        // A hard link to itself: the file is already there.
        Kind::HardLink(src) if src == rel => {}
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
mod tests;

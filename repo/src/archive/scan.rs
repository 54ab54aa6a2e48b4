//! Reading an archive entry by entry and checking each one before anything is
//! written: its path, its type, its link target and what the entries before it
//! made of that path. [`scan`] stops there; unpacking visits every valid entry.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use tar::EntryType;

use super::limits::{Meter, MAX_NAME_BYTES, MAX_PATH_BYTES};
use super::{ArchiveError, Limits};
use crate::Manifest;

/// Checks an archive without extracting anything.
pub fn scan(archive: &Path, limits: &Limits) -> Result<Manifest, ArchiveError> {
    walk(archive, limits, &mut |_| Ok(()))
}

/// What a validated entry is.
pub(super) enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    HardLink(PathBuf),
}

/// A validated entry, as extraction needs it.
pub(super) struct ValidEntry<'a> {
    /// Relative to the root, `.` components removed.
    pub path: &'a Path,
    pub kind: &'a Kind,
    /// The mode bits of its header.
    pub mode: u32,
    /// Its data.
    pub data: &'a mut dyn Read,
}

/// Reads every entry of `archive`, checks it and hands it to `visit`; stops at
/// the first entry refused (or the first error of `visit`).
pub(super) fn walk(
    archive: &Path,
    limits: &Limits,
    visit: &mut dyn FnMut(ValidEntry<'_>) -> Result<(), ArchiveError>,
) -> Result<Manifest, ArchiveError> {
    let file = File::open(archive).map_err(ArchiveError::Read)?;
    let compressed = file.metadata().map_err(ArchiveError::Read)?.len();
    let meter = Meter::new(limits, compressed);
    let reader = meter.reader(GzDecoder::new(BufReader::new(file)));
    walk_entries(reader, &meter, limits, visit).map_err(|e| meter.error().unwrap_or(e))
}

fn walk_entries<R: Read>(
    reader: R,
    meter: &Meter,
    limits: &Limits,
    visit: &mut dyn FnMut(ValidEntry<'_>) -> Result<(), ArchiveError>,
) -> Result<Manifest, ArchiveError> {
    let mut ar = tar::Archive::new(reader);
    let mut manifest = Manifest::default();
    let mut tree = Tree::default();
    for entry in ar.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        // The data size, from a pax record where there is one: what is read.
        let size = entry.size();
        if entry.header().entry_type().is_pax_global_extensions() {
            meter.charge(size)?;
            continue;
        }
        let raw = entry.path().map_err(ArchiveError::Read)?.into_owned();
        let shown = raw.display().to_string();
        let path = normalize_entry_path(&raw, &shown)?;
        let kind = tree.check(&entry, &path, &shown)?;
        count(&mut manifest, limits, meter, &path, &kind, size)?;
        tree.add(&path, &kind);
        let mode = entry.header().mode().unwrap_or(0o644);
        visit(ValidEntry {
            path: &path,
            kind: &kind,
            mode,
            data: &mut entry,
        })?;
    }
    Ok(manifest)
}

/// Counts a valid entry of `size` data bytes against the limits and notes it in
/// the manifest.
fn count(
    manifest: &mut Manifest,
    limits: &Limits,
    meter: &Meter,
    path: &Path,
    kind: &Kind,
    size: u64,
) -> Result<(), ArchiveError> {
    manifest.files += 1;
    if manifest.files > limits.max_files {
        return Err(ArchiveError::TooManyFiles {
            limit: limits.max_files,
        });
    }
    meter.charge(size)?;
    if let Kind::File = kind {
        manifest.total_bytes = manifest.total_bytes.saturating_add(size);
    }
    manifest.note(path, matches!(kind, Kind::File | Kind::HardLink(_)));
    Ok(())
}

/// What each path is once the entries so far are extracted: symlinks,
/// non-directories (files and hard links) and directories (explicit or made
/// for the entries under them).
#[derive(Default)]
struct Tree {
    symlinks: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
}

impl Tree {
    /// What the entry at `path` is, if the entries before it leave room for it.
    fn check<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        path: &Path,
        shown: &str,
    ) -> Result<Kind, ArchiveError> {
        if let Some(link) = self.symlink_above(path) {
            return Err(ArchiveError::ThroughSymlink {
                path: shown.to_string(),
                link: link.display().to_string(),
            });
        }
        let kind = match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => {
                let target = link_target(entry, shown)?;
                check_symlink(path, &target, shown)?;
                Kind::Symlink(target)
            }
            EntryType::Link => Kind::HardLink(self.hard_link_source(entry, shown)?),
            other => {
                return Err(ArchiveError::UnsupportedType {
                    path: shown.to_string(),
                    kind: type_name(other).to_string(),
                })
            }
        };
        self.check_conflicts(path, &kind, shown)?;
        Ok(kind)
    }

    /// Records what `path` is now.
    fn add(&mut self, path: &Path, kind: &Kind) {
        self.dirs
            .extend(proper_ancestors(path).map(Path::to_path_buf));
        match kind {
            Kind::Symlink(_) => {
                self.files.remove(path);
                self.symlinks.insert(path.to_path_buf());
            }
            Kind::File | Kind::HardLink(_) => {
                self.symlinks.remove(path);
                self.files.insert(path.to_path_buf());
            }
            // A symlink replaced by a directory stays in `symlinks`: nothing
            // may be written under that path (the scan would have to trust
            // the replacement).
            Kind::Dir => {
                self.files.remove(path);
                self.dirs.insert(path.to_path_buf());
            }
        }
    }

    /// The first proper ancestor of `path` that is a symlink entry.
    fn symlink_above(&self, path: &Path) -> Option<&PathBuf> {
        proper_ancestors(path).find_map(|a| self.symlinks.get(a))
    }

    /// The file a hard link entry links to. Only regular files: a hard link to
    /// a symlink would move the symlink (and its relative target) to another
    /// depth.
    fn hard_link_source<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<PathBuf, ArchiveError> {
        let target = link_target(entry, shown)?;
        let source = hard_link_target(&target, shown)?;
        if !self.files.contains(&source) {
            return Err(ArchiveError::HardLinkTarget {
                path: shown.to_string(),
                target: target.display().to_string(),
            });
        }
        Ok(source)
    }

    /// Refuses an entry that extraction could not write where the earlier entries
    /// put something else: a path that is both a directory and not one, an entry
    /// under a file, or a non-directory at the root itself.
    fn check_conflicts(&self, path: &Path, kind: &Kind, shown: &str) -> Result<(), ArchiveError> {
        let conflict = |problem: String| ArchiveError::Conflict {
            path: shown.to_string(),
            problem,
        };
        if let Some(file) = proper_ancestors(path).find(|a| self.files.contains(*a)) {
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
        if self.dirs.contains(path) {
            return Err(conflict(
                "replaces a directory of the same name; a path cannot be both a directory and a file or link"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The ancestors of `path` below the root, nearest first, `path` itself excluded.
fn proper_ancestors(path: &Path) -> impl Iterator<Item = &Path> {
    path.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;
    use crate::archive::fixtures::{archive_file, build, gzip, scan_err, RawTar};
    use crate::archive::unpack;

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
    fn rejects_garbage() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(b"not a tarball").unwrap();
        let e = scan(tmp.path(), &Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::Read(_)), "{e}");
    }

    #[test]
    fn conflicting_entries_are_refused_by_scan() {
        // Each of these used to pass the scan (so the upload was stored) and
        // then fail halfway through the agent's unpack.
        type Entry<'a> = (&'a [u8], EntryType, &'a [u8]);
        let cases: &[&[Entry]] = &[
            // a file, then an entry under it
            &[
                (b"a", EntryType::Regular, b""),
                (b"a/b", EntryType::Regular, b""),
            ],
            // a directory, then a file of the same name
            &[
                (b"d/f", EntryType::Regular, b""),
                (b"d", EntryType::Regular, b""),
            ],
            &[
                (b"d/", EntryType::Directory, b""),
                (b"d", EntryType::Symlink, b"."),
            ],
            // a hard link to what has become a directory
            &[
                (b"f", EntryType::Regular, b""),
                (b"f/", EntryType::Directory, b""),
                (b"h", EntryType::Link, b"f"),
            ],
            // the root itself as a file
            &[(b"./", EntryType::Regular, b"")],
        ];
        for entries in cases {
            let mut raw = RawTar::default();
            for (name, ty, link) in *entries {
                raw.entry(name, *ty, link, b"");
            }
            let a = archive_file(&gzip(&raw.finish()));
            let e = scan(a.path(), &Limits::default()).unwrap_err();
            assert!(
                matches!(
                    e,
                    ArchiveError::Conflict { .. } | ArchiveError::HardLinkTarget { .. }
                ),
                "{entries:?}: {e}"
            );
        }
        // A directory over a file, a file over a symlink and a hard link to
        // itself are fine.
        let mut raw = RawTar::default();
        raw.entry(b"a", EntryType::Regular, b"", b"1");
        raw.entry(b"a/", EntryType::Directory, b"", b"");
        raw.entry(b"a/x", EntryType::Regular, b"", b"2");
        raw.entry(b"l", EntryType::Symlink, b"a", b"");
        raw.entry(b"l", EntryType::Regular, b"", b"3");
        raw.entry(b"l", EntryType::Link, b"./l", b"");
        let a = archive_file(&gzip(&raw.finish()));
        let root = tempfile::tempdir().unwrap();
        unpack(a.path(), root.path(), &Limits::default()).unwrap();
        assert_eq!(fs::read(root.path().join("a/x")).unwrap(), b"2");
        assert_eq!(fs::read(root.path().join("l")).unwrap(), b"3");
    }

    #[test]
    fn names_longer_than_the_system_allows_are_refused() {
        let long = "n".repeat(256);
        let mut raw = RawTar::default();
        raw.entry(long.as_bytes(), EntryType::Regular, b"", b"");
        let a = archive_file(&gzip(&raw.finish()));
        let e = scan(a.path(), &Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::NameTooLong { .. }), "{e}");
        let ok = "n".repeat(255);
        let deep = vec![ok.as_str(); 20].join("/");
        let mut raw = RawTar::default();
        raw.entry(ok.as_bytes(), EntryType::Regular, b"", b"x");
        raw.entry(deep.as_bytes(), EntryType::Regular, b"", b"");
        let a = archive_file(&gzip(&raw.finish()));
        let e = scan(a.path(), &Limits::default()).unwrap_err();
        assert!(matches!(e, ArchiveError::NameTooLong { .. }), "{e}");
        assert!(e.to_string().len() < 400, "{e}");
    }
}

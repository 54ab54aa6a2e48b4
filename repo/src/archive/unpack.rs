//! Extracting an archive that [`scan`] accepted: every entry is checked again as
//! it is written, never through a symlink and never outside the destination.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::scan::{scan, walk, Kind, ValidEntry};
use super::{ArchiveError, Limits};
use crate::Manifest;

/// Scans `archive`, then extracts it into `dest` (created if missing). Never writes
/// through a symlink and never outside `dest`.
pub fn unpack(archive: &Path, dest: &Path, limits: &Limits) -> Result<Manifest, ArchiveError> {
    scan(archive, limits)?;
    fs::create_dir_all(dest).map_err(|source| ArchiveError::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    walk(archive, limits, &mut |entry| extract(entry, dest))
}

fn extract(entry: ValidEntry<'_>, dest: &Path) -> Result<(), ArchiveError> {
    let rel = entry.path;
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
    match entry.kind {
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
            let mode = if entry.mode & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(werr)?;
            io::copy(entry.data, &mut f).map_err(werr)?;
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
mod tests {
    use std::collections::HashSet;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;

    use proptest::prelude::*;
    use tar::EntryType;

    use super::*;
    use crate::archive::fixtures::{archive_file, config, data, gzip, tree, RawTar, Sandbox};

    /// A path in a generated archive: absolute ones point into the temp
    /// root's `outside` dir (never at the real system).
    #[derive(Debug, Clone)]
    struct GenPath {
        absolute: bool,
        parts: Vec<Vec<u8>>,
        trailing_slash: bool,
    }

    impl GenPath {
        fn render(&self, outside: &Path) -> Vec<u8> {
            let mut out = Vec::new();
            if self.absolute {
                out.extend_from_slice(outside.as_os_str().as_bytes());
                out.push(b'/');
            }
            out.extend(self.parts.join(&b'/'));
            if self.trailing_slash {
                out.push(b'/');
            }
            out
        }
    }

    #[derive(Debug, Clone)]
    enum Target {
        /// The name of another entry of the archive (links to links).
        Entry(prop::sample::Index),
        Path(GenPath),
    }

    #[derive(Debug, Clone)]
    enum GenKind {
        File(Vec<u8>),
        /// A file whose size is in a pax record (its header says 0).
        PaxFile(Vec<u8>),
        Dir,
        Symlink(Target),
        HardLink(Target),
        Special(EntryType),
    }

    #[derive(Debug, Clone)]
    struct GenEntry {
        path: GenPath,
        kind: GenKind,
        mode: u32,
    }

    fn component() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => prop::sample::select(vec![
                "a", "b", "c", "predict.py", "train.py", "__pycache__", "x y", "-", "\\",
                "é", ".", "",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            1 => Just(b"..".to_vec()),
            // odd bytes: anything but NUL and `/`, valid UTF-8 or not
            1 => prop::collection::vec(any::<u8>().prop_filter("no NUL or /", |b| *b != 0 && *b != b'/'), 1..6),
            // around the tar header's 100 bytes and the system's 255
            1 => (90usize..300).prop_map(|n| vec![b'n'; n]),
        ]
    }

    /// Mostly plain paths (so that many archives are accepted and the
    /// properties of accepted archives are exercised), some hostile ones.
    fn gen_path() -> impl Strategy<Value = GenPath> {
        let plain = prop::sample::select(vec![
            "a",
            "b",
            "c",
            "predict.py",
            "train.py",
            "__pycache__",
            "x y",
            "é",
            ".",
        ])
        .prop_map(|s| s.as_bytes().to_vec());
        prop_oneof![
            6 => (prop::collection::vec(plain, 1..=3), prop::bool::weighted(0.15)).prop_map(
                |(parts, trailing_slash)| GenPath {
                    absolute: false,
                    parts,
                    trailing_slash,
                }
            ),
            1 => (
                prop::bool::weighted(0.2),
                prop::collection::vec(component(), 1..=4),
                prop::bool::weighted(0.15),
            )
                .prop_map(|(absolute, parts, trailing_slash)| GenPath {
                    absolute,
                    parts,
                    trailing_slash,
                }),
        ]
    }

    fn target() -> impl Strategy<Value = Target> {
        prop_oneof![
            2 => any::<prop::sample::Index>().prop_map(Target::Entry),
            // relative to the link's dir: `..` at the start is legitimate
            1 => (0usize..3, gen_path()).prop_map(|(up, mut p)| {
                p.parts.splice(0..0, vec![b"..".to_vec(); up]);
                p.parts.truncate(4);
                Target::Path(p)
            }),
            1 => gen_path().prop_map(Target::Path),
        ]
    }

    fn gen_entry() -> impl Strategy<Value = GenEntry> {
        let kind = prop_oneof![
            6 => data().prop_map(GenKind::File),
            1 => data().prop_map(GenKind::PaxFile),
            3 => Just(GenKind::Dir),
            3 => target().prop_map(GenKind::Symlink),
            2 => target().prop_map(GenKind::HardLink),
            1 => prop::sample::select(vec![EntryType::Fifo, EntryType::Char, EntryType::GNUSparse])
                .prop_map(GenKind::Special),
        ];
        (
            gen_path(),
            kind,
            prop::sample::select(vec![0o644u32, 0o755, 0o4777, 0]),
        )
            .prop_map(|(path, kind, mode)| GenEntry { path, kind, mode })
    }

    fn limits() -> impl Strategy<Value = Limits> {
        prop_oneof![
            3 => Just(Limits::default()),
            1 => (1u64..12, 0u64..8000).prop_map(|(max_files, max_total_bytes)| Limits {
                max_files,
                max_total_bytes,
                max_ratio: 200,
            }),
        ]
    }

    /// The uncompressed tar stream of `entries`.
    fn raw_tar(entries: &[GenEntry], outside: &Path) -> Vec<u8> {
        let names: Vec<Vec<u8>> = entries.iter().map(|e| e.path.render(outside)).collect();
        let target = |t: &Target| match t {
            Target::Entry(i) => names[i.index(names.len())].clone(),
            Target::Path(p) => p.render(outside),
        };
        let mut raw = RawTar::default();
        for (e, name) in entries.iter().zip(&names) {
            let (ty, link, body): (EntryType, Vec<u8>, &[u8]) = match &e.kind {
                GenKind::File(d) => (EntryType::Regular, vec![], d),
                GenKind::PaxFile(d) => {
                    raw.pax("size", &d.len().to_string());
                    raw.header(name, EntryType::Regular, b"", 0, e.mode);
                    raw.0.extend_from_slice(d);
                    raw.pad();
                    continue;
                }
                GenKind::Dir => (EntryType::Directory, vec![], &[]),
                GenKind::Symlink(t) => (EntryType::Symlink, target(t), &[]),
                GenKind::HardLink(t) => (EntryType::Link, target(t), &[]),
                GenKind::Special(ty) => (*ty, vec![], &[]),
            };
            raw.header(name, ty, &link, body.len() as u64, e.mode);
            raw.0.extend_from_slice(body);
            raw.pad();
        }
        raw.finish()
    }

    /// Regular file bytes under `dir`, each inode once.
    fn unpacked_bytes(dir: &Path) -> u64 {
        let mut seen = HashSet::new();
        tree(dir)
            .iter()
            .map(|p| fs::symlink_metadata(p).unwrap())
            .filter(|m| m.is_file() && seen.insert(m.ino()))
            .map(|m| m.len())
            .sum()
    }

    /// The properties every archive must have, whatever its bytes: no panic;
    /// what scan refuses unpack refuses, extracting nothing; what scan
    /// accepts unpacks (a repo the scheduler took is one the agent can
    /// extract), with the same manifest and no more bytes than it says;
    /// nothing is written or linked outside the extraction dir.
    fn check_archive(bytes: &[u8], limits: &Limits, sandbox: &Sandbox) {
        let file = archive_file(bytes);
        let scanned = scan(file.path(), limits);
        let unpacked = unpack(file.path(), &sandbox.dest, limits);
        match (&scanned, &unpacked) {
            (Err(s), Err(u)) => {
                assert_eq!(
                    std::mem::discriminant(s),
                    std::mem::discriminant(u),
                    "{s} / {u}"
                );
                assert!(!sandbox.dest.exists(), "refused ({u}) but extracted");
            }
            (Ok(s), Ok(u)) => {
                assert_eq!(s, u);
                assert!(u.files <= limits.max_files);
                assert!(u.total_bytes <= limits.max_total_bytes);
                let written = unpacked_bytes(&sandbox.dest);
                assert!(written <= u.total_bytes, "{written} bytes written, {u:?}");
                let is_file = |name: &str| {
                    fs::symlink_metadata(sandbox.dest.join(name)).is_ok_and(|m| m.is_file())
                };
                assert_eq!(u.has_predict, is_file("predict.py"), "{u:?}");
                assert_eq!(u.has_train, is_file("train.py"), "{u:?}");
            }
            _ => panic!("scan {scanned:?} but unpack {unpacked:?}"),
        }
        for r in [&scanned, &unpacked] {
            if let Err(e) = r {
                assert!(!e.to_string().is_empty());
            }
        }
        sandbox.check_contained();
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn prop_hostile_archives_stay_inside(
            entries in prop::collection::vec(gen_entry(), 0..12),
            limits in limits(),
        ) {
            let sandbox = Sandbox::new();
            let raw = raw_tar(&entries, &sandbox.outside);
            check_archive(&gzip(&raw), &limits, &sandbox);
        }
    }

    /// Byte flips and a cut, at positions taken modulo the length.
    #[derive(Debug, Clone)]
    struct Damage {
        flips: Vec<(prop::sample::Index, u8)>,
        cut: Option<prop::sample::Index>,
    }

    impl Damage {
        fn apply(&self, bytes: &mut Vec<u8>) {
            if bytes.is_empty() {
                return;
            }
            for (i, x) in &self.flips {
                let i = i.index(bytes.len());
                bytes[i] ^= x.max(&1);
            }
            if let Some(c) = &self.cut {
                bytes.truncate(c.index(bytes.len()));
            }
        }
    }

    fn damage() -> impl Strategy<Value = Damage> {
        (
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            prop::option::of(any::<prop::sample::Index>()),
        )
            .prop_map(|(flips, cut)| Damage { flips, cut })
    }

    proptest! {
        #![proptest_config(config(128))]

        #[test]
        fn prop_damaged_archives_stay_inside(
            entries in prop::collection::vec(gen_entry(), 1..8),
            damage in damage(),
            in_tar in any::<bool>(),
        ) {
            let sandbox = Sandbox::new();
            let bytes = if in_tar {
                // damaged tar headers and data, in a sound gzip stream
                let mut raw = raw_tar(&entries, &sandbox.outside);
                damage.apply(&mut raw);
                gzip(&raw)
            } else {
                // a damaged or truncated gzip stream
                let mut gz = gzip(&raw_tar(&entries, &sandbox.outside));
                damage.apply(&mut gz);
                gz
            };
            check_archive(&bytes, &Limits::default(), &sandbox);
        }

        #[test]
        fn prop_random_bytes_are_refused_cleanly(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
            gzipped in any::<bool>(),
        ) {
            let sandbox = Sandbox::new();
            let bytes = if gzipped { gzip(&bytes) } else { bytes };
            check_archive(&bytes, &Limits::default(), &sandbox);
        }
    }
}

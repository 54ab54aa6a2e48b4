//! Archive tests: hostile and damaged archives, limits, and round trips
//! (deterministic cases and bounded property tests).

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

// ---- Hostile archives written byte by byte ----

/// An uncompressed tar stream with raw names, types and sizes, as a hostile
/// client would write it (GNU long names and pax records included).
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn header(&mut self, name: &[u8], ty: EntryType, link: &[u8], size: u64, mode: u32) {
        if name.len() > 100 {
            self.meta(EntryType::GNULongName, name);
        }
        if link.len() > 100 {
            self.meta(EntryType::GNULongLink, link);
        }
        let mut h = Header::new_gnu();
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        old.linkname[..l].copy_from_slice(&link[..l]);
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(size);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
    }

    fn pad(&mut self) {
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
    }

    fn meta(&mut self, ty: EntryType, value: &[u8]) {
        self.header(b"././@LongLink", ty, b"", value.len() as u64 + 1, 0o644);
        self.0.extend_from_slice(value);
        self.0.push(0);
        self.pad();
    }

    /// A pax extended header (`x`) for the next entry.
    fn pax(&mut self, key: &str, value: &str) {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        self.header(
            b"PaxHeader",
            EntryType::XHeader,
            b"",
            record.len() as u64,
            0o644,
        );
        self.0.extend_from_slice(record.as_bytes());
        self.pad();
    }

    fn entry(&mut self, name: &[u8], ty: EntryType, link: &[u8], data: &[u8]) {
        self.header(name, ty, link, data.len() as u64, 0o644);
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

fn archive_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(bytes).unwrap();
    tmp.flush().unwrap();
    tmp
}

/// A gzip stream holding `head`, then `zeros` zero bytes, then `tail`,
/// compressed as it is written (nothing that large is ever in memory).
fn gzip_with_zeros(head: &[u8], zeros: u64, tail: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(head).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        gz.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    gz.write_all(tail).unwrap();
    gz.finish().unwrap()
}

/// Bytes that end a tar entry of `size` bytes of data and the archive.
fn tail_after(size: u64) -> Vec<u8> {
    vec![0u8; (size.div_ceil(512) * 512 - size) as usize + 1024]
}

#[test]
fn zip_bomb_is_refused_before_it_is_unpacked() {
    // 64 MiB of zeros in one file compress to about 64 KiB (ratio about
    // 1000:1); its header alone gives the bomb away.
    let size: u64 = 64 << 20;
    let mut head = RawTar::default();
    head.header(b"predict.py", EntryType::Regular, b"", size, 0o644);
    let bomb = archive_file(&gzip_with_zeros(&head.0, size, &tail_after(size)));
    let compressed = fs::metadata(bomb.path()).unwrap().len();
    assert!(size / compressed > 200, "{compressed} bytes compressed");
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("repo");
    let started = std::time::Instant::now();
    let e = unpack(bomb.path(), &dest, &Limits::default()).unwrap_err();
    assert!(
        matches!(e, ArchiveError::RatioExceeded { limit: 200 }),
        "{e}"
    );
    assert!(e.to_string().contains("zip bomb"), "{e}");
    assert!(
        !dest.exists(),
        "nothing is extracted from a refused archive"
    );
    // Refused on the header, before the data is inflated.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Above the total size limit it is refused whatever the ratio.
    let l = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let e = scan(bomb.path(), &l).unwrap_err();
    assert!(
        matches!(e, ArchiveError::TooLarge { limit } if limit == 1 << 20),
        "{e}"
    );
}

#[test]
fn hidden_bombs_are_refused() {
    let size: u64 = 24 << 20;
    // The size in a pax record overrides the header's (0 here): it is the
    // size the data really has, and is what counts.
    let mut head = RawTar::default();
    head.pax("size", &size.to_string());
    head.header(b"w.bin", EntryType::Regular, b"", 0, 0o644);
    let pax = archive_file(&gzip_with_zeros(&head.0, size, &tail_after(size)));
    let e = scan(pax.path(), &Limits::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::RatioExceeded { .. }), "{e}");
    let l = Limits {
        max_total_bytes: 1000,
        ..Limits::default()
    };
    let e = scan(pax.path(), &l).unwrap_err();
    assert!(matches!(e, ArchiveError::TooLarge { limit: 1000 }), "{e}");
    // Data behind a directory entry is read (to skip it) but never
    // written: it counts all the same.
    let mut head = RawTar::default();
    head.header(b"d/", EntryType::Directory, b"", size, 0o755);
    let dir = archive_file(&gzip_with_zeros(&head.0, size, &tail_after(size)));
    let e = scan(dir.path(), &Limits::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::RatioExceeded { .. }), "{e}");
    // A GNU long name is read into memory whole: a huge one is refused
    // after a bounded read, not allocated.
    let mut head = RawTar::default();
    head.header(b"././@LongLink", EntryType::GNULongName, b"", size, 0o644);
    let mut tail = tail_after(size);
    tail.truncate(tail.len() - 1024);
    let mut rest = RawTar::default();
    rest.entry(b"x", EntryType::Regular, b"", b"1");
    tail.extend(rest.finish());
    let long = archive_file(&gzip_with_zeros(&head.0, size, &tail));
    let e = scan(long.path(), &Limits::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::HeadersTooLarge { .. }), "{e}");
}

#[test]
fn file_count_limit() {
    let mut raw = RawTar::default();
    for i in 0..50 {
        raw.entry(format!("f{i}").as_bytes(), EntryType::Regular, b"", b"");
    }
    let a = archive_file(&gzip(&raw.finish()));
    let l = |max_files| Limits {
        max_files,
        ..Limits::default()
    };
    assert_eq!(scan(a.path(), &l(50)).unwrap().files, 50);
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("repo");
    let e = unpack(a.path(), &dest, &l(49)).unwrap_err();
    assert!(matches!(e, ArchiveError::TooManyFiles { limit: 49 }), "{e}");
    assert!(e.to_string().contains("more than 49 entries"), "{e}");
    assert!(!dest.exists());
    // Directories and links count too.
    let mut raw = RawTar::default();
    raw.entry(b"d/", EntryType::Directory, b"", b"");
    raw.entry(b"f", EntryType::Regular, b"", b"x");
    raw.entry(b"l", EntryType::Symlink, b"f", b"");
    raw.entry(b"h", EntryType::Link, b"f", b"");
    let a = archive_file(&gzip(&raw.finish()));
    assert_eq!(scan(a.path(), &l(4)).unwrap().files, 4);
    assert!(matches!(
        scan(a.path(), &l(3)),
        Err(ArchiveError::TooManyFiles { limit: 3 })
    ));
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
fn manifest_describes_the_last_entry_of_a_name() {
    let mut raw = RawTar::default();
    raw.entry(b"predict.py", EntryType::Regular, b"", b"x");
    raw.entry(b"predict.py/", EntryType::Directory, b"", b"");
    raw.entry(b"t", EntryType::Regular, b"", b"y");
    raw.entry(b"train.py", EntryType::Symlink, b"t", b"");
    raw.entry(b"requirements.txt", EntryType::Link, b"t", b"");
    let a = archive_file(&gzip(&raw.finish()));
    let root = tempfile::tempdir().unwrap();
    let m = unpack(a.path(), root.path(), &Limits::default()).unwrap();
    assert!(
        !m.has_predict && !m.has_train && m.has_requirements,
        "{m:?}"
    );
    assert!(root.path().join("predict.py").is_dir());
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

// ---- Property tests ----

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;

/// Levels between the temp root and the extraction dir, more than the `..`
/// a generated name or link target can hold, so that even a bug could not
/// write outside the temp root.
const DEST_DEPTH: usize = 6;

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

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..700),
        (any::<u8>(), 0usize..5000).prop_map(|(b, n)| vec![b; n]),
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

/// Every path under `dir` (not following symlinks), `dir` included.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        if let Ok(m) = fs::symlink_metadata(&p) {
            if m.is_dir() {
                for e in fs::read_dir(&p).unwrap() {
                    todo.push(e.unwrap().path());
                }
            }
            out.insert(p);
        }
    }
    out
}

/// Where `path` leads when every symlink on the way is followed, missing
/// components taken as plain names; None for a symlink loop.
fn resolve(path: &Path, hops: &mut u32) -> Option<PathBuf> {
    let mut cur = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => cur = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(n) => {
                cur.push(n);
                if let Ok(target) = fs::read_link(&cur) {
                    *hops += 1;
                    if *hops > 40 {
                        return None;
                    }
                    cur.pop();
                    cur = resolve(&cur.join(target), hops)?;
                }
            }
        }
    }
    Some(cur)
}

/// A temp root with a sentinel file outside the extraction dir.
struct Sandbox {
    root: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
    before: BTreeSet<PathBuf>,
}

impl Sandbox {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("sentinel"), "keep").unwrap();
        let mut parent = root.path().to_path_buf();
        for i in 0..DEST_DEPTH {
            parent.push(format!("d{i}"));
        }
        fs::create_dir_all(&parent).unwrap();
        let before = tree(root.path());
        let dest = parent.join("dest");
        Sandbox {
            root,
            dest,
            outside,
            before,
        }
    }

    /// Nothing changed outside `dest`, and nothing inside it leads out.
    fn check_contained(&self) {
        let after: BTreeSet<_> = tree(self.root.path())
            .into_iter()
            .filter(|p| !p.starts_with(&self.dest))
            .collect();
        assert_eq!(after, self.before, "written outside the extraction dir");
        let sentinel = fs::symlink_metadata(self.outside.join("sentinel")).unwrap();
        assert_eq!(sentinel.nlink(), 1, "hard link to a file outside");
        assert_eq!(fs::read(self.outside.join("sentinel")).unwrap(), b"keep");
        let dest = self.dest.canonicalize().unwrap_or(self.dest.clone());
        for p in tree(&self.dest) {
            let m = fs::symlink_metadata(&p).unwrap();
            assert!(
                m.is_dir() || m.is_file() || m.file_type().is_symlink(),
                "special file {p:?}"
            );
            assert_eq!(m.mode() & 0o7000, 0, "setuid/setgid/sticky on {p:?}");
            if m.file_type().is_symlink() {
                if let Some(to) = resolve(&p, &mut 0) {
                    assert!(
                        to.starts_with(&dest),
                        "{p:?} -> {:?} leads to {to:?}",
                        fs::read_link(&p).unwrap()
                    );
                }
            }
        }
    }
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

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
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

/// A repo tree to pack: files, directories and symlinks inside it.
#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>, bool),
    Dir,
    /// A relative link to another node (by index), or to the parent dir.
    Symlink(Option<prop::sample::Index>),
}

fn safe_component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-zA-Z0-9_ .-]{1,12}"
            .prop_filter("not . or ..", |s| s != "." && s != "..")
            .prop_map(String::into_bytes),
        1 => prop::collection::vec(0x80u8..=0xff, 1..5),
        1 => Just(b"__pycache__".to_vec()),
        1 => Just(b"predict.py".to_vec()),
        1 => (100usize..=255).prop_map(|n| vec![b'l'; n]),
    ]
}

fn node() -> impl Strategy<Value = (Vec<Vec<u8>>, Node)> {
    let kind = prop_oneof![
        3 => (data(), any::<bool>()).prop_map(|(d, x)| Node::File(d, x)),
        1 => Just(Node::Dir),
        1 => prop::option::of(any::<prop::sample::Index>()).prop_map(Node::Symlink),
    ];
    (prop::collection::vec(safe_component(), 1..=3), kind)
}

/// Builds the nodes that fit (a name taken or under a non-directory is
/// skipped) and returns the tree as pack_dir should store it.
fn build_tree(src: &Path, nodes: &[(Vec<Vec<u8>>, Node)]) {
    let paths: Vec<PathBuf> = nodes
        .iter()
        .map(|(parts, _)| parts.iter().map(|p| OsStr::from_bytes(p)).collect())
        .collect();
    for ((_, node), rel) in nodes.iter().zip(&paths) {
        let full = src.join(rel);
        let through_link = rel
            .ancestors()
            .skip(1)
            .any(|a| fs::symlink_metadata(src.join(a)).is_ok_and(|m| m.file_type().is_symlink()));
        if through_link || fs::symlink_metadata(&full).is_ok() {
            continue;
        }
        let parent = full.parent().unwrap();
        if fs::create_dir_all(parent).is_err() {
            continue;
        }
        match node {
            Node::File(d, exec) => {
                fs::write(&full, d).unwrap();
                let mode = if *exec { 0o755 } else { 0o644 };
                fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
            }
            Node::Dir => fs::create_dir(&full).unwrap(),
            Node::Symlink(to) => {
                let up = PathBuf::from_iter(vec![".."; rel.components().count() - 1]);
                let target = match to {
                    Some(i) => up.join(&paths[i.index(paths.len())]),
                    None => PathBuf::from(".."),
                };
                // `..` at the root would point outside: not a repo's link.
                if target == Path::new("..") && rel.components().count() == 1 {
                    continue;
                }
                std::os::unix::fs::symlink(target, &full).unwrap();
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Dir,
    File(Vec<u8>, bool),
    Link(PathBuf),
}

/// The tree under `dir` by relative path, without `__pycache__` dirs.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Seen> {
    tree(dir)
        .into_iter()
        .filter(|p| p != dir)
        .map(|p| p.strip_prefix(dir).unwrap().to_path_buf())
        .filter(|rel| !rel.components().any(|c| c.as_os_str() == "__pycache__"))
        .map(|rel| {
            let full = dir.join(&rel);
            let m = fs::symlink_metadata(&full).unwrap();
            let seen = if m.file_type().is_symlink() {
                Seen::Link(fs::read_link(&full).unwrap())
            } else if m.is_dir() {
                Seen::Dir
            } else {
                Seen::File(fs::read(&full).unwrap(), m.mode() & 0o111 != 0)
            };
            (rel, seen)
        })
        .collect()
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn prop_pack_dir_round_trips(nodes in prop::collection::vec(node(), 0..16)) {
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path(), &nodes);
        let expected = snapshot(src.path());
        let mut packed = tempfile::NamedTempFile::new().unwrap();
        pack_dir(src.path(), packed.as_file_mut()).unwrap();
        let scanned = scan(packed.path(), &Limits::default()).unwrap();
        let sandbox = Sandbox::new();
        let m = unpack(packed.path(), &sandbox.dest, &Limits::default()).unwrap();
        prop_assert_eq!(&scanned, &m);
        let got = snapshot(&sandbox.dest);
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(m.files, expected.len() as u64);
        let bytes: usize = expected
            .values()
            .map(|s| match s {
                Seen::File(d, _) => d.len(),
                _ => 0,
            })
            .sum();
        prop_assert_eq!(m.total_bytes, bytes as u64);
        prop_assert_eq!(
            m.has_predict,
            matches!(expected.get(Path::new("predict.py")), Some(Seen::File(..)))
        );
        sandbox.check_contained();
    }
}

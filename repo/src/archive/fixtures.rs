//! Test fixtures for the archive code: archives built entry by entry, or byte by
//! byte as a hostile client would write them (GNU long names, pax records, zip
//! bombs), and a sandboxed extraction root that tells whether anything escaped.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::prelude::*;
use tar::{EntryType, Header};

use super::{scan, ArchiveError, Limits};

/// Builds a tar.gz from raw entries: (path, type, link target, data).
pub(crate) fn build(entries: &[(&str, EntryType, &str, &[u8])]) -> tempfile::NamedTempFile {
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

pub(crate) fn scan_err(entries: &[(&str, EntryType, &str, &[u8])]) -> ArchiveError {
    let tmp = build(entries);
    scan(tmp.path(), &Limits::default()).unwrap_err()
}

/// An uncompressed tar stream with raw names, types and sizes, as a hostile
/// client would write it (GNU long names and pax records included).
#[derive(Default)]
pub(crate) struct RawTar(pub(crate) Vec<u8>);

impl RawTar {
    pub(crate) fn header(&mut self, name: &[u8], ty: EntryType, link: &[u8], size: u64, mode: u32) {
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

    pub(crate) fn pad(&mut self) {
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
    }

    fn meta(&mut self, ty: EntryType, value: &[u8]) {
        self.header(b"././@LongLink", ty, b"", value.len() as u64 + 1, 0o644);
        self.0.extend_from_slice(value);
        self.0.push(0);
        self.pad();
    }

    /// A pax extended header (`x`) for the next entry.
    pub(crate) fn pax(&mut self, key: &str, value: &str) {
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

    pub(crate) fn entry(&mut self, name: &[u8], ty: EntryType, link: &[u8], data: &[u8]) {
        self.header(name, ty, link, data.len() as u64, 0o644);
        self.0.extend_from_slice(data);
        self.pad();
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

pub(crate) fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

pub(crate) fn archive_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(bytes).unwrap();
    tmp.flush().unwrap();
    tmp
}

/// A gzip stream holding `head`, then `zeros` zero bytes, then `tail`,
/// compressed as it is written (nothing that large is ever in memory).
pub(crate) fn gzip_with_zeros(head: &[u8], zeros: u64, tail: &[u8]) -> Vec<u8> {
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
pub(crate) fn tail_after(size: u64) -> Vec<u8> {
    vec![0u8; (size.div_ceil(512) * 512 - size) as usize + 1024]
}

/// Levels between the temp root and the extraction dir, more than the `..`
/// a generated name or link target can hold, so that even a bug could not
/// write outside the temp root.
const DEST_DEPTH: usize = 6;

pub(crate) fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..700),
        (any::<u8>(), 0usize..5000).prop_map(|(b, n)| vec![b; n]),
    ]
}

/// Every path under `dir` (not following symlinks), `dir` included.
pub(crate) fn tree(dir: &Path) -> BTreeSet<PathBuf> {
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
pub(crate) struct Sandbox {
    root: tempfile::TempDir,
    pub(crate) dest: PathBuf,
    pub(crate) outside: PathBuf,
    before: BTreeSet<PathBuf>,
}

impl Sandbox {
    pub(crate) fn new() -> Self {
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
    pub(crate) fn check_contained(&self) {
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

pub(crate) fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

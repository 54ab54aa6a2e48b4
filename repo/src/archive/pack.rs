//! Packing a repo directory into a tar.gz, deterministically: the same tree
//! gives the same bytes.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, HeaderMode};

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;
    use crate::archive::fixtures::{config, data, tree, Sandbox};
    use crate::archive::{scan, unpack, Limits};

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
            let through_link = rel.ancestors().skip(1).any(|a| {
                fs::symlink_metadata(src.join(a)).is_ok_and(|m| m.file_type().is_symlink())
            });
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
    enum OnDisk {
        Dir,
        File(Vec<u8>, bool),
        Link(PathBuf),
    }

    /// The tree under `dir` by relative path, without `__pycache__` dirs.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, OnDisk> {
        tree(dir)
            .into_iter()
            .filter(|p| p != dir)
            .map(|p| p.strip_prefix(dir).unwrap().to_path_buf())
            .filter(|rel| !rel.components().any(|c| c.as_os_str() == "__pycache__"))
            .map(|rel| {
                let full = dir.join(&rel);
                let m = fs::symlink_metadata(&full).unwrap();
                let found = if m.file_type().is_symlink() {
                    OnDisk::Link(fs::read_link(&full).unwrap())
                } else if m.is_dir() {
                    OnDisk::Dir
                } else {
                    OnDisk::File(fs::read(&full).unwrap(), m.mode() & 0o111 != 0)
                };
                (rel, found)
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
                    OnDisk::File(d, _) => d.len(),
                    _ => 0,
                })
                .sum();
            prop_assert_eq!(m.total_bytes, bytes as u64);
            prop_assert_eq!(
                m.has_predict,
                matches!(expected.get(Path::new("predict.py")), Some(OnDisk::File(..)))
            );
            sandbox.check_contained();
        }
    }
}

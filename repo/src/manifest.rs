//! The repo manifest: the files at a repo's root that say what it can do
//! (predict.py serves, train.py trains, requirements.txt needs an environment),
//! and what a scanned archive holds.

use std::path::Path;

/// The file at the repo root that makes it servable: `load_model()` and `run()`.
pub const PREDICT_PY: &str = "predict.py";
/// The file at the repo root that makes it trainable: `train(output_dir, **args)`.
pub const TRAIN_PY: &str = "train.py";
/// The pip requirements of the repo's environment.
pub const REQUIREMENTS_TXT: &str = "requirements.txt";

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

impl Manifest {
    /// Notes the entry at `path` (relative to the root): the last entry of a
    /// name decides what it is.
    pub(crate) fn note(&mut self, path: &Path, is_file: bool) {
        let flag = if path == Path::new(PREDICT_PY) {
            &mut self.has_predict
        } else if path == Path::new(TRAIN_PY) {
            &mut self.has_train
        } else if path == Path::new(REQUIREMENTS_TXT) {
            &mut self.has_requirements
        } else {
            return;
        };
        *flag = is_file;
    }
}

#[cfg(test)]
mod tests {
    use tar::EntryType;

    use crate::archive::fixtures::{archive_file, gzip, RawTar};
    use crate::archive::{unpack, Limits};

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
}

//! What an archive may expand to ([`Limits`]), and the [`Meter`] that holds the
//! decompressed stream to it: every entry's data is charged against the total
//! size and the compression ratio before the tar reader may read it.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use super::ArchiveError;

/// Below this many uncompressed bytes the compression ratio is not checked (small
/// repos of repetitive text legitimately compress very well).
const RATIO_FLOOR_BYTES: u64 = 16 << 20;

/// What the tar stream may hold between one entry's data and the next entry:
/// padding, the next 512-byte header and any GNU long name/link or pax records
/// for it. The tar reader holds those records in memory whole, so they are
/// capped rather than counted against the size limit.
const HEADER_ROOM: u64 = 64 << 10;

/// Longest file name (one path component), as Linux allows (NAME_MAX).
pub(super) const MAX_NAME_BYTES: usize = 255;

/// Longest entry path or link target, as Linux allows (PATH_MAX).
pub(super) const MAX_PATH_BYTES: usize = 4096;

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

/// Why the [`Metered`] reader stopped the tar reader.
#[derive(Debug, Clone, Copy)]
enum Trip {
    Ratio,
    Headers,
}

/// Counts the decompressed bytes the tar reader takes and holds them to what
/// the entries seen so far account for, so that no part of the stream (entry
/// data, padding, long names, pax records) is inflated unchecked.
pub(super) struct Meter {
    limits: Limits,
    compressed: u64,
    /// Bytes the reader has taken.
    read: Cell<u64>,
    /// Bytes the reader may take before the next entry is charged.
    allowed: Cell<u64>,
    /// Data bytes of every entry (what the stream inflates to, less headers).
    charged: Cell<u64>,
    tripped: Cell<Option<Trip>>,
}

impl Meter {
    /// A meter for an archive of `compressed` bytes.
    pub(super) fn new(limits: &Limits, compressed: u64) -> Rc<Meter> {
        Rc::new(Meter {
            limits: *limits,
            compressed: compressed.max(1),
            read: Cell::new(0),
            allowed: Cell::new(HEADER_ROOM),
            charged: Cell::new(0),
            tripped: Cell::new(None),
        })
    }

    /// `inner`, read through this meter.
    pub(super) fn reader<R: Read>(self: &Rc<Self>, inner: R) -> Metered<R> {
        Metered {
            inner,
            meter: self.clone(),
        }
    }

    /// Counts `size` data bytes of the current entry against the limits, then
    /// lets the reader go on through them and the headers of the next entry.
    pub(super) fn charge(&self, size: u64) -> Result<(), ArchiveError> {
        let charged = self.charged.get().saturating_add(size);
        self.charged.set(charged);
        if charged > self.limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.limits.max_total_bytes,
            });
        }
        if charged > RATIO_FLOOR_BYTES && charged / self.compressed > self.limits.max_ratio {
            return Err(ArchiveError::RatioExceeded {
                limit: self.limits.max_ratio,
            });
        }
        self.allowed.set(
            self.read
                .get()
                .saturating_add(size)
                .saturating_add(HEADER_ROOM),
        );
        Ok(())
    }

    /// The limit the reader ran into, if it did: whatever error the tar reader
    /// or the extraction made of it, that is the reason.
    pub(super) fn error(&self) -> Option<ArchiveError> {
        self.tripped.get().map(|t| match t {
            Trip::Ratio => ArchiveError::RatioExceeded {
                limit: self.limits.max_ratio,
            },
            Trip::Headers => ArchiveError::HeadersTooLarge { limit: HEADER_ROOM },
        })
    }
}

/// A reader held to its [`Meter`].
pub(super) struct Metered<R> {
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
        if read > RATIO_FLOOR_BYTES && read / m.compressed > m.limits.max_ratio {
            return trip(Trip::Ratio);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tar::EntryType;

    use super::*;
    use crate::archive::fixtures::{
        archive_file, build, gzip, gzip_with_zeros, tail_after, RawTar,
    };
    use crate::archive::{scan, unpack};

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
}

//! Positional file reads behind one small trait, so that the disk readers do not care whether
//! bytes come from pread, io_uring or a test backend that injects faults.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A source of bytes addressed by absolute offset.
///
/// Readers hold one per file of a chain. Implementations must be shareable between the
/// pipeline's worker threads, hence `Send + Sync` and `&self` reads.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` from `offset`; a read that reaches past the end of the file is an
    /// `UnexpectedEof` error, never a short read.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True if the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// The path, for error messages.
    fn path(&self) -> &Path;
    /// Ranges `[start, end)` of the file that hold data, for sparse raw and fixed images.
    /// The default says "all of it", which is always correct, only slower.
    fn data_ranges(&self, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
        Ok(if start < end {
            vec![(start, end)]
        } else {
            vec![]
        })
    }
}

/// pread(2) on a regular file: the portable backend.
#[derive(Debug)]
pub struct PreadFile {
    file: File,
    path: PathBuf,
}

impl PreadFile {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Ok(PreadFile {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl ReadAt for PreadFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn data_ranges(&self, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
        seek_data_ranges(&self.file, start, end)
    }
}

/// Walks SEEK_DATA/SEEK_HOLE so that holes of a sparse file are never read. Falls back to
/// "all data" where the filesystem does not support it.
pub fn seek_data_ranges(file: &File, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on a valid fd owned by `file` has no memory-safety preconditions.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(out), // no data after pos
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    out.push((pos, end));
                    Ok(out)
                }
                _ => Err(err),
            };
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let hole = (hole as u64).min(end);
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}

/// Opens a file with the backend chosen for this host.
pub fn open(path: &Path) -> io::Result<Box<dyn ReadAt>> {
    Ok(Box::new(PreadFile::open(path)?))
}

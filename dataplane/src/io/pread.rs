//! pread(2): the portable backend, and the SEEK_DATA walk shared by every backend.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vdrep_proto::RangeSet;

use super::ReadAt;

/// pread(2) on a regular file: the portable backend, used where io_uring is unavailable or
/// when `VDREP_IO=pread` asks for it.
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
        // std retries EINTR and turns a read that stops at end of file into UnexpectedEof.
        self.file.read_exact_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn data_ranges(&self, start: u64, end: u64) -> io::Result<RangeSet> {
        seek_data_ranges(&self.file, start, end)
    }
    fn backend(&self) -> &'static str {
        "pread"
    }
}

/// Walks SEEK_DATA/SEEK_HOLE so that holes of a sparse file are never read. Falls back to
/// "all data" where the filesystem does not support it.
pub fn seek_data_ranges(file: &File, start: u64, end: u64) -> io::Result<RangeSet> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = RangeSet::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on a valid fd owned by `file` has no memory-safety preconditions.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(out), // no data after pos
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    out.insert(pos, end);
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
        out.insert(data, hole);
        pos = hole;
    }
    Ok(out)
}

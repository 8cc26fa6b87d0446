//! An exclusive advisory lock on a file (flock), released when the guard drops or the
//! process dies — so a killed writer never blocks the sender forever.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Holds the lock.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
}

impl LockGuard {
    /// Blocks until the lock on `path` (created if missing) is ours.
    pub fn acquire(path: &Path) -> io::Result<LockGuard> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        Self::on_file(file)
    }

    /// Blocks until the lock on the open `file` is ours (the lock belongs to the inode:
    /// it stays with the file across a rename).
    pub fn on_file(file: File) -> io::Result<LockGuard> {
        loop {
            // SAFETY: flock on a valid fd owned by `file`.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(LockGuard { file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The lock on `file` if nobody holds it; `None` if a live process does.
    pub fn try_on_file(file: File) -> io::Result<Option<LockGuard>> {
        loop {
            // SAFETY: as above.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return Ok(Some(LockGuard { file }));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // SAFETY: as above; closing the fd would release it too.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

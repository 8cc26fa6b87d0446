//! The filesystem calls of the local store, behind one trait, so that the same store logic
//! runs on the real filesystem ([`RealFs`]) and on the durability model of crash tests
//! ([`crate::sink::fault::SimFs`]), which tracks what a crash would keep.
//!
//! The contract is POSIX's: data written is durable only after [`DataFile::sync_data`] or
//! [`StoreFs::sync_file`]; a new, renamed or removed name is durable only after
//! [`StoreFs::sync_dir`] of its directory. Directories themselves are created durably.

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::sink::SinkError;

/// Holds a lock until dropped.
pub type LockGuard = Box<dyn Any + Send + Sync>;

/// Directory and small-file operations of the store.
pub trait StoreFs: Send + Sync {
    /// Creates `dir` and its parents, durably.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The whole content of a small file, or `None` if it does not exist.
    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Creates or truncates `path` and writes `data` (not yet durable).
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// fsync of a file by name.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames within one directory, replacing `to` (not yet durable).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file; an absent file is not an error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// True if a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Names of the entries of `dir`, unsorted.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a data file read-write; with `create_size`, creates (or truncates) it as a sparse
    /// file of that size first.
    fn open_data(&self, path: &Path, create_size: Option<u64>) -> io::Result<Arc<dyn DataFile>>;
    /// Takes an exclusive lock named by `path` without waiting: `None` if someone holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>>;
    /// Opens a data file for reading only (readers that must not need write permission,
    /// such as failover); models without permissions open it as usual.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn DataFile>> {
        self.open_data(path, None)
    }
    /// Removes a directory if it is empty; absent or non-empty is not an error. Models whose
    /// directories exist implicitly do nothing.
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let _ = dir;
        Ok(())
    }
}

/// How long a writer of a small shared file (a VM's jobs, its VM points) waits for another
/// writer's lock before giving up (recoverable: the other writer is a live process).
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Creates `dir` and takes the lock `lock` in it, waiting up to [`LOCK_WAIT`] for another
/// writer to release it.
pub fn lock_waiting(fs: &dyn StoreFs, dir: &Path, lock: &Path) -> Result<LockGuard, SinkError> {
    fs.create_dir_all(dir)
        .map_err(|e| SinkError::io(dir, "create folder", 0, e))?;
    let deadline = crate::clock::std_now() + LOCK_WAIT;
    loop {
        match fs
            .try_lock(lock)
            .map_err(|e| SinkError::io(lock, "lock", 0, e))?
        {
            Some(g) => return Ok(g),
            None if crate::clock::std_now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            None => {
                return Err(SinkError::Locked {
                    path: lock.to_path_buf(),
                })
            }
        }
    }
}

/// Positional IO on one open data file.
pub trait DataFile: Send + Sync {
    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Writes all of `parts`, one after the other, at `offset`. The default joins them.
    fn write_parts_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        self.write_at(offset, &parts.concat())
    }
    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Zeroes a range, deallocating it where the filesystem can.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()>;
    /// fdatasync: makes completed writes (and the size) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Drops the file's clean cached pages. A receiver writes each byte once and reads it
    /// back rarely (resync, failover): keeping gigabytes of replica in the page cache only
    /// evicts what the host does read, and a cache that keeps growing takes fresh pages,
    /// which on a virtual machine cost a hypervisor fault each (1.3 CPU-s per GiB written,
    /// measured here) where recycled ones do not. A hint: errors are ignored.
    fn drop_cache(&self) {}
    /// Current length.
    fn size(&self) -> io::Result<u64>;
    /// Where data may start at or after `offset` (`SEEK_DATA`): `None` when nothing but a
    /// hole follows. The bytes of `[offset, answer)` read as zeros, so a cycle records the
    /// pre-image of a range the replica never held data in without reading it (a hole read
    /// fills the page cache with zero pages: 0.5 CPU-s per GiB, `ANALYSIS.md` session 11).
    /// May say data where there is a hole, never the reverse: the default (a file system
    /// that does not track holes) says everything is data.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }
    /// The first hole at or after `offset` (`SEEK_HOLE`; the end of the file counts as
    /// one). May say later than the real hole, never earlier than `offset`.
    fn next_hole(&self, _offset: u64) -> io::Result<u64> {
        self.size()
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl StoreFs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir)?;
        // A relative path's parent may be "": that is the current directory.
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        self.sync_dir(parent)?;
        Ok(())
    }
    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        OpenOptions::new().write(true).open(path)?.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(n) = entry?.file_name().into_string() {
                names.push(n);
            }
        }
        Ok(names)
    }
    fn open_data(&self, path: &Path, create_size: Option<u64>) -> io::Result<Arc<dyn DataFile>> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if create_size.is_some() {
            o.create(true).truncate(true);
        }
        let file = o.open(path)?;
        if let Some(size) = create_size {
            file.set_len(size)?;
        }
        Ok(Arc::new(RealDataFile { file }))
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a valid, owned descriptor; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            // The lock lives as long as the descriptor: the guard owns the file.
            return Ok(Some(Box::new(file)));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn DataFile>> {
        let file = File::open(path)?;
        Ok(Arc::new(RealDataFile { file }))
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        match fs::remove_dir(dir) {
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                Ok(())
            }
            r => r,
        }
    }
}

/// `pwritev` of all of `parts` at `offset`, the iovecs at most `IOV_MAX` per call, short
/// writes resumed where they stopped.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut iov: Vec<libc::iovec> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let (mut first, mut at) = (0usize, offset);
    while first < iov.len() {
        let n = (iov.len() - first).min(IOV_MAX);
        let Ok(off) = libc::off_t::try_from(at) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: the iovecs point into `parts`, borrowed for this call and not written
        // through; the descriptor is valid and owned.
        let rc = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov[first..].as_ptr(),
                n as libc::c_int,
                off,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        let mut done = rc as usize;
        at += done as u64;
        while done > 0 {
            let v = &mut iov[first];
            if done >= v.iov_len {
                done -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: `done` < the iovec's length: still inside its slice.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(done) } as *mut libc::c_void;
                v.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

/// A data file on the real filesystem.
struct RealDataFile {
    file: File,
}

impl RealDataFile {
    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE`: `Ok(None)` for `ENXIO` (no more data, or
    /// `offset` at or past the end), `Err` for a file system that does not know the call.
    /// Only positional IO uses the descriptor, so moving its offset is harmless.
    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: lseek on a valid, owned descriptor; no memory is passed.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    }
}

impl DataFile for RealDataFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn write_parts_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        write_all_vectored_at(&self.file, parts, offset)
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        match self.seek(offset, libc::SEEK_DATA) {
            Ok(d) => Ok(d.map(|d| d.max(offset))),
            // Holes unknown here: everything may be data.
            Err(_) => Ok(Some(offset)),
        }
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        match self.seek(offset, libc::SEEK_HOLE) {
            Ok(Some(h)) => Ok(h.max(offset)),
            // Past the end, or holes unknown: the end of the file is the hole.
            Ok(None) | Err(_) => Ok(self.size()?.max(offset)),
        }
    }
    fn drop_cache(&self) {
        // SAFETY: posix_fadvise on a valid, owned descriptor; no memory is passed.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a valid, owned descriptor; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
        ) {
            return Err(e);
        }
        // No hole punching here: write zeros in bounded chunks.
        let chunk = vec![0u8; 1 << 20];
        let mut pos = offset;
        let end = offset.saturating_add(len);
        while pos < end {
            let n = (end - pos).min(chunk.len() as u64) as usize;
            self.file.write_all_at(&chunk[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the file system under the test's temporary folder, `next_data` and
    /// `next_hole` never call data a hole; where it tracks holes, they find them.
    #[test]
    fn seek_data_and_hole_never_call_data_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mib = 1u64 << 20;
        let f = RealFs.open_data(&path, Some(4 * mib)).unwrap();
        f.write_at(mib, &[1u8; 4096]).unwrap();
        f.write_at(3 * mib, &[2u8; 4096]).unwrap();
        let real = RealFs.open_read(&path).unwrap();
        for f in [f.as_ref(), real.as_ref()] {
            let d = f.next_data(0).unwrap().expect("data follows");
            assert!(d <= mib, "data at {d}, not before {mib}");
            let h = f.next_hole(mib).unwrap();
            assert!(h >= mib + 4096, "a hole at {h} inside the data");
            let d = f.next_data(mib + 4096).unwrap().expect("data follows");
            assert!(d <= 3 * mib, "data at {d}");
            let d = f.next_data(mib + 2048).unwrap().expect("inside data");
            assert_eq!(d, mib + 2048);
            assert!(f.next_hole(3 * mib).unwrap() >= 3 * mib + 4096);
            // Past the last data: a hole to the end, or (without hole tracking) data.
            if let Some(d) = f.next_data(3 * mib + 4096).unwrap() {
                assert_eq!(d, 3 * mib + 4096, "data can only be where it starts");
            }
        }
        // Where holes are tracked, the first MiB is one.
        if f.next_data(0).unwrap() == Some(mib) {
            assert_eq!(f.next_hole(0).unwrap(), 0);
        }
    }

    /// A vectored write lands every part in order: empty parts, more parts than one
    /// `pwritev` takes (IOV_MAX), at an offset; the bytes around it stay as they were.
    #[test]
    fn parts_are_written_in_order_across_iov_max() {
        let dir = tempfile::tempdir().unwrap();
        let f = RealFs
            .open_data(&dir.path().join("f"), Some(64 << 10))
            .unwrap();
        let bytes: Vec<u8> = (0..3 * 1500u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut parts: Vec<&[u8]> = vec![&[]];
        parts.extend(bytes.chunks(3).flat_map(|c| [c, &[][..]]));
        assert!(parts.len() > 2048);
        f.write_parts_at(4096 + 7, &parts).unwrap();
        let mut back = vec![0u8; 64 << 10];
        f.read_at(0, &mut back).unwrap();
        assert_eq!(&back[4096 + 7..4096 + 7 + bytes.len()], &bytes[..]);
        assert!(back[..4096 + 7].iter().all(|&b| b == 0));
        assert!(back[4096 + 7 + bytes.len()..].iter().all(|&b| b == 0));
        f.write_parts_at(0, &[]).unwrap();
    }
}

//! How much of a file's range is in the page cache, asked of the kernel with cachestat(2)
//! (Linux 6.5): the cold-direct backend reads a range through the page cache when it is
//! there and with O_DIRECT when it is not (see [`super::uring`]).
//!
//! Why not mincore(2): it needs a mapping of the file, and its answer is a byte per page;
//! cachestat counts the pages of a range from the descriptor in one call, a few microseconds
//! for 1 MiB, which is nothing next to reading it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// cachestat's number: 451 on every Linux architecture but alpha (the syscall table is shared
/// since 5.1); the `libc` crate does not name it for every target yet.
#[cfg(target_os = "linux")]
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range` of the kernel's uapi.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of the kernel's uapi; counts are in pages. The kernel fills every
/// field; only `nr_cache` is read.
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Bytes of `[offset, offset + len)` of `file` held in the page cache (whole pages, so at
/// most `len` rounded out to pages). `len` must not be 0 (cachestat reads 0 as "to the end
/// of the file"). Fails with `ENOSYS` on kernels before 6.5 or where seccomp refuses it.
pub fn cached_bytes(file: &File, offset: u64, len: u64) -> io::Result<u64> {
    debug_assert!(len > 0, "cachestat takes len 0 as the whole file");
    #[cfg(target_os = "linux")]
    {
        let range = CachestatRange { off: offset, len };
        let mut cs = Cachestat::default();
        // SAFETY: both pointers are to live, properly sized repr(C) structs for the call's
        // duration; the kernel writes only `cs`. Flags must be 0.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const CachestatRange,
                &mut cs as *mut Cachestat,
                0u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cs.nr_cache.saturating_mul(page_size()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// The kernel's page size (4 KiB on x86-64, up to 64 KiB elsewhere).
fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn cachestat_sees_a_file_leave_and_reenter_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        drop(f);
        let f = File::open(&path).unwrap();
        super::super::direct::evict_cached_pages(&f).unwrap();
        let cold = cached_bytes(&f, 0, 1 << 20).expect("this host's kernel has cachestat (6.5+)");
        assert_eq!(cold, 0, "evicted");
        let mut buf = vec![0u8; 256 << 10];
        (&f).read_exact(&mut buf).unwrap();
        let warm = cached_bytes(&f, 0, 256 << 10).unwrap();
        assert_eq!(warm, 256 << 10, "the read's pages are cached");
    }
}

//! The source image's page-cache state before each transfer (`--source-cache warm|cold`).
//!
//! A VM disk on a hypervisor is mostly *not* in the host's page cache (the guest caches
//! it), while a file just written or read is: rsync against a warm file measured 782 MB/s
//! where it managed 422 MB/s cold (issue 21), so results are only comparable when every
//! tool starts from the same, stated, state. Cold: `posix_fadvise(POSIX_FADV_DONTNEED)` on
//! the whole image (after `fdatasync`, since dirty pages are not dropped), then `mincore`
//! checks that the pages are really gone. Warm: one untimed read of the whole image, then
//! `mincore` checks that it is all resident (it is not if the image is larger than the
//! memory the kernel will give the cache).

use std::fs::File;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;

/// The state each transfer starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceCache {
    /// The whole image in the page cache (one untimed read first).
    Warm,
    /// None of it (dropped with POSIX_FADV_DONTNEED before each run of every tool).
    Cold,
}

/// Share of the image's pages resident in the page cache, 0.0 to 1.0 (`mincore` over a
/// read-only mapping, 1 GiB at a time).
pub fn resident_share(path: &Path) -> anyhow::Result<f64> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(1.0);
    }
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    const WINDOW: u64 = 1 << 30;
    let (mut resident, mut pages) = (0u64, 0u64);
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(WINDOW);
        // SAFETY: a fresh private read-only mapping of our open file; only mincore reads
        // its page table, no byte of it is dereferenced; unmapped below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                n as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                off as libc::off_t,
            );
            if p == libc::MAP_FAILED {
                bail!(
                    "{}: mmap: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            let mut vec = vec![0u8; n.div_ceil(page) as usize];
            let r = libc::mincore(p, n as usize, vec.as_mut_ptr());
            let err = std::io::Error::last_os_error();
            libc::munmap(p, n as usize);
            if r != 0 {
                bail!("{}: mincore: {err}", path.display());
            }
            resident += vec.iter().filter(|&&b| b & 1 == 1).count() as u64;
            pages += vec.len() as u64;
        }
        off += n;
    }
    Ok(resident as f64 / pages as f64)
}

/// Drops the image from the page cache and checks that at most 1 % stayed.
pub fn make_cold(path: &Path) -> anyhow::Result<f64> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    f.sync_data()?;
    // SAFETY: plain fadvise(2) on a descriptor we own.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        bail!(
            "{}: posix_fadvise(DONTNEED): {}",
            path.display(),
            std::io::Error::from_raw_os_error(r)
        );
    }
    let share = resident_share(path)?;
    if share > 0.01 {
        bail!(
            "{}: {:.1} % of the image is still in the page cache after POSIX_FADV_DONTNEED \
             (tmpfs cannot drop it: use --tmp on a disk file system)",
            path.display(),
            share * 100.0
        );
    }
    Ok(share)
}

/// Reads the whole image once (untimed) and checks that at least 99 % of it is resident.
pub fn make_warm(path: &Path) -> anyhow::Result<f64> {
    let mut f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    let share = resident_share(path)?;
    if share < 0.99 {
        bail!(
            "{}: only {:.1} % of the image stays in the page cache after a full read \
             (too little memory for a warm run of this size)",
            path.display(),
            share * 100.0
        );
    }
    Ok(share)
}

/// Puts the image in `state`; returns the resident share measured afterwards.
pub fn prepare(path: &Path, state: SourceCache) -> anyhow::Result<f64> {
    match state {
        SourceCache::Warm => make_warm(path),
        SourceCache::Cold => make_cold(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cold_drops_the_pages_and_warm_brings_them_back() {
        // On the disk file system of the build (a tmpfs /tmp could not drop its pages).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let p = dir.path().join("img");
        let mut f = File::create(&p).unwrap();
        let block: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 3) as u8).collect();
        for _ in 0..16 {
            f.write_all(&block).unwrap();
        }
        drop(f);
        // Just written: resident.
        assert!(resident_share(&p).unwrap() > 0.99);
        assert!(make_cold(&p).unwrap() <= 0.01);
        assert!(resident_share(&p).unwrap() <= 0.01, "really gone");
        assert!(make_warm(&p).unwrap() >= 0.99);
        assert!(resident_share(&p).unwrap() >= 0.99);
        assert_eq!(prepare(&p, SourceCache::Cold).unwrap(), 0.0);
    }
}

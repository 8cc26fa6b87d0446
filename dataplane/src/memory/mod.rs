//! Allocator settings applied once at process start, before any thread exists.
//!
//! DESIGN.md §5 and issue 3 bound every process to 256 MiB RSS. The data path allocates
//! buffers of 1–4 MiB (decompressed extents, the Azure sink's coalesced runs) on many
//! threads. glibc raises its mmap threshold each time such a block is freed (up to 32 MiB),
//! after which these blocks come from the per-thread arenas and the freed space stays in
//! them: the receiver into Azurite peaked at 278 MiB RSS on a 2 GiB image
//! (`bench/azure/bench.py --vdrep-only`). A fixed threshold of 1 MiB keeps large buffers in
//! their own mappings, returned to the kernel on free: 191 MiB in the same run, at the same
//! throughput (`bench/README.md`, "Peak RSS"). Capping the arenas at 2 as well gave 188 MiB,
//! within the noise, so the arena count is left to glibc.
//!
//! Fixing the mmap threshold also stops glibc from raising the trim threshold with it (to
//! twice the mmap threshold): left at 128 KiB, the heaps were shrunk and regrown all the
//! time, and loopback replication lost ~17 % of its MB/s. A 16 MiB trim threshold gives the
//! throughput back (base 450, 1 MiB alone 335, both 440 MB/s) and the Azure peak stays
//! at 174 MiB.

pub mod pool;

pub use pool::PooledBuf;

/// Blocks of this size or more are mapped on their own and unmapped on free.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Free space at the top of a heap kept for reuse rather than returned to the kernel.
pub const TRIM_THRESHOLD: usize = 16 << 20;

/// Applies the settings above; a no-op outside glibc (musl and others do not grow a
/// threshold). Returns whether glibc accepted them.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters and takes glibc's own locks;
        // `cli::main` calls it first, before any buffer is allocated.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_fixed_mmap_and_trim_thresholds() {
        assert!(tune_allocator());
    }
}

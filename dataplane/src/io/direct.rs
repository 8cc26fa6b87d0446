//! O_DIRECT support: aligned memory, opening files uncached, and evicting a file from the page
//! cache so that benchmarks and tests can measure cold reads without dropping every cache on the
//! machine.
//!
//! O_DIRECT needs the buffer address, the file offset and the length aligned to the device's
//! logical block size. [`DIRECT_ALIGN`] (4096) satisfies 512-byte and 4Kn devices alike.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use bytes::{Buf, BytesMut};

/// Alignment used for O_DIRECT addresses, offsets and lengths.
pub const DIRECT_ALIGN: usize = 4096;

/// Reads shorter than this never take O_DIRECT when only cold ranges do
/// (`uring::DirectMode::WhenCold`): image metadata (headers, allocation tables, bitmaps) is
/// small, read more than once, and worth caching.
pub const COLD_DIRECT_MIN: usize = 128 << 10;

/// True if a read of `buf` at `offset` can go to an O_DIRECT descriptor without a bounce buffer.
pub fn is_direct_aligned(buf: &[u8], offset: u64) -> bool {
    const MASK: usize = DIRECT_ALIGN - 1;
    (buf.as_ptr() as usize) & MASK == 0 && buf.len() & MASK == 0 && offset & MASK as u64 == 0
}

/// Opens `path` read-only with O_DIRECT. Fails with `EINVAL` on filesystems without it.
pub fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Drops `file`'s clean pages from the page cache (posix_fadvise DONTNEED), so the next reads
/// come from the device. Only this file is affected, unlike `/proc/sys/vm/drop_caches`, which
/// would slow down everything else on a shared machine.
pub fn evict_cached_pages(file: &File) -> io::Result<()> {
    file.sync_all()?;
    // SAFETY: fadvise on a valid fd has no memory-safety preconditions.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A zeroed heap buffer aligned to [`DIRECT_ALIGN`]: the bounce buffer of O_DIRECT reads.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (at least one alignment unit is reserved).
    pub fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        let size = len.max(1).next_multiple_of(DIRECT_ALIGN);
        Layout::from_size_align(size, DIRECT_ALIGN).expect("aligned layout of a sane size")
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// A zeroed `BytesMut` of `len` bytes whose start is [`DIRECT_ALIGN`]-aligned: the allocation
/// path that lets an O_DIRECT read land in a pipeline buffer without a bounce copy. It costs
/// one alignment unit of slack per buffer.
pub fn aligned_bytes_mut(len: usize) -> BytesMut {
    let mut b = BytesMut::zeroed(len + DIRECT_ALIGN);
    let pad = b.as_ptr().align_offset(DIRECT_ALIGN);
    b.advance(pad);
    b.truncate(len);
    b
}

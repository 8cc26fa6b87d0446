//! io_uring backend on the maintained `io-uring` crate.
//!
//! [`ReadAt::read_exact_at`] is a blocking call made concurrently by the pipeline's CPU threads,
//! so each thread owns one ring (a thread-local, created on first use) and submits and waits on
//! it synchronously. What io_uring buys over pread is depth without threads: one call is split
//! into pieces of [`UringOptions::piece`] bytes of which up to [`UringOptions::depth`] are in
//! flight at once, so a single 1 MiB read is served by the device in parallel.
//!
//! Soundness rule: the kernel writes into the caller's buffer asynchronously, so no call returns
//! (by value, error or unwinding) while a request is in flight. Failed pieces stop new
//! submissions and the call drains what is in flight before it reports. If the ring itself
//! fails with requests in flight, which a valid ring never does, the process aborts rather than
//! return a buffer the kernel may still write.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};

use io_uring::{opcode, types, IoUring, Probe};

use super::direct::{is_direct_aligned, open_direct, AlignedBuf, COLD_DIRECT_MIN, DIRECT_ALIGN};
use super::pread::seek_data_ranges;
use super::residency::cached_bytes;
use super::ReadAt;
use vdrep_proto::RangeSet;

/// Entries of each thread's ring: the largest depth a call may use.
pub const MAX_DEPTH: u32 = 64;

/// Bounce buffer of O_DIRECT reads whose buffer, offset or length is not aligned: 1 MiB of
/// payload plus one alignment unit, so a 1 MiB read at an unaligned address takes one window.
const BOUNCE_LEN: usize = (1 << 20) + DIRECT_ALIGN;

/// Whether an [`UringFile`] reads through the page cache or around it (O_DIRECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectMode {
    /// Every read through the page cache.
    Off,
    /// Every read with O_DIRECT.
    Always,
    /// Reads of at least [`COLD_DIRECT_MIN`] bytes of which less than half is in the page
    /// cache (cachestat(2)) with O_DIRECT, the others through the page cache. A cold source
    /// is read once: filling the page cache with it costs the CPU to allocate, charge and
    /// later reclaim every page and to copy it out, on the cores the pipeline needs; a range
    /// that is cached already is cheaper to copy than to read again. See [`super`].
    WhenCold,
}

/// Bytes of each of the three samples [`UringFile`] asks cachestat(2) about per large read.
pub const COLD_PROBE: u64 = 32 << 10;

/// The samples of a read of `len` (at least [`COLD_DIRECT_MIN`]) bytes at `offset` whose
/// residency decides how it is read: its first, middle and last [`COLD_PROBE`] bytes.
/// Readahead and eviction work on runs of pages, so the three agree with the whole range
/// except where a run starts or ends inside it.
pub fn cold_probes(offset: u64, len: u64) -> [(u64, u64); 3] {
    const _: () = assert!(COLD_DIRECT_MIN as u64 >= 3 * COLD_PROBE);
    debug_assert!(len >= 3 * COLD_PROBE);
    let mid = offset + len / 2 - COLD_PROBE / 2;
    [
        (offset, COLD_PROBE),
        (mid, COLD_PROBE),
        (offset + len - COLD_PROBE, COLD_PROBE),
    ]
}

/// How an [`UringFile`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringOptions {
    /// Pieces of one call in flight at once (1..=[`MAX_DEPTH`]).
    pub depth: u32,
    /// Bytes per piece; rounded up to [`DIRECT_ALIGN`].
    pub piece: usize,
    /// Page cache or O_DIRECT. Reads go through the page cache where the filesystem refuses
    /// O_DIRECT, and in [`DirectMode::WhenCold`] where the kernel has no cachestat(2).
    pub direct: DirectMode,
}

impl Default for UringOptions {
    /// Cached reads, 4 pieces of 256 KiB: a 1 MiB pipeline read goes out as one batch. See the
    /// module docs of `io` for the measurements behind these numbers.
    fn default() -> Self {
        UringOptions {
            depth: 4,
            piece: 256 << 10,
            direct: DirectMode::Off,
        }
    }
}

impl UringOptions {
    fn depth(&self) -> usize {
        self.depth.clamp(1, MAX_DEPTH) as usize
    }
    fn piece(&self) -> usize {
        self.piece
            .clamp(DIRECT_ALIGN, 1 << 30)
            .next_multiple_of(DIRECT_ALIGN)
    }
}

/// Checks that this process may create a ring and that the kernel supports IORING_OP_READ
/// (Linux 5.6). Fails where io_uring is disabled (`kernel.io_uring_disabled`), filtered by
/// seccomp (container runtimes often do), or too old.
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(2)?;
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p)?;
    if !p.is_supported(opcode::Read::CODE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's io_uring lacks IORING_OP_READ (needs Linux 5.6 or later)",
        ));
    }
    Ok(())
}

/// A file read through io_uring.
#[derive(Debug)]
pub struct UringFile {
    /// Cached descriptor: metadata, SEEK_DATA, and reads unless `direct` is set.
    file: File,
    /// O_DIRECT descriptor when direct mode is on and the filesystem allows it (shared with
    /// read-ahead, [`super::ahead`], which keeps it open while its reads are in flight).
    direct: Option<Arc<File>>,
    path: PathBuf,
    opts: UringOptions,
    /// Which way reads went, and whether cachestat failed once ([`DirectMode::WhenCold`]).
    cold: ColdReads,
}

/// The choices of [`DirectMode::WhenCold`], counted for tests and the logs.
#[derive(Debug, Default)]
struct ColdReads {
    direct: AtomicU64,
    cached: AtomicU64,
    /// cachestat(2) failed (old kernel, seccomp): every later read goes through the cache.
    unsupported: AtomicBool,
}

impl UringFile {
    /// Opens `path` read-only with [`UringOptions::default`].
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_with(path, UringOptions::default())
    }

    /// Opens `path` read-only with `opts`.
    pub fn open_with(path: &Path, opts: UringOptions) -> io::Result<Self> {
        let file = File::open(path)?;
        let direct = if opts.direct != DirectMode::Off {
            match open_direct(path) {
                Ok(f) => Some(Arc::new(f)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(path = %path.display(), "O_DIRECT refused by the filesystem; reading through the page cache");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        Ok(UringFile {
            file,
            direct,
            path: path.to_path_buf(),
            opts,
            cold: ColdReads::default(),
        })
    }

    /// True if reads may bypass the page cache (always, or when cold).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Reads of [`DirectMode::WhenCold`] that went around the page cache and through it.
    pub fn cold_choices(&self) -> (u64, u64) {
        (
            self.cold.direct.load(Ordering::Relaxed),
            self.cold.cached.load(Ordering::Relaxed),
        )
    }

    /// The O_DIRECT descriptor if a read of `[offset, offset + len)` should take it.
    fn direct_for(&self, offset: u64, len: usize) -> Option<&Arc<File>> {
        let direct = self.direct.as_ref()?;
        match self.opts.direct {
            DirectMode::Off => None,
            DirectMode::Always => Some(direct),
            DirectMode::WhenCold => {
                let cold = self.is_cold(offset, len)?;
                let counter = if cold {
                    &self.cold.direct
                } else {
                    &self.cold.cached
                };
                counter.fetch_add(1, Ordering::Relaxed);
                cold.then_some(direct)
            }
        }
    }

    /// Whether less than half of a large range is in the page cache, judged from three
    /// [`COLD_PROBE`]-byte samples of it ([`cold_probes`]); `None` for small ranges and where
    /// cachestat(2) is unavailable (both read through the cache).
    ///
    /// Why samples: cachestat walks every page of the range it is given, ~8 µs per MiB
    /// here, one call per pipeline read; that was 7–10 % of the reader's CPU on a warm
    /// image (`bench/results/ANALYSIS.md`, session 13, C21B). Three 32 KiB samples ask a
    /// tenth of the pages. A wrong guess costs time, never bytes: either way the read
    /// returns the file's contents.
    fn is_cold(&self, offset: u64, len: usize) -> Option<bool> {
        if len < COLD_DIRECT_MIN || self.cold.unsupported.load(Ordering::Relaxed) {
            return None;
        }
        let mut cached = 0;
        for (o, l) in cold_probes(offset, len as u64) {
            match cached_bytes(&self.file, o, l) {
                Ok(c) => cached += c,
                Err(e) => return self.no_cachestat(e),
            }
        }
        Some(cached < 3 * COLD_PROBE / 2)
    }

    /// Records that cachestat(2) failed (once, in the log): reads go through the cache.
    fn no_cachestat(&self, e: io::Error) -> Option<bool> {
        if !self.cold.unsupported.swap(true, Ordering::Relaxed) {
            tracing::debug!(path = %self.path.display(), error = %e,
                "cachestat(2) unavailable; reading through the page cache");
        }
        None
    }

    fn read_with_ring(&self, st: &mut ThreadState, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let (depth, piece) = (self.opts.depth(), self.opts.piece());
        let Some(direct) = self.direct_for(offset, buf.len()) else {
            let ring = st.ring.as_mut().expect("ring created by with_thread_state");
            // SAFETY: buf is valid for writes for the whole call; read_pieces drains.
            let n = unsafe {
                read_pieces(
                    ring,
                    self.file.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                    offset,
                    depth,
                    piece,
                    false,
                )?
            };
            return full_or_eof(n, buf.len());
        };
        let fd = direct.as_raw_fd();
        if is_direct_aligned(buf, offset) {
            let ring = st.ring.as_mut().expect("ring created by with_thread_state");
            // SAFETY: as above.
            let n = unsafe {
                read_pieces(
                    ring,
                    fd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    offset,
                    depth,
                    piece,
                    true,
                )?
            };
            return full_or_eof(n, buf.len());
        }
        // Unaligned: read the aligned cover into the bounce buffer and copy out.
        let ThreadState { ring, bounce, .. } = st;
        let ring = ring.as_mut().expect("ring created by with_thread_state");
        let bounce = bounce.get_or_insert_with(|| AlignedBuf::new(BOUNCE_LEN));
        let align = DIRECT_ALIGN as u64;
        let mut done = 0usize;
        while done < buf.len() {
            let want = offset + done as u64;
            let aligned = want - want % align;
            let skip = (want - aligned) as usize;
            let take = (buf.len() - done).min(BOUNCE_LEN - skip);
            let cover = (skip + take).next_multiple_of(DIRECT_ALIGN);
            // SAFETY: cover <= BOUNCE_LEN bytes of the thread's bounce buffer, drained on return.
            let n = unsafe {
                read_pieces(
                    ring,
                    fd,
                    bounce.as_mut_ptr(),
                    cover,
                    aligned,
                    depth,
                    piece,
                    true,
                )?
            };
            if n < skip + take {
                return Err(eof());
            }
            buf[done..done + take].copy_from_slice(&bounce[skip..skip + take]);
            done += take;
        }
        Ok(())
    }
}

impl ReadAt for UringFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        match with_thread_state(|st| self.read_with_ring(st, buf, offset)) {
            Some(r) => r,
            // No ring on this thread (creation failed or re-entered): pread is always correct.
            None => self.file.read_exact_at(buf, offset),
        }
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
    fn cold_direct(&self, offset: u64, len: usize) -> Option<Arc<File>> {
        match self.opts.direct {
            DirectMode::WhenCold if self.is_cold(offset, len)? => self.direct.clone(),
            _ => None,
        }
    }
    fn backend(&self) -> &'static str {
        match (self.is_direct(), self.opts.direct) {
            (true, DirectMode::WhenCold) => "io_uring+O_DIRECT when cold",
            (true, _) => "io_uring+O_DIRECT",
            (false, _) => "io_uring",
        }
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read passes the end of the file",
    )
}

fn full_or_eof(filled: usize, want: usize) -> io::Result<()> {
    if filled < want {
        Err(eof())
    } else {
        Ok(())
    }
}

/// One thread's ring and bounce buffer.
#[derive(Default)]
struct ThreadState {
    ring: Option<IoUring>,
    bounce: Option<AlignedBuf>,
    /// Ring creation failed on this thread; do not retry on every read.
    failed: bool,
}

thread_local! {
    static STATE: RefCell<ThreadState> = RefCell::new(ThreadState::default());
}

/// Runs `f` with this thread's ring, creating it on first use. `None` if the ring cannot be
/// created here (memlock limits, seccomp) or the state is already borrowed.
fn with_thread_state<T>(f: impl FnOnce(&mut ThreadState) -> T) -> Option<T> {
    static WARN: Once = Once::new();
    STATE.with(|cell| {
        let mut st = cell.try_borrow_mut().ok()?;
        if st.ring.is_none() {
            if st.failed {
                return None;
            }
            match IoUring::new(MAX_DEPTH) {
                Ok(r) => st.ring = Some(r),
                Err(e) => {
                    st.failed = true;
                    WARN.call_once(|| tracing::warn!(error = %e, "cannot create an io_uring on this thread; using pread here"));
                    return None;
                }
            }
        }
        Some(f(&mut st))
    })
}

/// Reads `len` bytes into `base` from `fd` at `offset`, keeping up to `depth` pieces of at most
/// `piece` bytes in flight and refilling the queue as pieces complete. Short reads are
/// resubmitted for their remainder, EINTR and EAGAIN pieces are retried. Returns how many bytes
/// from the start were filled: `len`, or less where the file ends.
///
/// With `direct`, a short read that leaves an unaligned remainder can only be the end of the
/// file (O_DIRECT would refuse the resubmission), so it is taken as such.
///
/// # Safety
/// `base` must be valid for writes of `len` bytes until the function returns; it returns only
/// once nothing is in flight.
#[allow(clippy::too_many_arguments)]
unsafe fn read_pieces(
    ring: &mut IoUring,
    fd: RawFd,
    base: *mut u8,
    len: usize,
    offset: u64,
    depth: usize,
    piece: usize,
    direct: bool,
) -> io::Result<usize> {
    let mut slots = [(0usize, 0usize); MAX_DEPTH as usize];
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut retry: Vec<(usize, usize)> = Vec::new();
    let mut next = 0usize;
    let mut inflight = 0usize;
    let mut end = len; // lowest offset known to be at or past end of file
    let mut err: Option<io::Error> = None;
    loop {
        while err.is_none() && !free.is_empty() {
            let (start, n) = if let Some(r) = retry.pop() {
                r
            } else if next < end {
                let n = piece.min(end - next);
                next += n;
                (next - n, n)
            } else {
                break;
            };
            let slot = free.pop().expect("checked non-empty");
            slots[slot] = (start, n);
            let sqe = opcode::Read::new(types::Fd(fd), base.add(start), n as u32)
                .offset(offset + start as u64)
                .build()
                .user_data(slot as u64);
            // SAFETY: the buffer outlives the request (see the function's contract).
            if ring.submission().push(&sqe).is_err() {
                free.push(slot);
                retry.push((start, n));
                break;
            }
            inflight += 1;
        }
        if inflight == 0 {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
                _ => {
                    eprintln!("vdrep: io_uring failed with reads in flight ({e}); aborting to keep memory safe");
                    std::process::abort();
                }
            }
        }
        for cqe in ring.completion() {
            let slot = cqe.user_data() as usize;
            let (start, n) = slots[slot];
            free.push(slot);
            inflight -= 1;
            let res = cqe.result();
            if res < 0 {
                match -res {
                    libc::EINTR | libc::EAGAIN => retry.push((start, n)),
                    e => {
                        err.get_or_insert(io::Error::from_raw_os_error(e));
                    }
                }
            } else if res == 0 {
                end = end.min(start);
            } else if (res as usize) < n {
                let got = res as usize;
                let rest = start + got;
                if direct && (offset + rest as u64) & (DIRECT_ALIGN as u64 - 1) != 0 {
                    end = end.min(rest);
                } else {
                    retry.push((rest, n - got));
                }
            }
        }
        // Retries past a known end of file are pointless; their bytes are not filled.
        retry.retain(|&(s, _)| s < end);
    }
    match err {
        Some(e) => Err(e),
        None => Ok(end),
    }
}

//! Positional file reads behind one small trait, so that the disk readers do not care whether
//! bytes come from pread, io_uring or a test backend that injects faults.
//!
//! # Backends and how one is chosen
//! - [`PreadFile`]: pread(2), portable.
//! - [`uring::UringFile`]: io_uring on the maintained `io-uring` crate, one ring per thread,
//!   each call split into pieces kept in flight together; optionally O_DIRECT.
//! - [`fault::FaultyReadAt`]: wraps any backend and fails or corrupts chosen reads, for tests.
//! - `uring-cold-direct` ([`uring::DirectMode::WhenCold`], `auto`'s choice): io_uring, each read
//!   of 128 KiB or more with O_DIRECT when cachestat(2) says less than half of its range is in
//!   the page cache, through the page cache otherwise; the sender's read-ahead stage
//!   (`pipeline::readahead`, [`ahead::DirectQueue`]) then reads cold raw images 32 MiB ahead.
//!   A VM disk on a hypervisor is cold, and its host's CPUs belong to the guests: on the quiet
//!   machine's 8 GiB cold copy (bench/results/replicate-unlimited-cold{,-direct}-s11.md) it
//!   cut the sender's CPU from 1.15 to 0.99 CPU-s per GiB (no page cache to fill, charge,
//!   reclaim and copy out of) at the same speed; a warm range still takes the page cache.
//!
//! [`open`] picks the backend at run time: `VDREP_IO=pread|uring|uring-direct|uring-cold-direct`
//! forces one (an unknown value, or `uring` where the kernel refuses io_uring, is an error
//! rather than a silent substitute); unset or `auto` takes `uring-cold-direct` if a probe ring
//! can be created (kernel allows it, no seccomp filter) and pread otherwise. The choice is logged once per process.
//!
//! # Why `io-uring` and not tokio-uring
//! The reads are issued from the pipeline's CPU threads, which are plain threads doing blocking
//! calls; tokio-uring would need its own runtime on each of them, and it has had no release since
//! 2024. The `io-uring` crate is maintained, is all we need for synchronous submit-and-wait, and
//! adds no runtime.
//!
//! # Which is faster (bench/results/io_backends.md, `cargo run --release -p vdrep-bench --bin io_backends`)
//! No backend wins on raw speed on the project's machine (2 shared cores, virtio disk), so
//! `auto` takes io_uring as the design asks, at no measurable cost; O_DIRECT always
//! (`uring-direct`) stays opt-in, O_DIRECT for cold ranges only is the default for its CPU:
//! - As the pipeline uses it (2 threads × 1 MiB reads): cold io_uring 3.15 GB/s vs pread 2.91
//!   (+8 %), cached 10.2 vs 10.0 (+2.5 %), both inside the run-to-run spread: a tie.
//! - O_DIRECT runs at 1.1–1.3 GB/s at every depth (1–32) and size (64 KiB–1 MiB), for pread and
//!   io_uring alike, while page-cache reads with the device's 8 MiB readahead reach 3–3.8 GB/s
//!   cold; so the design's case for io_uring, cold O_DIRECT at depth, does not hold on this
//!   device (it may on a local NVMe: `VDREP_IO=uring-direct`).
//! - Deep queues hurt cached-path io_uring (one thread does every copy; pread threads spread
//!   them over the cores): at depth 16–32 with 1 MiB pieces it loses 2–3×. Hence the default of
//!   4 pieces of 256 KiB per call: a 1 MiB read is one batch, the pipeline's threads do the rest.
//!
//! O_DIRECT needs aligned memory; pipeline buffers (`BytesMut`) are not, so direct mode reads
//! unaligned requests through a per-thread 1 MiB bounce buffer and copies (one memcpy, ~10 GB/s,
//! small next to the device) and reads aligned ones (see [`direct::aligned_bytes_mut`]) in place.

#[cfg(target_os = "linux")]
pub mod ahead;
pub mod direct;
pub mod fault;
mod pread;
pub mod residency;
#[cfg(target_os = "linux")]
pub mod uring;

use std::io;
use std::path::Path;
use std::sync::{Once, OnceLock};

use vdrep_proto::RangeSet;

pub use pread::{seek_data_ranges, PreadFile};

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
    /// The part of `[start, end)` of the file that holds data, for sparse raw and fixed
    /// images. The default says "all of it", which is always correct, only slower.
    fn data_ranges(&self, start: u64, end: u64) -> io::Result<RangeSet> {
        Ok(RangeSet::from_range(start, end))
    }
    /// Which backend serves the reads, for logs and the summary.
    fn backend(&self) -> &'static str {
        "custom"
    }
    /// The O_DIRECT descriptor to read `[offset, offset + len)` ahead of its use with
    /// ([`ahead::DirectQueue`]), if this backend would read that range with O_DIRECT now
    /// (it is large and not in the page cache). The default, `None`, reads it the ordinary
    /// way when it is needed.
    fn cold_direct(&self, _offset: u64, _len: usize) -> Option<std::sync::Arc<std::fs::File>> {
        None
    }
}

impl<R: ReadAt + ?Sized> ReadAt for Box<R> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn path(&self) -> &Path {
        (**self).path()
    }
    fn data_ranges(&self, start: u64, end: u64) -> io::Result<RangeSet> {
        (**self).data_ranges(start, end)
    }
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn cold_direct(&self, offset: u64, len: usize) -> Option<std::sync::Arc<std::fs::File>> {
        (**self).cold_direct(offset, len)
    }
}

/// The environment variable that overrides the backend choice.
pub const IO_ENV: &str = "VDREP_IO";

/// A read backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// pread(2) through the page cache.
    Pread,
    /// io_uring through the page cache.
    Uring,
    /// io_uring with O_DIRECT (uncached; bounce buffer for unaligned reads).
    UringDirect,
    /// io_uring, each large read with O_DIRECT if its range is not in the page cache and
    /// through the page cache if it is ([`uring::DirectMode::WhenCold`]).
    UringColdDirect,
}

impl Backend {
    /// Parses a `VDREP_IO` value; `None` means "choose automatically".
    pub fn parse(value: &str) -> io::Result<Option<Backend>> {
        match value.trim() {
            "" | "auto" => Ok(None),
            "pread" => Ok(Some(Backend::Pread)),
            "uring" | "io_uring" => Ok(Some(Backend::Uring)),
            "uring-direct" => Ok(Some(Backend::UringDirect)),
            "uring-cold-direct" => Ok(Some(Backend::UringColdDirect)),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{IO_ENV}={other:?} is not a read backend; use pread, uring, uring-direct, uring-cold-direct or auto"),
            )),
        }
    }

    /// The backend `auto` picks when io_uring is available: cold ranges with O_DIRECT, warm
    /// ones through the page cache (see the module docs for the figures).
    pub const AUTO_WITH_URING: Backend = Backend::UringColdDirect;
}

/// Decides the backend from an explicit request and the probe's verdict.
pub fn choose(requested: Option<Backend>, uring: Result<(), &str>) -> io::Result<Backend> {
    match (requested, uring) {
        (Some(Backend::Pread), _) => Ok(Backend::Pread),
        (Some(b), Ok(())) => Ok(b),
        (Some(_), Err(why)) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{IO_ENV} asks for io_uring but this kernel refuses it ({why}); set {IO_ENV}=pread or auto"),
        )),
        (None, Ok(())) => Ok(Backend::AUTO_WITH_URING),
        (None, Err(_)) => Ok(Backend::Pread),
    }
}

/// The probe's verdict, computed once per process.
pub fn uring_status() -> Result<(), &'static str> {
    static STATUS: OnceLock<Result<(), String>> = OnceLock::new();
    let status = STATUS.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            uring::probe().map_err(|e| e.to_string())
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err("io_uring is Linux-only".to_string())
        }
    });
    status.as_ref().map(|_| ()).map_err(|s| s.as_str())
}

/// The backend [`open`] uses now: `VDREP_IO` if set, else the automatic choice.
pub fn selected_backend() -> io::Result<Backend> {
    let requested = match std::env::var(IO_ENV) {
        Ok(v) => Backend::parse(&v)?,
        Err(std::env::VarError::NotPresent) => None,
        Err(e) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{IO_ENV}: {e}"),
            ));
        }
    };
    choose(requested, uring_status())
}

/// Opens a file with the backend chosen for this host (see the module docs).
pub fn open(path: &Path) -> io::Result<Box<dyn ReadAt>> {
    // Debug level: commands like `inspect` print exactly one line on stderr when they fail;
    // `RUST_LOG=vdrep::io=debug` shows the choice, and `ReadAt::backend` names it.
    static LOGGED: Once = Once::new();
    let backend = selected_backend()?;
    LOGGED.call_once(|| match uring_status() {
        Ok(()) => tracing::debug!(backend = ?backend, "disk read backend"),
        Err(why) => tracing::debug!(backend = ?backend, io_uring = why, "disk read backend"),
    });
    open_with(path, backend)
}

/// Opens a file with a given backend.
pub fn open_with(path: &Path, backend: Backend) -> io::Result<Box<dyn ReadAt>> {
    match backend {
        Backend::Pread => Ok(Box::new(PreadFile::open(path)?)),
        #[cfg(target_os = "linux")]
        Backend::Uring | Backend::UringDirect | Backend::UringColdDirect => {
            let direct = match backend {
                Backend::UringDirect => uring::DirectMode::Always,
                Backend::UringColdDirect => uring::DirectMode::WhenCold,
                _ => uring::DirectMode::Off,
            };
            let opts = uring::UringOptions {
                direct,
                ..Default::default()
            };
            Ok(Box::new(uring::UringFile::open_with(path, opts)?))
        }
        #[cfg(not(target_os = "linux"))]
        _ => Ok(Box::new(PreadFile::open(path)?)),
    }
}

#[cfg(test)]
mod tests;

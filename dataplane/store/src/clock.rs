//! The host's clocks, read in one place for every crate from the stores up: the store reads
//! them here and `vdrep`'s clock (`vdrep::clock`) re-exports these readers, adding only
//! tokio's monotonic time (which the store, having no async runtime, never needs) and the
//! test-offset wall clock built on top of them. Nothing else under `proto/` and `dataplane/`
//! calls `SystemTime::now` or `Instant::now` (`dataplane/tests/layers.rs` checks, and that
//! `vdrep::clock` re-exports every reader here). Why a file here at all: see `vdrep::clock`
//! ("One clock, two files") — this crate cannot import `vdrep` and has no tokio.

use std::time::SystemTime;

/// The host's wall-clock time, without the test offset: timestamps written into files and
/// images, HTTP dates, token expiry.
pub fn system_time() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch on the host's clock (0 before 1970).
pub fn unix_secs() -> u64 {
    system_time()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch on the host's clock (0 before 1970).
pub fn unix_millis() -> u64 {
    system_time()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Monotonic time for blocking code and threads (std's): elapsed-time measurements and
/// deadlines that must hold in real time even inside a paused-time test.
pub fn std_now() -> std::time::Instant {
    std::time::Instant::now()
}

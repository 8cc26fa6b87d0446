//! The receiver's resource limits (issue 16): a receiver in Azure serves many hosts, and no
//! sequence of frames from any number of authorised senders may take its memory past
//! 256 MiB (DESIGN §5).
//!
//! - **Connections**: at most `--max-connections` authorised connections at once. One more is
//!   closed with [`crate::transport::close::BUSY`] and a reason naming the limit; the sender
//!   retries on its schedule (a full receiver is not the sender's fault: receivers scale out).
//! - **QUIC receive windows**: each connection's window is granted when it is accepted, from
//!   what is free of [`WINDOW_BUDGET`] then, keeping the least window for every connection
//!   that may still come ([`super::windows`], "The rule"): a lone sender gets a large window,
//!   many senders share the budget, and all windows together never exceed it.
//! - **Frames being handled** (read off a stream, then verified and written) share
//!   [`FRAME_BUDGET`], and one connection holds at most [`CONNECTION_FRAME_BUDGET`] of it: a
//!   stream reads a frame's body only once it holds permits for it from both. Waiting leaves
//!   the bytes in QUIC, whose flow control then holds the peer back: streams are never
//!   refused, only slowed. Both queues are first come, first served, and the per-connection
//!   share keeps one peer that starts frames and never finishes them (slowloris) from
//!   holding the whole budget: it takes [`FRAME_BUDGET`] / [`CONNECTION_FRAME_BUDGET`] such
//!   connections to stall the others. So a frame's body must also arrive by its deadline,
//!   [`body_deadline`] from when its permits were granted ([`BODY_GRACE`] plus its length at
//!   [`MIN_BODY_RATE`]), whenever frames wait for the budget: a peer that trickles bodies
//!   while others wait is closed with [`crate::transport::close::SLOW_FRAME`] (counted as
//!   `slow_frame` in `vdrep_refusals_total`), and its permits go to the frames waiting
//!   behind it. A slow frame nobody waits behind (a lone sender on a slow link) is left
//!   alone.
//! - **Streams** (QUIC stream credit): a connection may have at most
//!   [`TransportLimits::max_streams`] data streams open, each with a receive window of
//!   [`TransportLimits::stream_window`], and their product is at most the connection's
//!   window. This is what keeps the frame budget from deadlocking QUIC: bytes QUIC holds
//!   for a stream nobody reads (one waiting for permits, or for its write) still count
//!   against the *connection's* window. Were the stream windows of all open streams larger
//!   than it, the streams waiting for permits could fill it, and the few streams holding
//!   permits would never receive the rest of their bodies: nothing would move again (32
//!   streams sending 4 MiB extents at once did exactly that, `tests/tests/stream_flow.rs`).
//!   With `streams × stream window ≤ connection window` the connection's window never runs
//!   out before a stream's own does, so a stream holding permits always gets its bytes.
//!   More streams than that wait in the sender's `open_bi` (QUIC flow control, not a
//!   refusal) until one ends (a sender's batch ends early while streams wait for credit,
//!   `sender/credit.rs`, or streams holding credit could wait for extents the waiting
//!   ones hold). Control streams (one per VM, request and answer) get credit
//!   of their own on top, up to the connection's disk limit, so that many VMs on
//!   one connection cannot take all the credit and starve their own data streams. A stream
//!   reads about one stream window per round trip, so a connection's throughput is about
//!   the streams reading at once × [`TransportLimits::stream_window`] / RTT: larger
//!   windows get fewer, larger streams ([`super::windows`], "Streams").
//! - **Writes** (decompression, hashing, the store write, on blocking threads) run at most
//!   [`APPLY_SLOTS`] at once; each holds a 4 MiB decompression buffer while it runs (from
//!   `memory::pool`, which keeps at most `memory::pool::MAX_IDLE` of them idle), so what an
//!   extent decompresses to is bounded here, not by the frame budget. A write decompresses
//!   only once its sink has room for the bytes (`ReplicaDisk::room`): into Azure, writes
//!   waiting for the Put Pages wait with their compressed frames.
//! - **Answers**: the receiver's QUIC send window is [`SEND_WINDOW`] per connection (it only
//!   sends answers and batch results), so a peer that never reads them holds little.
//!
//! Peak memory is then about (the windows granted at accept never sum past their budget,
//! `receiver/windows.rs`): the binary and its runtime (~30 MiB) + [`WINDOW_BUDGET`] +
//! [`FRAME_BUDGET`] + [`APPLY_SLOTS`] × 4 MiB + [`MAX_CONNECTIONS`] × [`SEND_WINDOW`]
//! ≈ 30 + 64 + 64 + 32 + 16 = 206 MiB, under the 256 MiB bound, whatever the peers send
//! (the hostile-peer harness measures it: `tests/tests/hostile.rs`).

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use super::windows::{
    TransportLimits, WindowGrant, WindowPool, MIN_CONNECTION_WINDOW, MIN_STREAM_WINDOW,
    WINDOW_BUDGET,
};

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// Most `--max-connections` the budgets allow (each connection keeps at least
/// [`MIN_CONNECTION_WINDOW`] of [`WINDOW_BUDGET`]).
pub const MAX_CONNECTIONS: usize = (WINDOW_BUDGET / MIN_CONNECTION_WINDOW) as usize;
/// Bytes of frames being read and written at once, over all streams of all connections.
pub const FRAME_BUDGET: usize = 64 << 20;
/// The part of [`FRAME_BUDGET`] one connection may hold: four extents of 4 MiB.
pub const CONNECTION_FRAME_BUDGET: usize = (16 << 20) + 4096;
/// The least rate at which a frame's body must arrive once it holds its permits (while
/// other frames wait for the budget). An honest sender at the least `--bandwidth`
/// (512 Kbit/s) writes one frame per thread at once: on the default 4 threads each gets
/// ~16 KiB/s, on 32 threads ~2 KiB/s while the other streams fill their windows and
/// ~16 KiB/s after (the receiver reads at most 4 frames of a connection at once), so a
/// 4 MiB frame takes ~640 s at worst, within its deadline (1,054 s).
pub const MIN_BODY_RATE: u64 = 4 << 10;
/// The time any frame body has beyond its length at [`MIN_BODY_RATE`] (a round trip, a
/// congestion window's start, a lost packet's recovery).
pub const BODY_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// How often a frame past its deadline, which nobody waited behind, looks again.
pub const BODY_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a body of `len` bytes may take to arrive once its permits are held:
/// [`BODY_GRACE`] + `len` / [`MIN_BODY_RATE`] (4 MiB: 1,054 s), unless the test hook
/// [`super::test_hook::BODY_DEADLINE_ENV`] sets it.
pub fn body_deadline(len: u32) -> std::time::Duration {
    super::test_hook::body_deadline().unwrap_or(
        BODY_GRACE + std::time::Duration::from_millis(u64::from(len) * 1000 / MIN_BODY_RATE),
    )
}

/// Extent writes (decompress, hash, store) running at once on blocking threads.
pub const APPLY_SLOTS: usize = 8;
/// The receiver's QUIC send window per connection: it sends answers only.
pub const SEND_WINDOW: u64 = 256 << 10;
/// Connection admission and the shared budgets of one receiver.
pub struct Limits {
    max_connections: usize,
    admitted: Mutex<usize>,
    frames: Arc<Semaphore>,
    /// Frames waiting for [`FRAME_BUDGET`] now (not for their connection's share).
    frames_waiting: std::sync::atomic::AtomicUsize,
    applies: Arc<Semaphore>,
    windows: WindowPool,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("receiver busy: it serves {limit} connections, its limit (--max-connections); retry later")]
pub struct Busy {
    /// The limit.
    pub limit: usize,
}

/// An admitted connection; dropping it frees its place.
pub struct Admission<'a> {
    limits: &'a Limits,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Ok(mut n) = self.limits.admitted.lock() {
            *n = n.saturating_sub(1);
        }
    }
}

impl Limits {
    /// Limits for at most `max_connections` connections (clamped to 1..=[`MAX_CONNECTIONS`]).
    pub fn new(max_connections: usize) -> Self {
        Limits {
            max_connections: max_connections.clamp(1, MAX_CONNECTIONS),
            admitted: Mutex::new(0),
            frames: Arc::new(Semaphore::new(FRAME_BUDGET)),
            frames_waiting: Default::default(),
            applies: Arc::new(Semaphore::new(APPLY_SLOTS)),
            windows: WindowPool::new(max_connections.clamp(1, MAX_CONNECTIONS)),
        }
    }

    /// The connection limit.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The window of a connection being accepted (see [`super::windows`]); `None` when
    /// `max_connections` connections hold windows: that one is to be closed as busy.
    pub fn grant_window(&self) -> Option<WindowGrant> {
        self.windows.grant()
    }

    /// Bytes of receive windows granted now, and to how many connections.
    pub fn windows_granted(&self) -> (u64, usize) {
        self.windows.granted()
    }

    /// Admits a connection unless the receiver is at its limit.
    pub fn admit(&self) -> Result<Admission<'_>, Busy> {
        let busy = Busy {
            limit: self.max_connections,
        };
        let mut n = self.admitted.lock().map_err(|_| busy.clone())?;
        if *n >= self.max_connections {
            return Err(busy);
        }
        *n += 1;
        Ok(Admission { limits: self })
    }

    /// Connections admitted now.
    pub fn admitted(&self) -> usize {
        self.admitted.lock().map_or(0, |n| *n)
    }

    /// Waits until `bytes` of the frame budget are free and holds them until the permit is
    /// dropped. A request larger than the budget waits for all of it.
    pub async fn frame_permit(&self, bytes: usize) -> OwnedSemaphorePermit {
        acquire(&self.frames, bytes.clamp(1, FRAME_BUDGET)).await
    }

    /// A connection's share of the frame budget (see [`Limits::frame_permits`]).
    pub fn connection_frames(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(CONNECTION_FRAME_BUDGET))
    }

    /// Permits for a frame of `bytes` on a connection whose share is `conn`: the share
    /// first, then the receiver's budget, both held until dropped.
    pub async fn frame_permits(&self, conn: &Arc<Semaphore>, bytes: usize) -> FramePermits {
        let own = acquire(conn, bytes.clamp(1, CONNECTION_FRAME_BUDGET)).await;
        let all = {
            let _waiting = Waiting::new(&self.frames_waiting);
            self.frame_permit(bytes).await
        };
        FramePermits {
            _own: own,
            _all: all,
        }
    }

    /// Whether frames wait for the receiver's frame budget now: a slow body holding
    /// permits is then closed at its deadline ([`body_deadline`]).
    pub fn frames_waiting(&self) -> bool {
        self.frames_waiting
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
    }

    /// Waits for one of the [`APPLY_SLOTS`]; the write runs while the permit is held.
    pub async fn apply_slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(p) = self.applies.clone().acquire_owned().await {
                return p;
            }
        }
    }

    /// Bytes of the frame budget free now (for tests and logs).
    pub fn frame_budget_free(&self) -> usize {
        self.frames.available_permits()
    }
}

/// Counts a frame waiting for the budget while it lives (also when its wait is dropped).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A frame's hold on its connection's share and on the receiver's frame budget.
pub struct FramePermits {
    _own: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

async fn acquire(s: &Arc<Semaphore>, n: usize) -> OwnedSemaphorePermit {
    let n = n.min(u32::MAX as usize) as u32;
    // The semaphores are never closed, so acquiring only fails if one were.
    loop {
        if let Ok(p) = s.clone().acquire_many_owned(n).await {
            return p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_is_clamped_to_what_the_budget_allows() {
        assert_eq!(Limits::new(0).max_connections(), 1);
        assert_eq!(Limits::new(1 << 20).max_connections(), MAX_CONNECTIONS);
        assert_eq!(
            MAX_CONNECTIONS as u64 * MIN_CONNECTION_WINDOW,
            WINDOW_BUDGET
        );
    }

    #[test]
    fn a_receiver_grants_windows_to_as_many_connections_as_it_admits() {
        let l = Limits::new(3);
        let g: Vec<_> = (0..3).map(|_| l.grant_window().unwrap()).collect();
        assert!(l.grant_window().is_none());
        assert!(l.windows_granted().0 <= WINDOW_BUDGET);
        drop(g);
        assert_eq!(l.windows_granted(), (0, 0));
    }

    #[test]
    fn a_body_has_its_grace_and_its_length_at_the_least_rate() {
        assert_eq!(body_deadline(0), BODY_GRACE);
        assert_eq!(
            body_deadline(4 << 20),
            BODY_GRACE + std::time::Duration::from_secs(1024)
        );
    }

    #[test]
    fn admission_stops_at_the_limit_and_a_departure_frees_a_place() {
        let l = Limits::new(2);
        let a = l.admit().unwrap();
        let _b = l.admit().unwrap();
        assert_eq!(l.admit().err(), Some(Busy { limit: 2 }));
        assert_eq!(l.admitted(), 2);
        drop(a);
        assert_eq!(l.admitted(), 1);
        assert!(l.admit().is_ok());
    }

    #[tokio::test]
    async fn frame_permits_hold_the_budget_until_dropped() {
        let l = Limits::new(4);
        let a = l.frame_permit(FRAME_BUDGET - 10).await;
        assert_eq!(l.frame_budget_free(), 10);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), l.frame_permit(11));
        assert!(waiting.await.is_err(), "over the budget: waits");
        drop(a);
        let _b = l.frame_permit(usize::MAX).await;
        assert_eq!(l.frame_budget_free(), 0);
    }

    #[tokio::test]
    async fn one_connection_holds_at_most_its_share() {
        let l = Limits::new(4);
        let (c1, c2) = (l.connection_frames(), l.connection_frames());
        let _a = l.frame_permits(&c1, CONNECTION_FRAME_BUDGET).await;
        let more = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            l.frame_permits(&c1, 1),
        );
        assert!(
            more.await.is_err(),
            "the first connection's share is used up"
        );
        let _b = l.frame_permits(&c2, 4 << 20).await;
        assert_eq!(
            l.frame_budget_free(),
            FRAME_BUDGET - CONNECTION_FRAME_BUDGET - (4 << 20)
        );
    }

    #[tokio::test]
    async fn frames_waiting_for_the_budget_are_counted_while_they_wait() {
        let l = Limits::new(4);
        let held = l.frame_permit(FRAME_BUDGET).await;
        let c = l.connection_frames();
        assert!(!l.frames_waiting());
        {
            let wait = l.frame_permits(&c, 10);
            tokio::pin!(wait);
            let r = tokio::time::timeout(std::time::Duration::from_millis(50), &mut wait);
            assert!(r.await.is_err(), "the budget is held");
            assert!(l.frames_waiting());
        }
        assert!(!l.frames_waiting(), "a wait given up is no longer counted");
        drop(held);
        let _p = l.frame_permits(&c, 10).await;
        assert!(!l.frames_waiting());
    }
}

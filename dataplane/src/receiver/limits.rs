//! The receiver's resource limits (issue 16): a receiver in Azure serves many hosts, and no
//! sequence of frames from any number of authorised senders may take its memory past
//! 256 MiB (DESIGN §5).
//!
//! - **Connections**: at most `--max-connections` authorised connections at once. One more is
//!   closed with [`BUSY_CLOSE_CODE`] and a reason naming the limit; the sender retries on its
//!   schedule (a full receiver is not the sender's fault: receivers scale out).
//! - **QUIC receive windows** share [`WINDOW_BUDGET`]: each connection's window is the budget
//!   divided among the connections admitted (at most [`CONNECTION_WINDOW`], at least
//!   [`MIN_CONNECTION_WINDOW`]), re-set on every admission and departure. A new connection
//!   starts at its share under a full receiver, so the sum stays within the budget.
//! - **Frames being handled** (read off a stream, then verified and written) share
//!   [`FRAME_BUDGET`], and one connection holds at most [`CONNECTION_FRAME_BUDGET`] of it: a
//!   stream reads a frame's body only once it holds permits for it from both. Waiting leaves
//!   the bytes in QUIC, whose flow control then holds the peer back: streams are never
//!   refused, only slowed. Both queues are first come, first served, and the per-connection
//!   share keeps one peer that starts frames and never finishes them (slowloris) from
//!   holding the whole budget: it takes [`FRAME_BUDGET`] / [`CONNECTION_FRAME_BUDGET`] such
//!   connections to stall the others.
//! - **Writes** (decompression, hashing, the store write, on blocking threads) run at most
//!   [`APPLY_SLOTS`] at once; each such thread keeps a 4 MiB decompression buffer, so what
//!   an extent decompresses to is bounded here, not by the frame budget.
//! - **Answers**: the receiver's QUIC send window is [`SEND_WINDOW`] per connection (it only
//!   sends answers and batch results), so a peer that never reads them holds little.
//!
//! Peak memory is then about: the binary and its runtime (~30 MiB) + [`WINDOW_BUDGET`] +
//! [`FRAME_BUDGET`] + [`APPLY_SLOTS`] × 4 MiB + [`MAX_CONNECTIONS`] × [`SEND_WINDOW`]
//! ≈ 30 + 64 + 64 + 32 + 16 = 206 MiB, under the 256 MiB bound, whatever the peers send
//! (the hostile-peer harness measures it: `tests/tests/hostile.rs`).

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::transport::CONNECTION_WINDOW;

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;
/// Most `--max-connections` the budgets allow (each connection keeps at least
/// [`MIN_CONNECTION_WINDOW`] of [`WINDOW_BUDGET`]).
pub const MAX_CONNECTIONS: usize = (WINDOW_BUDGET / MIN_CONNECTION_WINDOW) as usize;
/// The QUIC receive windows of all connections together.
pub const WINDOW_BUDGET: u64 = 64 << 20;
/// The least window of a connection: a 4 MiB extent still streams through it (the reader
/// consumes as it arrives), only with more round trips.
pub const MIN_CONNECTION_WINDOW: u64 = 1 << 20;
/// Bytes of frames being read and written at once, over all streams of all connections.
pub const FRAME_BUDGET: usize = 64 << 20;
/// The part of [`FRAME_BUDGET`] one connection may hold: four extents of 4 MiB.
pub const CONNECTION_FRAME_BUDGET: usize = (16 << 20) + 4096;
/// Extent writes (decompress, hash, store) running at once on blocking threads.
pub const APPLY_SLOTS: usize = 8;
/// The receiver's QUIC send window per connection: it sends answers only.
pub const SEND_WINDOW: u64 = 256 << 10;
/// QUIC application close code of a receiver at its connection limit (1: no usable
/// certificate, 2: unknown sender, 3: replaced by the sender's newer connection).
pub const BUSY_CLOSE_CODE: u32 = 4;

/// The receive window of each of `n` admitted connections.
pub fn connection_window(n: usize) -> u64 {
    (WINDOW_BUDGET / n.max(1) as u64).clamp(MIN_CONNECTION_WINDOW, CONNECTION_WINDOW as u64)
}

/// Connection admission and the shared budgets of one receiver.
pub struct Limits {
    max_connections: usize,
    admitted: Mutex<Vec<quinn::Connection>>,
    frames: Arc<Semaphore>,
    applies: Arc<Semaphore>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("receiver busy: it serves {limit} connections, its limit (--max-connections); retry later")]
pub struct Busy {
    /// The limit.
    pub limit: usize,
}

/// An admitted connection; dropping it gives its share of the budget back.
pub struct Admission<'a> {
    limits: &'a Limits,
    id: usize,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Ok(mut a) = self.limits.admitted.lock() {
            a.retain(|c| c.stable_id() != self.id);
            rebalance(&a);
        }
    }
}

fn rebalance(conns: &[quinn::Connection]) {
    let w = connection_window(conns.len());
    let w = quinn::VarInt::from_u64(w).unwrap_or(quinn::VarInt::MAX);
    for c in conns {
        c.set_receive_window(w);
    }
}

impl Limits {
    /// Limits for at most `max_connections` connections (clamped to 1..=[`MAX_CONNECTIONS`]).
    pub fn new(max_connections: usize) -> Self {
        Limits {
            max_connections: max_connections.clamp(1, MAX_CONNECTIONS),
            admitted: Mutex::new(Vec::new()),
            frames: Arc::new(Semaphore::new(FRAME_BUDGET)),
            applies: Arc::new(Semaphore::new(APPLY_SLOTS)),
        }
    }

    /// The connection limit.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The window a connection starts with: its share under a full receiver.
    pub fn initial_window(&self) -> u64 {
        connection_window(self.max_connections)
    }

    /// Admits `conn` unless the receiver is at its limit; the windows of every admitted
    /// connection follow.
    pub fn admit(&self, conn: &quinn::Connection) -> Result<Admission<'_>, Busy> {
        let mut a = self.admitted.lock().map_err(|_| Busy {
            limit: self.max_connections,
        })?;
        if a.len() >= self.max_connections {
            return Err(Busy {
                limit: self.max_connections,
            });
        }
        a.push(conn.clone());
        rebalance(&a);
        Ok(Admission {
            limits: self,
            id: conn.stable_id(),
        })
    }

    /// Connections admitted now.
    pub fn admitted(&self) -> usize {
        self.admitted.lock().map_or(0, |a| a.len())
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
        let all = self.frame_permit(bytes).await;
        FramePermits {
            _own: own,
            _all: all,
        }
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
    fn windows_share_the_budget_between_the_least_and_the_largest_window() {
        assert_eq!(connection_window(0), CONNECTION_WINDOW as u64);
        assert_eq!(connection_window(1), CONNECTION_WINDOW as u64);
        assert_eq!(connection_window(2), CONNECTION_WINDOW as u64);
        assert_eq!(connection_window(4), 16 << 20);
        assert_eq!(connection_window(16), 4 << 20);
        assert_eq!(connection_window(MAX_CONNECTIONS), MIN_CONNECTION_WINDOW);
        assert_eq!(connection_window(10_000), MIN_CONNECTION_WINDOW);
        for n in 1..=MAX_CONNECTIONS {
            assert!(connection_window(n) * n as u64 <= WINDOW_BUDGET, "{n}");
        }
    }

    #[test]
    fn the_connection_limit_is_clamped_to_what_the_budget_allows() {
        assert_eq!(Limits::new(0).max_connections(), 1);
        assert_eq!(Limits::new(1 << 20).max_connections(), MAX_CONNECTIONS);
        assert_eq!(Limits::new(16).initial_window(), 4 << 20);
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
}

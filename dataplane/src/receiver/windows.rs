//! The receiver's QUIC receive windows, granted per connection when it is accepted (issue
//! 16).
//!
//! All connections' receive windows together stay within [`WINDOW_BUDGET`]. A window is
//! fixed in the handshake's transport parameters (quinn's `Incoming::accept_with` takes a
//! per-connection configuration), so it is chosen at accept time from what is free then:
//!
//! **The rule.** A connection accepted while `open` connections hold windows gets
//! `min(free − reserve, CONNECTION_WINDOW)`, where `free` is the budget not granted and
//! `reserve` is [`MIN_CONNECTION_WINDOW`] for each of the `max_connections − open − 1`
//! connections that may still come. So the first connection of a default receiver gets the
//! full 32 MiB, the second what is left beyond the reserve (18 MiB), and later ones share
//! the rest, each at least [`MIN_CONNECTION_WINDOW`]; a window goes back to the budget
//! when its connection ends. With `max_connections` windows granted a further connection
//! gets none: it completes its handshake with no stream credit and is closed as busy
//! (`transport::close::BUSY`), like any connection over the limit. The sum of granted
//! windows can therefore never exceed the budget (tested below for every order of
//! arrivals and departures a small model allows).
//!
//! **Streams.** A connection's windows are split between its data streams so that their
//! stream windows sum to at most the connection window (`receiver/limits.rs`, "Streams":
//! this keeps the frame budget from deadlocking QUIC). A stream reads about one stream
//! window per round trip, so on a long round trip fewer, larger stream windows carry more:
//! a connection gets `window / TARGET_STREAM_WINDOW` data streams (between [`MIN_STREAMS`]
//! and [`MAX_STREAMS`]). A lone sender's connection thus has 32 streams of 1 MiB (it was
//! 64 streams of 64 KiB, and 4.0–5.6 s instead of 2.5–2.9 s for the BBR WAN copy of
//! `tests/tests/throttle.rs`). Control streams (one per VM) get credit of their own on top,
//! up to the connection's disk limit (`ConnState::control_stream` in `receiver/control.rs`),
//! so a sender with many VMs never spends the data streams' credit on them. Their windows
//! are the data streams' size, but an honest sender has at most one request unread on each
//! (it waits for the answer), so they do not take the data streams' share of the
//! connection window; a peer that pipelines requests on them can stall only its own
//! connection (whose memory its window bounds).

use std::sync::{Arc, Mutex};

use crate::transport::CONNECTION_WINDOW;

/// The QUIC receive windows of all connections together.
pub const WINDOW_BUDGET: u64 = 64 << 20;
/// The least window of a connection: a 4 MiB extent still streams through it (the reader
/// consumes as it arrives), only with more round trips.
pub const MIN_CONNECTION_WINDOW: u64 = 1 << 20;
/// The stream window a connection's data streams get when its window allows: 1 MiB per
/// round trip is 80 Mbit/s per stream at 100 ms, 8 GB/s at 0.125 ms (loopback).
pub const TARGET_STREAM_WINDOW: u64 = 1 << 20;
/// The least data streams of a connection: a VM copying on the default 4 threads keeps up
/// to 12 data streams open (3 per thread) and 1 control stream.
pub const MIN_STREAMS: u64 = 16;
/// The most data streams of a connection.
pub const MAX_STREAMS: u64 = 256;
/// The least receive window of a data stream: 64 KiB. A stream holding permits reads its
/// body at about one stream window per round trip: with 32 KiB one sender thread's streams
/// carried only 170 Mbit/s through the throttle tests' relay where 200 Mbit/s were due
/// (`throttle.rs`, the long matrix); 64 KiB is 500 MiB/s at 0.125 ms (loopback) and
/// 52 Mbit/s at 10 ms, per stream.
pub const MIN_STREAM_WINDOW: u64 = MIN_CONNECTION_WINDOW / MIN_STREAMS;

/// The QUIC bounds of one connection (see the module's "Streams").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    /// The connection's receive window.
    pub window: u64,
    /// Data streams the connection may have open at once (QUIC stream credit; control
    /// streams get more on top, see the module's "Streams").
    pub max_streams: u64,
    /// The receive window of each stream.
    pub stream_window: u64,
}

impl TransportLimits {
    /// The bounds of a connection whose receive window is `window`: `window /`
    /// [`TARGET_STREAM_WINDOW`] streams (at least [`MIN_STREAMS`], at most
    /// [`MAX_STREAMS`]) sharing it equally.
    pub fn for_window(window: u64) -> Self {
        let window = window.max(MIN_CONNECTION_WINDOW);
        let max_streams = (window / TARGET_STREAM_WINDOW).clamp(MIN_STREAMS, MAX_STREAMS);
        TransportLimits {
            window,
            max_streams,
            stream_window: window / max_streams,
        }
    }

    /// The transport bounds of a connection with these limits and `send_window`.
    pub fn server_bounds(&self, send_window: u64) -> crate::transport::ServerBounds {
        crate::transport::ServerBounds {
            receive_window: self.window,
            stream_window: self.stream_window,
            max_streams: self.max_streams,
            send_window,
            max_incoming: 1,
        }
    }

    /// The bounds of a connection over the limit: it gets no stream credit and hardly any
    /// window, and is closed as busy once its handshake is done.
    pub fn refused() -> Self {
        TransportLimits {
            window: 0,
            max_streams: 0,
            stream_window: 0,
        }
    }
}

/// The window of the next connection, or none if `open` connections already hold windows
/// under a limit of `slots` (the module's "The rule").
pub fn next_window(free: u64, open: usize, slots: usize) -> Option<u64> {
    if open >= slots {
        return None;
    }
    let reserve = (slots - open - 1) as u64 * MIN_CONNECTION_WINDOW;
    let w = free.saturating_sub(reserve).min(CONNECTION_WINDOW as u64);
    (w >= MIN_CONNECTION_WINDOW).then_some(w)
}

#[derive(Debug, Default)]
struct Granted {
    bytes: u64,
    connections: usize,
}

/// The windows granted to the connections of one receiver.
#[derive(Debug, Clone)]
pub struct WindowPool {
    slots: usize,
    granted: Arc<Mutex<Granted>>,
}

/// A connection's window, given back to the pool when dropped.
#[derive(Debug)]
pub struct WindowGrant {
    limits: TransportLimits,
    granted: Arc<Mutex<Granted>>,
}

impl WindowGrant {
    /// The connection's QUIC bounds.
    pub fn limits(&self) -> TransportLimits {
        self.limits
    }
}

impl Drop for WindowGrant {
    fn drop(&mut self) {
        if let Ok(mut g) = self.granted.lock() {
            g.bytes = g.bytes.saturating_sub(self.limits.window);
            g.connections = g.connections.saturating_sub(1);
        }
    }
}

impl WindowPool {
    /// A pool of [`WINDOW_BUDGET`] for at most `slots` connections; `slots` ×
    /// [`MIN_CONNECTION_WINDOW`] must fit the budget (`limits::MAX_CONNECTIONS`).
    pub fn new(slots: usize) -> Self {
        WindowPool {
            slots: slots.clamp(1, (WINDOW_BUDGET / MIN_CONNECTION_WINDOW) as usize),
            granted: Arc::new(Mutex::new(Granted::default())),
        }
    }

    /// The window of a connection being accepted, or `None` when `slots` connections hold
    /// windows already (that connection is to be refused as busy).
    pub fn grant(&self) -> Option<WindowGrant> {
        let mut g = self.granted.lock().ok()?;
        let w = next_window(WINDOW_BUDGET - g.bytes, g.connections, self.slots)?;
        g.bytes += w;
        g.connections += 1;
        Some(WindowGrant {
            limits: TransportLimits::for_window(w),
            granted: self.granted.clone(),
        })
    }

    /// Bytes of windows granted now, and to how many connections.
    pub fn granted(&self) -> (u64, usize) {
        self.granted
            .lock()
            .map_or((0, 0), |g| (g.bytes, g.connections))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_first_connections_get_large_windows_and_later_ones_share_the_rest() {
        let pool = WindowPool::new(16);
        let grants: Vec<_> = (0..16).map(|_| pool.grant().unwrap()).collect();
        let w: Vec<u64> = grants.iter().map(|g| g.limits().window / MIB).collect();
        assert_eq!(w, [32, 18, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert!(pool.grant().is_none(), "the 17th connection is refused");
        assert_eq!(pool.granted(), (64 * MIB, 16));
        let first = grants[0].limits();
        assert_eq!((first.max_streams, first.stream_window), (32, MIB));
        drop(grants);
        assert_eq!(pool.granted(), (0, 0), "every window went back");
        let again = pool.grant().unwrap();
        assert_eq!(again.limits().window, 32 * MIB);
    }

    #[test]
    fn a_departure_frees_its_window_for_the_next_connection() {
        let pool = WindowPool::new(4);
        let a = pool.grant().unwrap();
        let b = pool.grant().unwrap();
        assert_eq!((a.limits().window, b.limits().window), (32 * MIB, 30 * MIB));
        drop(a);
        let c = pool.grant().unwrap();
        assert_eq!(c.limits().window, 32 * MIB);
    }

    #[test]
    fn granted_windows_never_exceed_the_budget_in_any_order_of_arrivals_and_departures() {
        // A small deterministic model: for each limit, arrivals and departures in a
        // pseudo-random order; after every step the sum stays within the budget and every
        // connection under the limit got at least the least window.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for slots in [1, 2, 3, 7, 16, 64] {
            let pool = WindowPool::new(slots);
            let mut open = Vec::new();
            for _ in 0..2_000 {
                if next() % 3 != 0 {
                    match pool.grant() {
                        Some(g) => {
                            assert!(g.limits().window >= MIN_CONNECTION_WINDOW);
                            open.push(g);
                        }
                        None => assert_eq!(open.len(), slots, "refused under the limit"),
                    }
                } else if !open.is_empty() {
                    let i = (next() % open.len() as u64) as usize;
                    open.swap_remove(i);
                }
                let sum: u64 = open.iter().map(|g| g.limits().window).sum();
                assert!(sum <= WINDOW_BUDGET, "{slots}: {sum}");
                assert_eq!(pool.granted(), (sum, open.len()));
            }
        }
    }

    #[test]
    fn data_streams_can_never_fill_their_connections_window() {
        // The invariant that keeps the frame budget from deadlocking QUIC (limits.rs).
        for mib in 1..=32 {
            let t = TransportLimits::for_window(mib * MIB);
            assert!(t.max_streams * t.stream_window <= t.window, "{t:?}");
            assert!(t.stream_window >= MIN_STREAM_WINDOW, "{t:?}");
            assert!(t.max_streams >= MIN_STREAMS, "{t:?}");
        }
        let least = TransportLimits::for_window(MIN_CONNECTION_WINDOW);
        assert_eq!((least.max_streams, least.stream_window), (16, 64 << 10));
        let four = TransportLimits::for_window(4 * MIB);
        assert_eq!((four.max_streams, four.stream_window), (16, 256 << 10));
    }
}

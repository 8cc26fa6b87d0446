//! The sender's send window follows its congestion window.
//!
//! quinn buffers up to the connection's send window of stream data that the peer has not
//! acknowledged. A fixed [`CONNECTION_WINDOW`](super::CONNECTION_WINDOW) (32 MiB, for fast,
//! far links) is 2.7 s of data on a 100 Mbit/s link: bytes the compression controller
//! chose a level for seconds before they go out. At the start of a copy those are the
//! first ~100 MB of the disk, compressed at the starting level while the controller was
//! still climbing (measured: 363 MB on the wire per GiB of the bench image against 359 MB
//! when started at the top level). Held near a few congestion windows, the buffer still
//! keeps the link busy (the congestion window is what may be in flight) while the level
//! that compresses an extent is the one the link asked for a fraction of a second ago.

use std::time::Duration;

use super::CONNECTION_WINDOW;

/// The least send window: a 4 MiB extent fits, and so do a few of quinn's initial
/// congestion windows while a connection starts.
pub const MIN_SEND_WINDOW: u64 = 4 << 20;

/// Congestion windows' worth of data buffered. quinn grows the congestion window only while
/// the connection is not application-limited; with 4 there is always more buffered than
/// may be in flight, and as the congestion window grows the next tick raises the send
/// window with it.
const CWND_MULTIPLE: u64 = 4;

/// How often the window is adjusted.
const TICK: Duration = Duration::from_millis(100);

/// The send window for a congestion window of `cwnd` bytes.
pub fn send_window_for(cwnd: u64) -> u64 {
    cwnd.saturating_mul(CWND_MULTIPLE)
        .clamp(MIN_SEND_WINDOW, CONNECTION_WINDOW as u64)
}

/// Keeps a connection's send window at [`send_window_for`] its congestion window while it
/// lives; stops when dropped.
pub struct SendWindowGuard(tokio::task::JoinHandle<()>);

impl SendWindowGuard {
    /// Starts following `conn`'s congestion window.
    pub fn start(conn: &quinn::Connection) -> Self {
        let conn = conn.clone();
        SendWindowGuard(tokio::spawn(async move {
            let mut last = 0;
            while conn.close_reason().is_none() {
                let cwnd = conn.stats().path.cwnd;
                let w = send_window_for(cwnd);
                if w != last {
                    tracing::debug!(
                        cwnd,
                        send_window = w,
                        "send window follows the congestion window"
                    );
                    conn.set_send_window(w);
                    last = w;
                }
                tokio::time::sleep(TICK).await;
            }
        }))
    }
}

impl Drop for SendWindowGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_four_congestion_windows_between_4_mib_and_the_connection_window() {
        assert_eq!(send_window_for(0), MIN_SEND_WINDOW);
        assert_eq!(send_window_for(12_000), MIN_SEND_WINDOW);
        assert_eq!(send_window_for(3 << 20), 12 << 20);
        assert_eq!(send_window_for(64 << 20), CONNECTION_WINDOW as u64);
    }
}

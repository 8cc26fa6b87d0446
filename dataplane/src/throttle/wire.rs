//! The wire meter: feeds a connection's UDP bytes sent (`quinn::ConnectionStats::udp_tx`)
//! into the throttle every 100 ms, so the limit counts bytes on the wire (see the module
//! documentation of `throttle`).

use std::sync::Arc;
use std::time::Duration;

use super::Throttle;

/// How often the meter samples quinn's counters.
pub const SAMPLE: Duration = Duration::from_millis(100);

/// Meters `conn` until it closes (or the task is aborted).
pub async fn meter(conn: quinn::Connection, throttle: Arc<Throttle>) {
    let mut last = 0u64;
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = conn.stats().udp_tx.bytes;
        throttle.record_wire(now.saturating_sub(last));
        last = now;
        if conn.close_reason().is_some() {
            return;
        }
    }
}

/// Aborts the meter task when the attempt that started it ends.
pub struct MeterGuard(tokio::task::JoinHandle<()>);

impl MeterGuard {
    /// Starts metering `conn`.
    pub fn start(conn: &quinn::Connection, throttle: &Arc<Throttle>) -> Self {
        MeterGuard(tokio::spawn(meter(conn.clone(), throttle.clone())))
    }
}

impl Drop for MeterGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

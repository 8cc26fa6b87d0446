//! Bandwidth limits: one token bucket shared by every stream and VM of the host.
//!
//! The bucket holds at most `burst` bytes of credit and refills at `rate` bytes per second;
//! a sender waits for credit before it hands a piece of a frame to QUIC. A rate of `None` is
//! no limit. The rate can change at any time (`set_rate`), taking effect on the next piece,
//! so a policy change or a work-hour boundary never restarts a transfer; [`BandwidthControl`]
//! sets it from the host's [`BandwidthPolicy`] (work hours, KB3056159).
//!
//! **The limit counts bytes on the wire**: UDP payload, so QUIC packet headers, AEAD tags,
//! STREAM frame headers, ACK-carrying packets and retransmissions included. A frame's bytes
//! are known when it is queued, its wire bytes only once quinn has sent them, so the bucket
//! charges `frame bytes × overhead` at [`Throttle::acquire`] and a meter ([`wire`]) reads
//! quinn's `udp_tx.bytes` every 100 ms: the overhead factor follows the measured ratio, and
//! any wire bytes not yet charged (a burst of retransmissions, control traffic) are charged
//! as debt at once. What is charged is therefore never less than what went on the wire, and
//! the limit holds on wire bytes, not on payload.
//!
//! Frames are paced in pieces of about 20 ms of the rate (16..64 KiB, [`Throttle::piece`]),
//! so no 1 MiB frame leaves in one burst at a low rate: any window of T seconds carries at
//! most `rate × T` plus one piece and the 20 ms burst.

mod control;
mod rate;
mod schedule;
pub mod wire;

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub use control::BandwidthControl;
pub use rate::{parse_rate, Rate};
pub use schedule::{
    resync_allowed_now, BandwidthPolicy, PolicyError, PolicySpec, WorkSchedule, MAX_RATE, MIN_RATE,
};

/// A shared token bucket.
#[derive(Debug)]
pub struct Throttle {
    inner: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    rate: Option<u64>,
    tokens: f64,
    last: Instant,
    /// Wire bytes per frame byte, as last measured.
    overhead: f64,
    /// Everything charged so far (frame bytes × overhead, plus wire debt).
    charged: f64,
    /// Frame bytes acquired so far.
    payload: u64,
    /// Frame bytes at the last meter sample.
    payload_sampled: u64,
    /// Wire bytes the meters reported so far.
    wire: u64,
}

/// Credit a bucket may bank: 20 ms of the rate (at least one piece), so bursts stay short
/// against any 1-second window.
fn burst(rate: u64) -> f64 {
    ((rate as f64) * 0.02).max(piece_for(Some(rate)) as f64)
}

/// The pacing unit: 20 ms of the rate, within 16..64 KiB.
fn piece_for(rate: Option<u64>) -> usize {
    match rate {
        None => usize::MAX,
        Some(r) => ((r / 50) as usize).clamp(16 << 10, 64 << 10),
    }
}

impl Throttle {
    /// A bucket at `rate` bytes per second (`None`: unlimited).
    pub fn new(rate: Option<u64>) -> Self {
        Throttle {
            inner: Mutex::new(Bucket {
                rate,
                tokens: 0.0,
                last: Instant::now(),
                overhead: 1.0,
                charged: 0.0,
                payload: 0,
                payload_sampled: 0,
                wire: 0,
            }),
        }
    }

    /// Changes the rate; waiting senders see it at their next check.
    pub fn set_rate(&self, rate: Option<u64>) {
        if let Ok(mut b) = self.inner.lock() {
            b.refill();
            b.rate = rate;
            if let Some(r) = rate {
                b.tokens = b.tokens.min(burst(r));
            }
        }
    }

    /// The current rate.
    pub fn rate(&self) -> Option<u64> {
        self.inner.lock().ok().and_then(|b| b.rate)
    }

    /// The largest piece to acquire and write at once at the current rate.
    pub fn piece(&self) -> usize {
        piece_for(self.rate())
    }

    /// Bytes the wire meters reported so far (UDP payload), the unit of the limit: the
    /// throttle's rate metric is their rate, so rate and limit compare like with like.
    pub fn wire_bytes(&self) -> u64 {
        self.inner.lock().map(|b| b.wire).unwrap_or(0)
    }

    /// The overhead factor in use (wire bytes per frame byte).
    pub fn overhead(&self) -> f64 {
        self.inner.lock().map(|b| b.overhead).unwrap_or(1.0)
    }

    /// Reports `wire` more bytes sent on the wire (UDP payload) since the last report: they
    /// correct the overhead estimate, and whatever the bucket has not charged yet is charged
    /// now as debt.
    pub fn record_wire(&self, wire: u64) {
        let Ok(mut b) = self.inner.lock() else { return };
        b.refill();
        b.wire += wire;
        let frames = b.payload - b.payload_sampled;
        // Only samples with real traffic say something about the ratio; a tick in which
        // quinn drained what was queued earlier reads high, the next one low: smooth.
        if frames >= 16 << 10 && wire > 0 {
            let ratio = (wire as f64 / frames as f64).clamp(1.0, 1.5);
            b.overhead = 0.8 * b.overhead + 0.2 * ratio;
            b.payload_sampled = b.payload;
        } else if frames == 0 {
            b.payload_sampled = b.payload;
        }
        let debt = b.wire as f64 - b.charged;
        if debt > 0.0 {
            b.charged += debt;
            if b.rate.is_some() {
                b.tokens -= debt;
            }
        }
    }

    /// Waits until `bytes` (frame bytes) may be sent, then takes them at the wire overhead.
    pub async fn acquire(&self, bytes: u64) {
        loop {
            let wait = {
                let Ok(mut b) = self.inner.lock() else { return };
                b.refill();
                let Some(rate) = b.rate else {
                    b.account(bytes);
                    return;
                };
                if b.tokens >= 0.0 {
                    // Take now and go into debt: a piece passes at once, the debt delays
                    // the next ones, and the average holds.
                    let cost = b.account(bytes);
                    b.tokens -= cost;
                    return;
                }
                // At least 1 ms: a debt of a rounding error must not spin on zero sleeps.
                Duration::from_secs_f64((-b.tokens / rate.max(1) as f64).clamp(0.001, 0.25))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Bucket {
    /// Counts `bytes` frame bytes as sent; returns what they cost on the wire.
    fn account(&mut self, bytes: u64) -> f64 {
        let cost = bytes as f64 * self.overhead;
        self.payload += bytes;
        self.charged += cost;
        cost
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        if let Some(r) = self.rate {
            self.tokens = (self.tokens + dt * r as f64).min(burst(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_average_rate_holds_and_a_change_applies_at_once() {
        let t = Throttle::new(Some(1_000_000));
        let start = Instant::now();
        for _ in 0..100 {
            t.acquire(100_000).await;
        }
        // 10 MB at 1 MB/s: ten seconds, less the first frame's free pass.
        let s = start.elapsed().as_secs_f64();
        assert!((9.8..=10.1).contains(&s), "took {s} s");
        t.set_rate(Some(10_000_000));
        let start = Instant::now();
        for _ in 0..100 {
            t.acquire(100_000).await;
        }
        let s = start.elapsed().as_secs_f64();
        assert!((0.9..=1.1).contains(&s), "took {s} s after the change");
        t.set_rate(None);
        let start = Instant::now();
        t.acquire(u64::MAX / 2).await;
        assert!(start.elapsed() < Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn wire_bytes_beyond_the_frames_slow_the_bucket_down() {
        let t = Throttle::new(Some(1_000_000));
        let start = Instant::now();
        // The meter sees 10 % more on the wire than the frames: after a few samples the
        // bucket charges the overhead, and 10 MB of frames take about 11 s.
        for i in 0..200 {
            t.acquire(50_000).await;
            if i % 2 == 1 {
                t.record_wire(110_000);
            }
        }
        let s = start.elapsed().as_secs_f64();
        assert!((10.8..=11.2).contains(&s), "took {s} s");
        assert!((t.overhead() - 1.1).abs() < 0.01, "{}", t.overhead());
    }

    #[test]
    fn pieces_are_20_ms_of_the_rate_within_16_to_64_kib() {
        assert_eq!(piece_for(Some(1_250_000)), 25_000);
        assert_eq!(piece_for(Some(64_000)), 16 << 10);
        assert_eq!(piece_for(Some(25_000_000)), 64 << 10);
        assert_eq!(piece_for(None), usize::MAX);
    }
}

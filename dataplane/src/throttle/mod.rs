//! Bandwidth limits: one token bucket shared by every stream and VM of the host.
//!
//! The bucket holds at most `burst` bytes of credit and refills at `rate` bytes per second;
//! a sender waits for credit before it hands a frame to QUIC. A rate of `None` is no limit.
//! The rate can change at any time (`set_rate`), taking effect on the next frame, so a policy
//! change or a work-hour boundary never restarts a transfer.

mod rate;

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub use rate::{parse_rate, Rate};

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
}

/// Credit a bucket may bank: 50 ms of the rate (at least one 64 KiB frame), so bursts stay
/// short against any 1-second window.
fn burst(rate: u64) -> f64 {
    ((rate as f64) * 0.05).max(65536.0)
}

impl Throttle {
    /// A bucket at `rate` bytes per second (`None`: unlimited).
    pub fn new(rate: Option<u64>) -> Self {
        Throttle {
            inner: Mutex::new(Bucket {
                rate,
                tokens: 0.0,
                last: Instant::now(),
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

    /// Waits until `bytes` may be sent, then takes them.
    pub async fn acquire(&self, bytes: u64) {
        loop {
            let wait = {
                let Ok(mut b) = self.inner.lock() else { return };
                b.refill();
                let Some(rate) = b.rate else { return };
                if b.tokens >= 0.0 {
                    // Take now and go into debt: large frames pass at once, the debt delays
                    // the next ones, and the average holds.
                    b.tokens -= bytes as f64;
                    return;
                }
                Duration::from_secs_f64((-b.tokens / rate.max(1) as f64).min(0.25))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Bucket {
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
}

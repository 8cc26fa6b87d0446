//! The retry schedule and the back-off state of one retrying loop.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// When to try again.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    /// The burst of fast reconnects first (no jitter: they are short).
    pub fast: Vec<Duration>,
    /// Then these delays (the seed's 1, 2, 4, 8, 10 minutes).
    pub long: Vec<Duration>,
    /// Then this delay forever (30 minutes).
    pub steady: Duration,
    /// Relative jitter of the long delays (0.1: ±10 %).
    pub jitter: f64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        RetrySchedule {
            fast: [200, 500, 1000, 2000, 3000, 5000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            long: vec![min(1), min(2), min(4), min(8), min(10)],
            steady: min(30),
            jitter: 0.1,
        }
    }
}

/// The state of a retrying loop: how many attempts failed since the last progress, and
/// (one-shot) when to give up.
#[derive(Debug)]
pub struct Backoff {
    schedule: RetrySchedule,
    give_up_after: Option<Duration>,
    failures: usize,
    deadline: Option<Instant>,
    rng: rand::rngs::StdRng,
}

impl Backoff {
    /// One-shot (`give_up_after` `Some`): fast reconnects only, until the window (counted
    /// from the last progress) closes. Continuous (`None`): the whole schedule, forever.
    pub fn new(schedule: RetrySchedule, give_up_after: Option<Duration>) -> Self {
        Self::with_rng(schedule, give_up_after, rand::rngs::StdRng::from_entropy())
    }

    /// The same with a seeded jitter source (tests).
    pub fn with_rng(
        schedule: RetrySchedule,
        give_up_after: Option<Duration>,
        rng: rand::rngs::StdRng,
    ) -> Self {
        Backoff {
            schedule,
            give_up_after,
            failures: 0,
            deadline: give_up_after.map(|d| crate::clock::tokio_now() + d),
            rng,
        }
    }

    /// Progress was made: the next failure starts the fast burst again, and the give-up
    /// window counts from now.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.deadline = self.give_up_after.map(|d| crate::clock::tokio_now() + d);
    }

    /// A new outage began after the link was up again: the next failure starts the fast
    /// burst again, but the give-up window keeps counting from the last progress.
    pub fn restart_burst(&mut self) {
        self.failures = 0;
    }

    /// When a one-shot loop gives up (`None`: never).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Failures since the last progress.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// An attempt failed: the delay before the next one, or `None` to give up (the error is
    /// not recoverable, or the one-shot window is over).
    pub fn next_delay(&mut self, recoverable: bool) -> Option<Duration> {
        if !recoverable {
            return None;
        }
        if let Some(d) = self.deadline {
            if crate::clock::tokio_now() >= d {
                return None;
            }
        }
        let i = self.failures;
        self.failures += 1;
        let s = &self.schedule;
        if let Some(&d) = s.fast.get(i) {
            return Some(d);
        }
        if self.deadline.is_some() {
            // One-shot: keep reconnecting at the last fast pace until the window closes.
            return Some(s.fast.last().copied().unwrap_or(Duration::from_secs(5)));
        }
        let base = s.long.get(i - s.fast.len()).copied().unwrap_or(s.steady);
        let j = if s.jitter > 0.0 {
            self.rng.gen_range(-s.jitter..=s.jitter)
        } else {
            0.0
        };
        Some(base.mul_f64(1.0 + j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a loop whose every attempt fails recoverably, in paused time, and returns the
    /// gaps between attempts.
    async fn gaps(mut b: Backoff, attempts: usize) -> Vec<Duration> {
        let mut times = vec![crate::clock::tokio_now()];
        while times.len() < attempts {
            let Some(d) = b.next_delay(true) else { break };
            tokio::time::sleep(d).await;
            times.push(crate::clock::tokio_now());
        }
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_persistent_recoverable_error_is_retried_after_1_2_4_8_10_then_every_30_minutes() {
        let b = Backoff::with_rng(
            RetrySchedule::default(),
            None,
            rand::rngs::StdRng::seed_from_u64(7),
        );
        let g = gaps(b, 6 + 8 + 1).await;
        let fast: Vec<u64> = g[..6].iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(fast, vec![200, 500, 1000, 2000, 3000, 5000]);
        let expect_min = [1, 2, 4, 8, 10, 30, 30, 30];
        let mut jittered = false;
        for (d, m) in g[6..].iter().zip(expect_min) {
            let base = 60.0 * m as f64;
            let s = d.as_secs_f64();
            assert!(
                (base * 0.9..=base * 1.1).contains(&s),
                "gap {s} s where {m} min ± 10 % was due: {g:?}"
            );
            jittered |= (s - base).abs() > 0.5;
        }
        assert!(jittered, "no jitter at all: {g:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_fast_burst() {
        let mut b = Backoff::new(RetrySchedule::default(), None);
        for _ in 0..8 {
            b.next_delay(true);
        }
        assert!(b.next_delay(true).unwrap() >= Duration::from_secs(200));
        b.reset();
        assert_eq!(b.next_delay(true), Some(Duration::from_millis(200)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_recoverable_error_makes_no_second_attempt() {
        let mut b = Backoff::new(RetrySchedule::default(), None);
        assert_eq!(b.next_delay(false), None);
        let mut b = Backoff::new(RetrySchedule::default(), Some(Duration::from_secs(600)));
        assert_eq!(b.next_delay(false), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_shot_send_reconnects_every_5_s_until_its_window_closes() {
        let b = Backoff::new(RetrySchedule::default(), Some(Duration::from_secs(60)));
        let start = crate::clock::tokio_now();
        let g = gaps(b, 1000).await;
        assert!(g[6..].iter().all(|d| *d == Duration::from_secs(5)), "{g:?}");
        let total = crate::clock::tokio_now() - start;
        assert!(
            (Duration::from_secs(60)..Duration::from_secs(66)).contains(&total),
            "gave up after {total:?}"
        );
    }
}

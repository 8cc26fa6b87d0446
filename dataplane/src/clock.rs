//! One clock for everything that depends on the time of day or waits long: the bandwidth
//! schedule (work hours), the retry schedule and health (RPO, next retry).
//!
//! Two kinds of time flow through it:
//! - **monotonic** time is tokio's (`tokio::time::Instant`, `tokio::time::sleep_until`), so a
//!   unit test with `#[tokio::test(start_paused = true)]` runs hours of retry schedule in
//!   milliseconds;
//! - **wall-clock** time ([`Clock::now_utc`]) is read through the trait, so a test can start it
//!   anywhere (a DST night, a minute before work hours) and let it follow paused tokio time.
//!
//! Processes take a test-only offset from the environment, `VDREP_TEST_CLOCK_OFFSET`
//! (`+3h`, `-90m`, `+1h30m`, `+12345s`, `-2.5s`), added to every wall-clock read and to
//! nothing else: end-to-end tests cross a work-hour boundary in seconds without touching the
//! host clock. It is meant for tests only; a process that uses it says so in its log.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// The environment variable of the test-only wall-clock offset.
pub const TEST_OFFSET_ENV: &str = "VDREP_TEST_CLOCK_OFFSET";

/// A source of time.
pub trait Clock: Send + Sync + Debug {
    /// The wall-clock time (UTC), for work hours, RPO and reports.
    fn now_utc(&self) -> Timestamp;

    /// Monotonic time (tokio's, so paused-time tests control it).
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The host clock, plus the test-only offset.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock {
    offset: SignedDuration,
}

impl SystemClock {
    /// The host clock without offset.
    pub fn new() -> Self {
        SystemClock::default()
    }

    /// The host clock shifted by `offset` (tests only).
    pub fn with_offset(offset: SignedDuration) -> Self {
        SystemClock { offset }
    }

    /// The host clock with the offset from `VDREP_TEST_CLOCK_OFFSET`, if set.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(TEST_OFFSET_ENV) {
            Ok(s) if !s.trim().is_empty() => {
                let off = parse_offset(&s).map_err(|e| format!("{TEST_OFFSET_ENV}: {e}"))?;
                tracing::warn!(offset = %s, "test-only wall-clock offset in effect");
                Ok(SystemClock::with_offset(off))
            }
            _ => Ok(SystemClock::new()),
        }
    }

    /// The offset in effect.
    pub fn offset(&self) -> SignedDuration {
        self.offset
    }
}

impl Clock for SystemClock {
    fn now_utc(&self) -> Timestamp {
        let now = Timestamp::try_from(SystemTime::now()).unwrap_or(Timestamp::UNIX_EPOCH);
        now.checked_add(self.offset).unwrap_or(now)
    }
}

/// A wall clock that starts at a chosen moment and then follows tokio's monotonic time, so
/// in a paused-time test `tokio::time::advance` moves both.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_wall: Timestamp,
    start: Instant,
}

impl TokioClock {
    /// A clock reading `start_wall` now.
    pub fn starting_at(start_wall: Timestamp) -> Self {
        TokioClock {
            start_wall,
            start: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_utc(&self) -> Timestamp {
        let el = Instant::now().saturating_duration_since(self.start);
        let el = SignedDuration::try_from(el).unwrap_or(SignedDuration::MAX);
        self.start_wall.checked_add(el).unwrap_or(self.start_wall)
    }
}

/// Parses a signed offset: an optional `+`/`-` and a duration (`3h`, `1h30m`, `90s`, `2.5s`,
/// `250ms`, or plain seconds).
pub fn parse_offset(s: &str) -> Result<SignedDuration, String> {
    let t = s.trim();
    let (neg, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let d: Duration = crate::cli::config::parse_duration(rest).map_err(|e| e.to_string())?;
    let d = SignedDuration::try_from(d).map_err(|e| e.to_string())?;
    Ok(if neg { -d } else { d })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_signed_durations() {
        assert_eq!(parse_offset("+3h"), Ok(SignedDuration::from_hours(3)));
        assert_eq!(parse_offset("-90m"), Ok(SignedDuration::from_mins(-90)));
        assert_eq!(parse_offset("1h30m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(
            parse_offset("-2.5s"),
            Ok(SignedDuration::from_millis(-2500))
        );
        assert!(parse_offset("+3 parsecs").is_err());
    }

    #[test]
    fn the_offset_moves_wall_time_only() {
        let c = SystemClock::with_offset(SignedDuration::from_hours(3));
        let plain = SystemClock::new().now_utc();
        let shifted = c.now_utc();
        let d = shifted.duration_since(plain);
        assert!(
            (d - SignedDuration::from_hours(3)).abs() < SignedDuration::from_secs(1),
            "{d:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_paused_time() {
        let t0: Timestamp = "2025-03-30T00:59:00Z".parse().unwrap();
        let c = TokioClock::starting_at(t0);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(c.now_utc(), "2025-03-30T01:59:00Z".parse().unwrap());
    }
}

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
//! host clock. To make the clock of a *running* process jump, name a file instead with
//! `VDREP_TEST_CLOCK_OFFSET_FILE`: it holds an offset in the same syntax, and is re-read at
//! most every [`OFFSET_FILE_POLL`] (a missing, empty or unparsable file leaves the last good
//! offset in force; both variables together add up). Both are meant for tests only; a
//! process that uses them says so in its log. The sender reads its clock through this
//! (work hours, health, RPO), the receiver too (recovery-point times and retention).
//!
//! This module is the only place that reads the system's clocks (`SystemTime::now`,
//! `std::time::Instant::now`, `tokio::time::Instant::now`; `dataplane/tests/layers.rs` checks it):
//! everything else asks a [`Clock`] or one of the functions below, or takes the time as a
//! value. The free functions read the host as it is, without the test offset: file and image
//! timestamps, HTTP dates, token lifetimes and elapsed-time measurements must follow the real
//! clock, and only the schedule-facing wall time ([`Clock::now_utc`]) is shifted.
//!
//! **One clock, two files.** std's readers ([`system_time`], [`unix_secs`], [`unix_millis`],
//! [`std_now`]) live in `dataplane/store/src/clock.rs` because the store crate reads time too
//! (HTTP dates, token expiry, job times) and can neither import this crate (Cargo keeps the
//! arrows pointing down) nor take on tokio. That file is this clock's lower half, not a
//! second clock: everything is re-exported here, `vdrep` code names only `crate::clock`, and
//! `dataplane/tests/layers.rs` checks both (every store reader re-exported, no other
//! `vdrep_store::clock` user, no system-clock read anywhere else). The protocol sessions
//! (`proto/`) read no clock at all: they are given time as a value.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// The environment variable of the test-only wall-clock offset.
pub const TEST_OFFSET_ENV: &str = "VDREP_TEST_CLOCK_OFFSET";
/// The environment variable naming a file that holds a test-only offset, re-read while the
/// process runs.
pub const TEST_OFFSET_FILE_ENV: &str = "VDREP_TEST_CLOCK_OFFSET_FILE";
/// How often the offset file is re-read at most.
pub const OFFSET_FILE_POLL: Duration = Duration::from_millis(100);

// The std readers live in the store crate, the lowest crate that reads a clock; this
// re-exports them (one clock) and adds tokio's.
pub use vdrep_store::clock::{std_now, system_time, unix_millis, unix_secs};

/// Monotonic time for async code (tokio's): paused-time tests control it.
pub fn tokio_now() -> Instant {
    Instant::now()
}

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

/// The host clock, plus the test-only offset(s).
#[derive(Debug, Clone, Default)]
pub struct SystemClock {
    offset: SignedDuration,
    file: Option<Arc<OffsetFile>>,
}

/// An offset read from a file, cached for [`OFFSET_FILE_POLL`].
#[derive(Debug)]
struct OffsetFile {
    path: PathBuf,
    /// When the file was last read (std time: the poll is real time even in a paused-time
    /// test), and the last good offset.
    cached: Mutex<(Option<std::time::Instant>, SignedDuration)>,
}

impl OffsetFile {
    fn offset(&self) -> SignedDuration {
        let Ok(mut c) = self.cached.lock() else {
            return SignedDuration::ZERO;
        };
        let due = c.0.is_none_or(|t| t.elapsed() >= OFFSET_FILE_POLL);
        if due {
            c.0 = Some(std_now());
            if let Ok(text) = std::fs::read_to_string(&self.path) {
                if let Ok(off) = parse_offset(&text) {
                    if off != c.1 {
                        tracing::warn!(offset = %text.trim(), file = %self.path.display(),
                                       "test-only wall-clock offset changed");
                    }
                    c.1 = off;
                }
            }
        }
        c.1
    }
}

impl SystemClock {
    /// The host clock without offset.
    pub fn new() -> Self {
        SystemClock::default()
    }

    /// The host clock shifted by `offset` (tests only).
    pub fn with_offset(offset: SignedDuration) -> Self {
        SystemClock { offset, file: None }
    }

    /// The host clock shifted by the offset in `path`, re-read while running (tests only).
    pub fn with_offset_file(offset: SignedDuration, path: PathBuf) -> Self {
        SystemClock {
            offset,
            file: Some(Arc::new(OffsetFile {
                path,
                cached: Mutex::new((None, SignedDuration::ZERO)),
            })),
        }
    }

    /// The host clock with the offsets from `VDREP_TEST_CLOCK_OFFSET` and
    /// `VDREP_TEST_CLOCK_OFFSET_FILE`, if set.
    pub fn from_env() -> Result<Self, String> {
        let offset = match std::env::var(TEST_OFFSET_ENV) {
            Ok(s) if !s.trim().is_empty() => {
                let off = parse_offset(&s).map_err(|e| format!("{TEST_OFFSET_ENV}: {e}"))?;
                tracing::warn!(offset = %s, "test-only wall-clock offset in effect");
                off
            }
            _ => SignedDuration::ZERO,
        };
        match std::env::var_os(TEST_OFFSET_FILE_ENV) {
            Some(p) if !p.is_empty() => {
                let path = PathBuf::from(p);
                tracing::warn!(file = %path.display(), "test-only wall-clock offset file in effect");
                Ok(SystemClock::with_offset_file(offset, path))
            }
            _ => Ok(SystemClock::with_offset(offset)),
        }
    }

    /// The offset in effect.
    pub fn offset(&self) -> SignedDuration {
        let file = self.file.as_ref().map(|f| f.offset()).unwrap_or_default();
        self.offset.checked_add(file).unwrap_or(self.offset)
    }
}

/// The process's clock, from the environment on first use (an invalid offset is logged
/// and ignored here; `vdrep send` refuses it up front).
pub fn process() -> &'static SystemClock {
    static CLOCK: OnceLock<SystemClock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        SystemClock::from_env().unwrap_or_else(|e| {
            tracing::error!(error = %e, "ignoring the test-only clock offset");
            SystemClock::new()
        })
    })
}

impl Clock for SystemClock {
    fn now_utc(&self) -> Timestamp {
        let now = Timestamp::try_from(system_time()).unwrap_or(Timestamp::UNIX_EPOCH);
        now.checked_add(self.offset()).unwrap_or(now)
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
    let d: Duration = parse_duration(rest)?;
    let d = SignedDuration::try_from(d).map_err(|e| e.to_string())?;
    Ok(if neg { -d } else { d })
}

/// Parses `30s`, `5m`, `15m`, `1h`, `250ms`, `1h30m` or plain seconds: the one duration
/// syntax of flags, config files and the test offset.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num
            .parse()
            .map_err(|_| format!("duration {s:?}: expected a number before {unit:?}"))?;
        num.clear();
        let secs = match unit.as_str() {
            "ms" => v / 1000.0,
            "s" => v,
            "m" | "min" => v * 60.0,
            "h" => v * 3600.0,
            "d" => v * 86400.0,
            _ => {
                return Err(format!(
                    "duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d)"
                ))
            }
        };
        total += Duration::from_secs_f64(secs);
    }
    if !num.is_empty() {
        return Err(format!("duration {s:?}: number without a unit at the end"));
    }
    Ok(total)
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

    #[test]
    fn an_offset_file_is_re_read_while_the_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("offset");
        let c = SystemClock::with_offset_file(SignedDuration::from_hours(1), f.clone());
        // No file yet: only the fixed offset.
        assert!((c.offset() - SignedDuration::from_hours(1)).abs() < SignedDuration::from_secs(1));
        std::fs::write(&f, "+2h\n").unwrap();
        std::thread::sleep(OFFSET_FILE_POLL + Duration::from_millis(20));
        assert_eq!(c.offset(), SignedDuration::from_hours(3));
        std::fs::write(&f, "-5h").unwrap();
        std::thread::sleep(OFFSET_FILE_POLL + Duration::from_millis(20));
        assert_eq!(c.offset(), SignedDuration::from_hours(-4));
        // Garbage keeps the last good offset.
        std::fs::write(&f, "soon").unwrap();
        std::thread::sleep(OFFSET_FILE_POLL + Duration::from_millis(20));
        assert_eq!(c.offset(), SignedDuration::from_hours(-4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_paused_time() {
        let t0: Timestamp = "2025-03-30T00:59:00Z".parse().unwrap();
        let c = TokioClock::starting_at(t0);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(c.now_utc(), "2025-03-30T01:59:00Z".parse().unwrap());
    }
}

//! The sender's CPU: what it used (`vdrep send --json` reports `cpu_seconds`) and the
//! budget an operator may give it (`--cpu-limit CORES`), because the cores of a hypervisor
//! belong to its guests and replication must be able to stay out of their way.
//!
//! [`Governor`] is the pure controller (samples in, a pacing delay and a choice of level
//! out); [`CpuBudget`] applies it to a running sender: the CPU worker threads pass through
//! [`CpuBudget::gate`] before every read, and under a budget the compression controller's
//! tick is [`CpuBudget::steer`]: the level the budget buys the most source bytes with.

mod budget;
mod governor;

pub use budget::CpuBudget;
pub use governor::{
    Bound, Governor, Sample, Yield, BURST, DEEP_STEP_COST, PACE_SLACK, SETTLE, STALE, START_CREDIT,
};

use std::fmt;
use std::time::Duration;

/// CPU time (user + system) of this process, all threads, since it started. Read with
/// `getrusage(RUSAGE_SELF)`, which the kernel keeps for the whole thread group; zero if the
/// call fails (it cannot for `RUSAGE_SELF` with a valid pointer).
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; no other memory is touched.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return Duration::ZERO;
        }
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64)
            + Duration::from_micros(t.tv_usec.clamp(0, 999_999) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The smallest budget accepted: below it the sender would spend most of its time asleep
/// between 1 MiB reads, and QUIC's own timers (keep-alives, acks) alone come near it.
pub const MIN_CORES: f64 = 0.05;

/// A CPU budget in cores (1.0 = one core fully busy), at least [`MIN_CORES`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuLimit(f64);

/// Why a `--cpu-limit` value was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CpuLimitError {
    /// Not a decimal number.
    #[error("{0:?}: not a number of cores (a decimal like 0.5)")]
    NotANumber(String),
    /// Below [`MIN_CORES`] (or not finite).
    #[error("{0}: the CPU limit is at least {MIN_CORES} cores")]
    TooSmall(f64),
}

impl CpuLimit {
    /// `cores`, if it is a finite number ≥ [`MIN_CORES`].
    pub fn new(cores: f64) -> Result<Self, CpuLimitError> {
        if cores.is_finite() && cores >= MIN_CORES {
            Ok(CpuLimit(cores))
        } else {
            Err(CpuLimitError::TooSmall(cores))
        }
    }

    /// The budget in cores.
    pub fn cores(self) -> f64 {
        self.0
    }
}

impl std::str::FromStr for CpuLimit {
    type Err = CpuLimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| CpuLimitError::NotANumber(s.to_string()))?;
        CpuLimit::new(v)
    }
}

impl fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cores", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_a_decimal_of_at_least_five_hundredths_of_a_core() {
        assert_eq!("0.3".parse::<CpuLimit>().unwrap().cores(), 0.3);
        assert_eq!("0.05".parse::<CpuLimit>().unwrap().cores(), 0.05);
        assert_eq!(" 2 ".parse::<CpuLimit>().unwrap().cores(), 2.0);
        assert_eq!(
            "0.01".parse::<CpuLimit>(),
            Err(CpuLimitError::TooSmall(0.01))
        );
        assert!("0".parse::<CpuLimit>().is_err());
        assert!("-1".parse::<CpuLimit>().is_err());
        assert!("NaN".parse::<CpuLimit>().is_err());
        assert!("inf".parse::<CpuLimit>().is_err());
        assert!(matches!(
            "half".parse::<CpuLimit>(),
            Err(CpuLimitError::NotANumber(_))
        ));
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    #[test]
    fn process_cpu_time_counts_the_work_of_every_thread() {
        // Each thread spins until it has used 100 ms of its own CPU time (however long the
        // loaded machine makes that take) and says how much it used.
        let spin = || {
            let t0 = thread_cpu();
            let mut x = 0u64;
            while thread_cpu() - t0 < Duration::from_millis(100) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            thread_cpu() - t0
        };
        let before = process_cpu_time();
        let h = std::thread::spawn(spin);
        let mine = spin();
        let theirs = h.join().unwrap();
        let used = process_cpu_time() - before;
        // Both threads' time is in the process figure (a per-thread figure would show only
        // about half); 10 ms of slack for rounding of the user/system split.
        assert!(
            used + Duration::from_millis(10) >= mine + theirs,
            "{used:?} < {mine:?} + {theirs:?}"
        );
    }
}

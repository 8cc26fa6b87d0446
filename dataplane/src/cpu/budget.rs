//! The CPU budget applied to a running sender: the [`Governor`] behind a lock, fed with
//! this process's CPU time and the run's monotonic clock, driving the compression level's
//! cap and holding back the CPU worker threads before each read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{process_cpu_time, CpuLimit, Decision, Governor, Sample};
use crate::pipeline::AdaptiveLevel;

/// A sender's CPU budget (`--cpu-limit`).
#[derive(Debug)]
pub struct CpuBudget {
    limit: CpuLimit,
    governor: Mutex<Governor>,
    level: Arc<AdaptiveLevel>,
    clock: crate::clock::SharedClock,
    origin: Instant,
    cpu_origin: Duration,
}

impl CpuBudget {
    /// A budget of `limit` for the process, capping `level`; wall time from `clock`.
    pub fn new(
        limit: CpuLimit,
        level: Arc<AdaptiveLevel>,
        clock: crate::clock::SharedClock,
    ) -> Self {
        CpuBudget {
            limit,
            governor: Mutex::new(Governor::new(limit, level.top())),
            origin: clock.now(),
            cpu_origin: process_cpu_time(),
            level,
            clock,
        }
    }

    /// The budget.
    pub fn limit(&self) -> CpuLimit {
        self.limit
    }

    /// Samples the process now, applies the cap, and says how long to wait.
    pub fn decide(&self) -> Decision {
        let s = Sample {
            wall: self.clock.now().saturating_duration_since(self.origin),
            cpu: process_cpu_time().saturating_sub(self.cpu_origin),
        };
        let d = match self.governor.lock() {
            Ok(mut g) => g.observe(s, self.level.step_in_use()),
            // A thread panicked holding the lock: no budget is better than a stuck sender.
            Err(_) => {
                return Decision {
                    level_cap: None,
                    pace: Duration::ZERO,
                }
            }
        };
        self.level.set_cap(d.level_cap);
        d
    }

    /// Blocks the calling (worker) thread until the budget allows the next read. Returns
    /// early, without waiting the rest, when `stop()` says the run is over.
    pub fn gate(&self, stop: impl Fn() -> bool) {
        loop {
            let d = self.decide();
            if d.pace.is_zero() || stop() {
                return;
            }
            std::thread::sleep(d.pace);
        }
    }
}

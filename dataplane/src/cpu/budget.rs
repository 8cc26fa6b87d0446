//! The CPU budget applied to a running sender: the [`Governor`] behind a lock, fed with
//! this process's CPU time, the run's monotonic clock and the run's byte counters, driving
//! the compression level's cap, telling the compression controller whether a step up fits
//! ([`CpuBudget::review`]) and holding back the CPU worker threads before each read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{process_cpu_time, CpuLimit, Decision, Governor, Sample};
use crate::pipeline::{AdaptiveLevel, Stats};

/// A sender's CPU budget (`--cpu-limit`).
#[derive(Debug)]
pub struct CpuBudget {
    limit: CpuLimit,
    governor: Mutex<Governor>,
    level: Arc<AdaptiveLevel>,
    stats: Arc<Stats>,
    clock: crate::clock::SharedClock,
    origin: Instant,
    cpu_origin: Duration,
}

/// The budget's state, for the compression controller's log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetState {
    /// CPU (cores) the level in use costs at the pace the streams send (`None`: not
    /// measured yet at this level).
    pub steady_rate: Option<f64>,
    /// Budget left in CPU seconds (negative: overdrawn).
    pub tokens: f64,
    /// The cap on the ladder (`None`: no cap).
    pub cap: Option<i32>,
    /// Whether the compression controller may climb to the next step (whose cost
    /// [`super::step_cost`] weighs).
    pub headroom: bool,
}

impl CpuBudget {
    /// A budget of `limit` for the process, capping `level`; wall time from `clock`, the
    /// payload prepared and sent from the run's `stats`.
    pub fn new(
        limit: CpuLimit,
        level: Arc<AdaptiveLevel>,
        stats: Arc<Stats>,
        clock: crate::clock::SharedClock,
    ) -> Self {
        CpuBudget {
            limit,
            governor: Mutex::new(Governor::new(limit, level.top())),
            origin: clock.now(),
            cpu_origin: process_cpu_time(),
            level,
            stats,
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
            prepared: Stats::get(&self.stats.payload),
            sent: Stats::get(&self.stats.wire),
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

    /// Samples the process now (as [`CpuBudget::decide`]) and says whether the level in
    /// use leaves room for the compression controller to climb, with the state behind it.
    pub fn review(&self) -> BudgetState {
        self.decide();
        let st = match self.governor.lock() {
            Ok(g) => BudgetState {
                steady_rate: g.steady_rate(),
                tokens: g.tokens(),
                cap: g.cap(),
                headroom: g.headroom_for(super::step_cost(self.level.next_up())),
            },
            Err(_) => BudgetState {
                steady_rate: None,
                tokens: 0.0,
                cap: None,
                headroom: true,
            },
        };
        // `VDREP_LOG=vdrep::cpu=debug`: the per-tick trace of level, cost and budget.
        tracing::debug!(step = self.level.step_in_use(), level = ?self.level.current(),
                        steady = ?st.steady_rate, tokens = st.tokens, cap = ?st.cap,
                        headroom = st.headroom, "CPU budget");
        st
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

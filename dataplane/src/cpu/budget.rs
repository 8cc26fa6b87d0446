//! The CPU budget applied to a running sender: the [`Governor`] behind a lock, fed with
//! this process's CPU time, the run's monotonic clock and the run's byte counters, holding
//! back the CPU worker threads before each read ([`CpuBudget::gate`]) and choosing the
//! compression level at each tick of the compression controller ([`CpuBudget::steer`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{process_cpu_time, Bound, CpuLimit, Governor, Sample};
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

impl CpuBudget {
    /// A budget of `limit` for the process, steering `level`; wall time from `clock`, the
    /// bytes prepared and sent from the run's `stats`.
    pub fn new(
        limit: CpuLimit,
        level: Arc<AdaptiveLevel>,
        stats: Arc<Stats>,
        clock: crate::clock::SharedClock,
    ) -> Self {
        CpuBudget {
            limit,
            governor: Mutex::new(Governor::new(limit, level.ladder())),
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

    fn sample(&self) -> Sample {
        Sample {
            wall: self.clock.now().saturating_duration_since(self.origin),
            cpu: process_cpu_time().saturating_sub(self.cpu_origin),
            data: Stats::get(&self.stats.data),
            prepared: Stats::get(&self.stats.payload),
            sent: Stats::get(&self.stats.wire),
        }
    }

    /// Samples the process now and says how long to wait before the next read.
    pub fn decide(&self) -> Duration {
        let s = self.sample();
        match self.governor.lock() {
            Ok(mut g) => g.observe(s, self.level.step_in_use()),
            // A thread panicked holding the lock: no budget is better than a stuck sender.
            Err(_) => Duration::ZERO,
        }
    }

    /// The compression controller's tick under a budget: samples the process, lets the
    /// governor choose the level from what it measured and from `bound` (where the streams
    /// waited since the last tick), and sets it.
    pub fn steer(&self, bound: Bound) {
        let s = self.sample();
        let step = self.level.step_in_use();
        let Ok(mut g) = self.governor.lock() else {
            return;
        };
        g.observe(s, step);
        let chosen = g.choose(bound);
        if let Some(c) = chosen.filter(|&c| c != step) {
            self.level.set_step(c);
        }
        // `VDREP_LOG=vdrep::cpu=debug`: the per-tick trace of level, cost and budget.
        let y = g.measured(step);
        tracing::debug!(step, level = ?self.level.current(), ?bound, ?chosen,
                        cost_s_per_gib = y.map(|y| y.cost * (1u64 << 30) as f64),
                        ratio = y.map(|y| y.ratio), link_mb_s = g.link_rate().map(|l| l / 1e6),
                        tokens = g.tokens(), "CPU budget");
    }

    /// Blocks the calling (worker) thread until the budget allows the next read. Returns
    /// early, without waiting the rest, when `stop()` says the run is over.
    pub fn gate(&self, stop: impl Fn() -> bool) {
        loop {
            let pace = self.decide();
            if pace.is_zero() || stop() {
                return;
            }
            std::thread::sleep(pace);
        }
    }
}

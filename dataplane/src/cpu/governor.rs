//! The CPU budget's controller, pure: it is told the process's CPU time, the wall time and
//! the payload bytes prepared and sent (as values, so tests drive it without a clock) and
//! answers with a cap on the compression level and how long to wait before the next read.
//!
//! It keeps a token bucket of CPU seconds: the budget (`cores` × wall time) flows in, the
//! CPU the process used flows out, and the bucket holds at most [`BURST`] of budget — which
//! is what "averaged over a few seconds" means here. When the bucket is overdrawn, reads
//! wait until the budget has paid the debt back: pacing by CPU actually used, rather than by
//! an estimated cost per byte, needs no model of the pipeline, and QUIC, TLS, hashing and
//! compression all count, on every link.
//!
//! Pacing holds the limit; the level decides what the limit buys. On a slow link the link,
//! not the budget, sets the pace, so the budget is best spent on ratio: the level should be
//! the highest one whose CPU *at the pace the link takes the bytes* fits in the budget.
//! That is the level's **steady rate**: CPU per payload byte prepared (compression plus
//! everything else, QUIC included) times the payload bytes per second the streams hand to
//! QUIC, measured over the last few seconds at this level. It differs from the CPU rate
//! itself while the queue of prepared extents fills (the first seconds of a run: the CPU
//! works ahead of the link, and lowering the level then bought nothing but wire bytes — the
//! bang-bang between "off" and level 11 of session 9) or drains. So:
//!
//! - the cap steps **down** (compression gives way first) only while the bucket is low
//!   *and* the steady rate is at the budget: the level really costs more than the budget at
//!   the link's pace; a bucket that a filling queue emptied does not lower it;
//! - the compression controller may **climb** only while the steady rate leaves room
//!   ([`Governor::headroom`]); one step above that room overdraws the bucket slowly, the cap
//!   takes the step back, and the bucket refills at the cheaper level: over time the two
//!   levels mix in the shares the budget affords;
//! - the cap steps back **up** when the bucket is nearly full and the steady rate is well
//!   under the budget.
//!
//! Each judgement waits until the level in use has run for [`SETTLE`]: at 0.18 cores a
//! 200 ms window holds one or two reads' CPU, too few to tell a level's cost.

use std::collections::VecDeque;
use std::time::Duration;

use super::CpuLimit;

/// How much budget the bucket holds at most, in wall time at the limit: the window over
/// which the limit is averaged (a burst of up to this much budget is allowed after a quiet
/// spell, never more).
pub const BURST: Duration = Duration::from_secs(2);
/// Budget at the start, in wall time at the limit. Small, so a run's first reads cannot
/// spend much more than the limit before the first samples are in; it is also the level
/// below which the compression level gives way.
pub const START_CREDIT: Duration = Duration::from_millis(250);
/// Least time a level (and a cap) runs before its steady rate is judged.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Longest span the steady rate is measured over: long enough to smooth reads of 4 MiB,
/// short enough to follow a disk whose data changes.
const WINDOW: Duration = Duration::from_secs(3);
/// Least spacing of the samples kept for the window.
const KEEP_EVERY: Duration = Duration::from_millis(100);
/// Payload prepared in a window below which the steady rate is the CPU rate itself (the
/// workers hardly prepared anything: per-byte costs would be noise).
const MIN_PREPARED: u64 = 1 << 20;
/// Fill of the bucket (share of [`BURST`]) above which the cap steps back up...
const RAISE_AT: f64 = 0.9;
/// ...if the steady rate is below this share of the budget.
const RAISE_BELOW: f64 = 0.8;
/// Share of the budget below which the compression controller may climb a step.
const CLIMB_BELOW: f64 = 0.9;
/// Share of the budget from which a low bucket lowers the cap (pacing keeps the CPU rate at
/// the budget, give or take a read, while the level costs more than it).
const DRAIN_AT: f64 = 0.95;
/// What a step up into the ladder's deep levels (from level
/// [`JOIN_FROM_LEVEL`](crate::pipeline::JOIN_FROM_LEVEL) on: level 6 and 11, reads joined into
/// 4 MiB frames) costs against the level in use: level 6's compression alone costs 3.1×
/// level 3's (zstd on the bench mix, 128 MiB, one thread: 1.24 against 0.40 CPU-s) for 3.5 %
/// fewer bytes. Under a budget such a step is taken only when the budget would still hold the
/// level in use at this many times its steady rate: a link that decides the speed leaves the
/// sender at level 3 (session 10, 100 Mbit/s at 0.18 cores: level 6 took a third of the
/// sender's CPU for about 1 % of speed).
pub const DEEP_STEP_COST: f64 = 3.0;
/// Longest single wait returned: the caller samples again afterwards.
const MAX_PACE: Duration = Duration::from_millis(500);

/// One reading of the process, every figure from the same origin (the start of the run),
/// never going backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Wall (monotonic) time since the origin.
    pub wall: Duration,
    /// Process CPU time (user + system, all threads) since the origin.
    pub cpu: Duration,
    /// Payload bytes the CPU workers prepared (compressed or raw, as they will travel).
    pub prepared: u64,
    /// Frame bytes the streams handed to QUIC.
    pub sent: u64,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The highest step of the compression ladder allowed (`None`: no cap).
    pub level_cap: Option<i32>,
    /// How long to wait before the next read (zero: go on).
    pub pace: Duration,
}

/// The controller (see the module documentation).
#[derive(Debug, Clone)]
pub struct Governor {
    cores: f64,
    /// Budget left, CPU seconds (negative: overdrawn).
    tokens: f64,
    last: Option<Sample>,
    /// Samples since the level in use or the cap last changed, at least [`KEEP_EVERY`]
    /// apart, the oldest the last one more than [`WINDOW`] before the newest.
    history: VecDeque<Sample>,
    /// The ladder step in use at the last sample.
    step: Option<i32>,
    cap: Option<i32>,
    /// The ladder's top step: a cap at or above it is no cap.
    top: i32,
}

impl Governor {
    /// A controller for `limit`, over a compression ladder whose highest step is `top`.
    pub fn new(limit: CpuLimit, top: i32) -> Self {
        let cores = limit.cores();
        Governor {
            cores,
            tokens: cores * START_CREDIT.as_secs_f64(),
            last: None,
            history: VecDeque::new(),
            step: None,
            cap: None,
            top,
        }
    }

    /// Budget left in CPU seconds (negative when overdrawn); for tests and logs.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// The cap on the ladder now (`None`: no cap); for logs.
    pub fn cap(&self) -> Option<i32> {
        self.cap
    }

    /// The CPU (in cores) the level in use costs at the pace the streams send: CPU per
    /// payload byte prepared × payload bytes sent per second, over the samples since the
    /// level or the cap last changed (at most [`WINDOW`]). `None` until it ran [`SETTLE`].
    pub fn steady_rate(&self) -> Option<f64> {
        let (from, now) = (self.history.front()?, self.last?);
        let dw = now.wall.checked_sub(from.wall)?;
        if dw < SETTLE {
            return None;
        }
        let dw = dw.as_secs_f64();
        let dc = now.cpu.saturating_sub(from.cpu).as_secs_f64();
        let dp = now.prepared.saturating_sub(from.prepared);
        let ds = now.sent.saturating_sub(from.sent);
        if dp < MIN_PREPARED {
            return Some(dc / dw);
        }
        Some(dc / dp as f64 * ds as f64 / dw)
    }

    /// Whether the level in use leaves room in the budget for a step up: its steady rate is
    /// known and under [`CLIMB_BELOW`] of the budget, or the bucket is full (budget that
    /// nothing spends is lost: where the link keeps the sender at a cheap level, a step up
    /// costs nothing that was not going to waste). The compression controller climbs only
    /// then (and never past the cap).
    pub fn headroom(&self) -> bool {
        self.steady_rate()
            .is_some_and(|r| r < CLIMB_BELOW * self.cores)
            || self.tokens >= RAISE_AT * self.cores * BURST.as_secs_f64()
    }

    /// [`Governor::headroom`] for a step up that costs `factor` times the level in use
    /// (1 for the ladder's cheap steps, [`DEEP_STEP_COST`] into its deep levels): the steady
    /// rate times `factor` must fit. A full bucket is no reason for a costly step: the budget
    /// is a cap, not a target, and what a deep level buys on a slow link is a few per cent.
    pub fn headroom_for(&self, factor: f64) -> bool {
        if factor <= 1.0 {
            return self.headroom();
        }
        self.steady_rate()
            .is_some_and(|r| r * factor < CLIMB_BELOW * self.cores)
    }

    /// Forgets the measurements: the level or the cap changed, so the cost is measured
    /// afresh from `now`.
    fn restart(&mut self, now: Sample) {
        self.history.clear();
        self.history.push_back(now);
    }

    /// Takes a sample; `step` is the ladder step the compression controller is using now
    /// (after any cap). Samples older than the last one are ignored.
    pub fn observe(&mut self, s: Sample, step: i32) -> Decision {
        let capacity = self.cores * BURST.as_secs_f64();
        match self.last {
            Some(l) if s.wall < l.wall || s.cpu < l.cpu => {}
            Some(l) => {
                let dw = (s.wall - l.wall).as_secs_f64();
                let dc = (s.cpu - l.cpu).as_secs_f64();
                self.tokens = (self.tokens + self.cores * dw - dc).min(capacity);
                self.last = Some(s);
            }
            None => self.last = Some(s),
        }
        let now = self.last.unwrap_or(s);
        if self.step != Some(step) {
            self.step = Some(step);
            self.restart(now);
        } else if self
            .history
            .back()
            .is_none_or(|b| now.wall >= b.wall + KEEP_EVERY)
        {
            self.history.push_back(now);
            // Keep one sample at least WINDOW old, so a quiet spell still has its span.
            while self.history.len() > 2 && self.history[1].wall + WINDOW <= now.wall {
                self.history.pop_front();
            }
        }
        let low = self.cores * START_CREDIT.as_secs_f64();
        match self.steady_rate() {
            Some(r) if self.tokens < low && step > 0 && r >= DRAIN_AT * self.cores => {
                // Compression gives way first.
                self.cap = Some(step - 1);
                self.restart(now);
            }
            Some(r) if self.tokens >= RAISE_AT * capacity && r < RAISE_BELOW * self.cores => {
                if let Some(c) = self.cap {
                    self.cap = (c + 1 < self.top).then_some(c + 1);
                    self.restart(now);
                }
            }
            _ => {}
        }
        let pace = if self.tokens < 0.0 {
            Duration::from_secs_f64(-self.tokens / self.cores).min(MAX_PACE)
        } else {
            Duration::ZERO
        };
        Decision {
            level_cap: self.cap,
            pace,
        }
    }
}

#[cfg(test)]
mod tests;

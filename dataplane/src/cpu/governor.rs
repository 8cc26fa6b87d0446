//! The CPU budget's controller, pure: it is told the process's CPU time and the wall time
//! (as values, so tests drive it without a clock) and answers with a cap on the compression
//! level and how long to wait before the next read.
//!
//! It keeps a token bucket of CPU seconds: the budget (`cores` × wall time) flows in, the
//! CPU the process used flows out, and the bucket holds at most [`BURST`] of budget — which
//! is what "averaged over a few seconds" means here. While the bucket runs low, the
//! compression level gives way first (the cap steps down, one ladder step at a time); when it
//! is overdrawn, reads wait until the budget has paid the debt back. Pacing by CPU actually
//! used, rather than by an estimated cost per byte, needs no model of the pipeline: QUIC,
//! TLS, hashing and compression all count, on every link. When the bucket is full again (the
//! process stayed well under its budget for a while), the cap steps back up.

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
/// Least time between two steps of the level cap, so each step is given a moment to show.
const HOLD: Duration = Duration::from_millis(200);
/// Fill of the bucket (share of [`BURST`]) above which the cap steps back up...
const RAISE_AT: f64 = 0.9;
/// ...if the process used less than this share of the budget since the cap last moved (a
/// level that spends just under the budget stays: one step up would overdraw it).
const RAISE_BELOW: f64 = 0.8;
/// Longest single wait returned: the caller samples again afterwards.
const MAX_PACE: Duration = Duration::from_millis(500);

/// One reading of the process: CPU time used and wall time elapsed, both from the same
/// origin (the start of the run), never going backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Wall (monotonic) time since the origin.
    pub wall: Duration,
    /// Process CPU time (user + system, all threads) since the origin.
    pub cpu: Duration,
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
    /// The sample when the cap last moved (or the first one).
    since: Option<Sample>,
    cap: Option<i32>,
    /// The ladder's top step: a cap at or above it is no cap.
    top: i32,
    /// Whether the cap has moved yet (the first move need not wait [`HOLD`]).
    moved: bool,
}

impl Governor {
    /// A controller for `limit`, over a compression ladder whose highest step is `top`.
    pub fn new(limit: CpuLimit, top: i32) -> Self {
        let cores = limit.cores();
        Governor {
            cores,
            tokens: cores * START_CREDIT.as_secs_f64(),
            last: None,
            since: None,
            cap: None,
            top,
            moved: false,
        }
    }

    /// Budget left in CPU seconds (negative when overdrawn); for tests and logs.
    pub fn tokens(&self) -> f64 {
        self.tokens
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
        let since = *self.since.get_or_insert(now);
        let may_move = now.wall >= since.wall + HOLD || !self.moved;
        let low = self.cores * START_CREDIT.as_secs_f64();
        let used =
            (now.cpu - since.cpu).as_secs_f64() / (now.wall - since.wall).as_secs_f64().max(1e-9);
        if may_move && self.tokens < low && step > 0 {
            // Compression gives way first.
            self.cap = Some(step - 1);
            self.moved = true;
            self.since = Some(now);
        } else if may_move && self.tokens >= RAISE_AT * capacity && used < RAISE_BELOW * self.cores
        {
            if let Some(c) = self.cap {
                self.cap = (c + 1 < self.top).then_some(c + 1);
                self.moved = true;
                self.since = Some(now);
            }
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
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn gov(cores: f64) -> Governor {
        Governor::new(CpuLimit::new(cores).unwrap(), 6)
    }

    /// A sender in a loop: each item costs `cost(step)` CPU seconds and takes
    /// `max(cost / cores_available, link)` wall seconds; before each item it asks the
    /// governor and waits as told. The compression controller wants `want` (it would climb
    /// there on its own); the cap holds it lower. Returns (cpu, wall, steps used, paced
    /// items).
    fn simulate(
        g: &mut Governor,
        items: usize,
        want: i32,
        cost: impl Fn(i32) -> f64,
        link: f64,
    ) -> (f64, f64, Vec<i32>, usize) {
        let (mut wall, mut cpu) = (0.0f64, 0.0f64);
        let mut cap = None;
        let mut steps = Vec::new();
        let mut paced = 0;
        for _ in 0..items {
            loop {
                let step = cap.map_or(want, |c: i32| want.min(c));
                let d = g.observe(
                    Sample {
                        wall: Duration::from_secs_f64(wall),
                        cpu: Duration::from_secs_f64(cpu),
                    },
                    step,
                );
                cap = d.level_cap;
                if d.pace.is_zero() {
                    break;
                }
                paced += 1;
                wall += d.pace.as_secs_f64();
            }
            let step = cap.map_or(want, |c| want.min(c));
            let c = cost(step);
            cpu += c;
            wall += (c / 2.0).max(link);
            steps.push(step);
        }
        (cpu, wall, steps, paced)
    }

    #[test]
    fn under_its_budget_a_sender_is_neither_capped_nor_paced() {
        let mut g = gov(1.0);
        // 0.01 CPU-s per item over a link that takes 0.02 s: half a core.
        let (cpu, wall, steps, paced) = simulate(&mut g, 2000, 3, |_| 0.01, 0.02);
        assert_eq!(paced, 0);
        assert!(steps.iter().all(|&s| s == 3), "never capped");
        assert!((cpu / wall - 0.5).abs() < 0.01);
    }

    #[test]
    fn when_compression_is_what_costs_too_much_the_level_gives_way_and_nothing_waits() {
        // Level 3 costs 0.03 CPU-s an item, off costs 0.005; the link takes 0.02 s an item.
        // At level 3 the sender would use 1.5 cores, with compression off 0.25: under 0.5.
        let cost = |s: i32| [0.005, 0.008, 0.012, 0.03][s as usize];
        let mut g = gov(0.5);
        let (_, _, steps, _) = simulate(&mut g, 400, 3, cost, 0.02);
        // Late in the run the cap holds the level down and the sender no longer waits
        // (the cap may come back up a step while the bucket is full, then fall again).
        let mut g2 = g.clone();
        let tail = &steps[200..];
        assert!(tail.iter().all(|&s| s < 3), "{tail:?}");
        let (cpu, wall, _, paced) = simulate(&mut g2, 2000, 3, cost, 0.02);
        assert!(cpu / wall <= 0.5 * 1.02, "{}", cpu / wall);
        assert!(
            paced < 20,
            "compression gave way, pacing barely needed: {paced}"
        );
    }

    #[test]
    fn when_even_no_compression_costs_too_much_reads_wait_and_the_average_holds() {
        // Loopback: no link wait; each item costs 0.01 CPU-s at any level, so the sender
        // would use 2 cores. The limit 0.3 must hold on average.
        for cores in [0.05, 0.3, 1.0, 1.5] {
            let mut g = gov(cores);
            let (cpu, wall, steps, paced) = simulate(&mut g, 5000, 3, |_| 0.01, 0.0);
            assert!(paced > 0);
            assert_eq!(*steps.last().unwrap(), 0, "level at the bottom");
            let start = cores * START_CREDIT.as_secs_f64() + 0.01 * 2.0;
            assert!(
                cpu <= cores * wall + start + 1e-9,
                "{cores}: {cpu} CPU-s in {wall} s"
            );
            assert!(
                cpu / wall >= cores * 0.95,
                "the budget is used, not wasted: {}",
                cpu / wall
            );
        }
    }

    #[test]
    fn after_a_quiet_spell_the_cap_steps_back_up_and_bursts_are_bounded() {
        let mut g = gov(0.5);
        let _ = simulate(&mut g, 500, 3, |_| 0.01, 0.0);
        let capped = g.cap;
        assert_eq!(capped, Some(0), "level at the bottom");
        // Idle for 10 s: the bucket fills to BURST, no more.
        let l = g.last.unwrap();
        let quiet = Sample {
            wall: l.wall + Duration::from_secs(10),
            cpu: l.cpu,
        };
        let d = g.observe(quiet, 0);
        assert_eq!(d.pace, Duration::ZERO);
        assert!((g.tokens() - 0.5 * BURST.as_secs_f64()).abs() < 1e-9);
        assert_eq!(d.level_cap, Some(1), "one step up");
        let mut t = quiet;
        let mut cap = d.level_cap;
        for _ in 0..10 {
            t.wall += ms(300);
            cap = g.observe(t, 0).level_cap;
        }
        assert_eq!(cap, None, "back to no cap below the top step");
    }

    #[test]
    fn a_debt_is_paid_back_by_waiting_and_time_never_runs_backwards() {
        let mut g = gov(0.5);
        let s0 = Sample {
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
        };
        g.observe(s0, 0);
        // 1.125 CPU-s in 1 s: 0.5 of budget came in, 0.125 was there (the start credit):
        // 0.5 CPU-s overdrawn, one second at 0.5 cores.
        let s1 = Sample {
            wall: Duration::from_secs(1),
            cpu: ms(1125),
        };
        let d = g.observe(s1, 0);
        assert_eq!(d.pace, MAX_PACE.min(Duration::from_secs(1)));
        assert!((g.tokens() + 0.5).abs() < 1e-9);
        // A sample from the past changes nothing.
        let d2 = g.observe(s0, 0);
        assert_eq!(d2.pace, d.pace);
        // Waiting 1 s pays the debt.
        let d3 = g.observe(
            Sample {
                wall: Duration::from_secs(2),
                cpu: ms(1125),
            },
            0,
        );
        assert_eq!(d3.pace, Duration::ZERO);
    }
}

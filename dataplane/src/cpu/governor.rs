//! The CPU budget's controller, pure: it is told the process's CPU time, the wall time and
//! the bytes prepared and sent (as values, so tests drive it without a clock) and answers
//! how long to wait before the next read and which step of the compression ladder to use.
//!
//! It keeps a token bucket of CPU seconds: the budget (`cores` × wall time) flows in, the
//! CPU the process used flows out, and the bucket holds at most [`BURST`] of budget — which
//! is what "averaged over a few seconds" means here. When the bucket is overdrawn, reads
//! wait until the budget has paid the debt back: pacing by CPU actually used, rather than by
//! an estimated cost per byte, needs no model of the pipeline, and QUIC, TLS, hashing and
//! compression all count, on every link.
//!
//! Pacing holds the limit; the level decides what the limit buys. A sender delivers source
//! bytes at `min(cores ÷ cost, link ÷ ratio)`, where `cost` is the process's CPU per source
//! byte at a level (compression *and* everything else: reads, zero detection, hashing,
//! framing, and QUIC/TLS per datagram, which grows with the wire bytes a cheap level makes)
//! and `ratio` its payload per source byte. The governor measures both at each level it
//! uses ([`Yield`]: sums over the time spent at that level, decaying over [`TAU`], since a
//! few seconds at 0.10 cores are too few to tell levels apart that differ by 5–10 % per
//! source byte while the data's mix moves the figures by as much), and the link's pace
//! while the streams wait for the link, and chooses the level with the highest predicted
//! speed ([`Governor::choose`]):
//!
//! - where the budget binds, that is the level with the lowest cost per source byte — not
//!   the cheapest zstd level: on the bench mix at 100 Mbit/s levels −3 and −1 cost as much
//!   per source byte as level 1 or more (session 11: 3.97 and 4.00 against 3.57 CPU-s per
//!   GiB) and put 10 % more bytes on the wire, so stepping down bought no speed and cost
//!   ratio (session 10's rule, "compression gives way" on a low bucket: 0.77× the zstd pipe
//!   at 0.10 cores);
//! - where the link binds, it is the best ratio the budget still pays for at the link's
//!   pace; over time a sender between two levels moves between them, in about the shares
//!   that keep both the link and the budget busy.
//!
//! Levels not measured yet are estimated from the level in use: a step up costs as much (a
//! deep level [`DEEP_STEP_COST`] times as much) for 4 % fewer bytes, a step down 5 % less
//! for 4 % more bytes — a mild optimism that makes a sender whose budget binds try the step
//! below once, measure it, and come back if it was not cheaper. A move must promise 3 % more
//! speed, a move *down* to a measured level 6 %: on the bench the levels below 1 cost about
//! as much per source byte as level 1, and a level's cost moves by 5–8 % with the data. A
//! measurement older than [`STALE`] gets the benefit of that doubt, so a level left on a
//! passing expensive stretch of the disk is tried again. A level runs [`SETTLE`] before it is
//! judged: at 0.10 cores a 200 ms window holds one or two reads' CPU, too few to tell a
//! level's cost.

use std::collections::VecDeque;
use std::time::Duration;

use super::CpuLimit;
use crate::pipeline::{Compression, JOIN_FROM_LEVEL};

/// How much budget the bucket holds at most, in wall time at the limit: the window over
/// which the limit is averaged (a burst of up to this much budget is allowed after a quiet
/// spell, never more).
pub const BURST: Duration = Duration::from_secs(2);
/// Budget at the start, in wall time at the limit. Small, so a run's first reads cannot
/// spend much more than the limit before the first samples are in.
pub const START_CREDIT: Duration = Duration::from_millis(250);
/// Least time a level runs before it is judged.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How long a level's measurement stands after the sender left it: after that it gets the
/// benefit of the doubt of the data's variation (and so is tried again if it was close),
/// and is measured afresh when used, because the data along a disk, the link's pace and the
/// host's load change.
pub const STALE: Duration = Duration::from_secs(20);
/// Time constant of the decay of a level's sums: the cost is measured over about this much
/// time at the level (the bench's per-level differences, 5–10 %, against the data's own
/// variation over seconds), short enough to follow a disk whose data changes.
pub const TAU: Duration = Duration::from_secs(10);
/// The start of a run, measured at no level: connection set-up, TLS, the threads starting
/// and the queue of prepared extents filling cost CPU that no level's bytes caused (on the
/// bench at 0.10 cores level 1 read 10 % dearer over seconds 1–2 than later). Four seconds,
/// not two: at 0.17 cores on the Zen 1 machine (session 20) level 1 measured over seconds
/// 2–3.4 of a run cost 8.5 CPU-s per GiB of data in one run and 6.9 in the next, against
/// 7.4 over the whole run; judged on the dear figure, the first step down (to −1, dearer per
/// byte on that data and 10 % more bytes) looked cheaper and stayed for the run's last
/// 20 s, until level 1's figure went stale (0.92–0.98× the zstd pipe instead of 1.0×).
const START: Duration = Duration::from_secs(4);
/// Least span of samples the link's pace is read over.
const LINK_SPAN: Duration = Duration::from_millis(500);
/// Longest span the link's pace and the CPU rate are measured over.
const WINDOW: Duration = Duration::from_secs(3);
/// Least spacing of the samples kept for the window.
const KEEP_EVERY: Duration = Duration::from_millis(100);
/// Source bytes prepared in a window below which it measures nothing (per-byte costs would
/// be noise).
const MIN_PREPARED: u64 = 1 << 20;
/// Predicted gain in speed below which the level stays: measurements over a few seconds
/// differ by a few per cent at the same level.
const GAIN: f64 = 0.03;
/// The gain a step down to a measured level must promise: on the bench mix the levels below
/// 1 cost about as much per source byte as level 1 (3.86, 3.83 and 3.55 CPU-s per GiB for
/// −3, −1 and 1) and put 10 % more bytes on the wire, while a level's cost measured over
/// seconds moves by 5–8 % with the data; a step down on such a difference buys ratio loss.
/// Not more: at 0.12 cores the step from 3 back to 1 promises 7 %.
const DOWN_GAIN: f64 = 0.06;
/// What a step up into the ladder's deep levels (from level [`JOIN_FROM_LEVEL`] on: level 6
/// and 11, reads joined into 4 MiB frames) is estimated to cost against the level in use,
/// until measured: level 6's compression alone costs 3.1× level 3's (zstd on the bench mix,
/// 128 MiB, one thread: 1.24 against 0.40 CPU-s) for 3.5 % fewer bytes. So a budget that
/// cannot pay about three times the level in use never tries them (session 10, 100 Mbit/s at
/// 0.18 cores: level 6 took a third of the sender's CPU for about 1 % of speed).
pub const DEEP_STEP_COST: f64 = 3.0;
/// Estimated payload of a level one step up against the level in use, until measured.
const STEP_RATIO: f64 = 0.96;
/// Estimated cost of the level one step down against the level in use, until measured.
const STEP_DOWN_COST: f64 = 0.95;
/// Longest single wait returned: the caller samples again afterwards.
const MAX_PACE: Duration = Duration::from_millis(500);
/// What a wait adds to the time that pays the debt back: a worker wakes with this much
/// budget in hand (at the limit), not with none. Waking costs CPU (the timer, the switch,
/// the sample's `getrusage`), so a worker that slept exactly until the debt was paid woke
/// into a new debt of its own making — and of the other worker's and QUIC's meanwhile —
/// and slept again for ten times its wake-up's cost at 0.10 cores: on an idle host, whose
/// timers fire on time, the two CPU workers took turns waking and sleeping (68,000 sleeps in
/// a 61 s run, 1,100 a second, against main's 4,800 in all), the wake-ups ate most of the
/// budget and the reads got the rest (session 11: 22 CPU-s per GiB at 0.10 cores, 0.15× the
/// pipe). With the slack each wait is at least this long and ends in credit, so a worker
/// sleeps about once per read. Sleeping longer than the debt never breaks the limit; the
/// credit stays in the bucket for the next read.
pub const PACE_SLACK: Duration = Duration::from_millis(25);

/// One reading of the process, every figure from the same origin (the start of the run),
/// never going backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Wall (monotonic) time since the origin.
    pub wall: Duration,
    /// Process CPU time (user + system, all threads) since the origin.
    pub cpu: Duration,
    /// Source bytes the CPU workers prepared (uncompressed bytes of write extents).
    pub data: u64,
    /// Payload bytes the CPU workers prepared (compressed or raw, as they will travel).
    pub prepared: u64,
    /// Frame bytes the streams handed to QUIC.
    pub sent: u64,
}

/// Where the streams waited since the last judgement (the compression controller's waits):
/// for the link, for prepared extents (the CPU), or neither clearly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The streams waited for the link (throttle, send window): the CPU works ahead.
    Link,
    /// The streams waited for prepared extents: the budget (or the host) holds the CPU back.
    Cpu,
    /// Neither side clearly.
    Neither,
}

/// What a ladder step was measured to cost and yield.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yield {
    /// Process CPU seconds per source byte prepared at this step (everything the process
    /// did meanwhile, QUIC included).
    pub cost: f64,
    /// Payload bytes per source byte.
    pub ratio: f64,
    /// When it was measured (wall time since the origin).
    pub at: Duration,
}

/// Sums of what the process spent and prepared at one ladder step, each older second
/// weighing `exp(-1 / TAU)` of the next.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    wall: f64,
    cpu: f64,
    data: f64,
    prepared: f64,
    /// When it was last added to.
    at: Duration,
}

impl Tally {
    fn add(&mut self, from: Sample, to: Sample) {
        let dw = to.wall.saturating_sub(from.wall).as_secs_f64();
        let k = (-dw / TAU.as_secs_f64()).exp();
        self.wall = self.wall * k + dw;
        self.cpu = self.cpu * k + to.cpu.saturating_sub(from.cpu).as_secs_f64();
        self.data = self.data * k + to.data.saturating_sub(from.data) as f64;
        self.prepared = self.prepared * k + to.prepared.saturating_sub(from.prepared) as f64;
        self.at = to.wall;
    }

    fn get(&self) -> Option<Yield> {
        (self.wall >= SETTLE.as_secs_f64() && self.data >= MIN_PREPARED as f64).then(|| Yield {
            cost: self.cpu / self.data,
            ratio: self.prepared / self.data,
            at: self.at,
        })
    }
}

/// The span of the samples kept for the level in use.
#[derive(Debug, Clone, Copy)]
struct Window {
    wall: f64,
    cpu: f64,
}

/// The controller (see the module documentation).
#[derive(Debug, Clone)]
pub struct Governor {
    cores: f64,
    /// Budget left, CPU seconds (negative: overdrawn).
    tokens: f64,
    last: Option<Sample>,
    /// Samples since the level in use last changed, at least [`KEEP_EVERY`] apart, the
    /// oldest the last one more than [`WINDOW`] before the newest.
    history: VecDeque<Sample>,
    /// The ladder step in use at the last sample.
    step: Option<i32>,
    /// When the sender moved to that step.
    entered: Duration,
    /// Per ladder step: what a step up into it costs against the step below, until measured
    /// (1, or [`DEEP_STEP_COST`] into the deep levels).
    climb_cost: Vec<f64>,
    /// Per ladder step: what it cost and yielded.
    seen: Vec<Tally>,
    /// Payload bytes per second the streams handed to QUIC the last time they waited for the
    /// link, and when.
    link: Option<(f64, Duration)>,
}

impl Governor {
    /// A controller for `limit`, over the compression ladder `ladder` (step 0 first; step 0
    /// is expected to be [`Compression::Off`]).
    pub fn new(limit: CpuLimit, ladder: &[Compression]) -> Self {
        let cores = limit.cores();
        Governor {
            cores,
            tokens: cores * START_CREDIT.as_secs_f64(),
            last: None,
            history: VecDeque::new(),
            step: None,
            entered: Duration::ZERO,
            climb_cost: ladder
                .iter()
                .map(|c| match c {
                    Compression::Zstd(l) if *l >= JOIN_FROM_LEVEL => DEEP_STEP_COST,
                    _ => 1.0,
                })
                .collect(),
            seen: vec![Tally::default(); ladder.len()],
            link: None,
        }
    }

    /// Budget left in CPU seconds (negative when overdrawn); for tests and logs.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// The last measurement of ladder step `step`, if any; for tests and logs.
    pub fn measured(&self, step: i32) -> Option<Yield> {
        self.seen.get(usize::try_from(step).ok()?)?.get()
    }

    /// Payload bytes per second the link took the last time the streams waited for it.
    pub fn link_rate(&self) -> Option<f64> {
        self.link.map(|l| l.0)
    }

    /// The span of the samples at the level in use, once it ran [`SETTLE`].
    fn window(&self) -> Option<Window> {
        let (from, now) = (self.history.front()?, self.last?);
        let wall = now.wall.checked_sub(from.wall)?;
        if wall < SETTLE {
            return None;
        }
        Some(Window {
            wall: wall.as_secs_f64(),
            cpu: now.cpu.saturating_sub(from.cpu).as_secs_f64(),
        })
    }

    /// Takes a sample; `step` is the ladder step in use now. Samples older than the last one
    /// are ignored. Returns how long to wait before the next read (zero: go on).
    pub fn observe(&mut self, s: Sample, step: i32) -> Duration {
        let capacity = self.cores * BURST.as_secs_f64();
        let mut prev = None;
        match self.last {
            Some(l) if s.wall < l.wall || s.cpu < l.cpu => {}
            Some(l) => {
                let dw = (s.wall - l.wall).as_secs_f64();
                let dc = (s.cpu - l.cpu).as_secs_f64();
                self.tokens = (self.tokens + self.cores * dw - dc).min(capacity);
                self.last = Some(s);
                prev = Some(l);
            }
            None => self.last = Some(s),
        }
        let now = self.last.unwrap_or(s);
        let slot = usize::try_from(step).ok().filter(|&i| i < self.seen.len());
        if self.step != Some(step) {
            self.step = Some(step);
            self.entered = now.wall;
            self.history.clear();
            self.history.push_back(now);
            // A level measured long ago is measured afresh.
            if let Some(t) = slot.map(|i| &mut self.seen[i]) {
                if now.wall.saturating_sub(t.at) > STALE {
                    *t = Tally::default();
                }
            }
            return self.pace();
        }
        if let (Some(l), Some(i)) = (prev, slot) {
            if l.wall >= START {
                self.seen[i].add(l, now);
            }
        }
        if self
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
        self.pace()
    }

    /// How long to wait before the next read: until the budget has paid the debt back and
    /// [`PACE_SLACK`] more.
    fn pace(&self) -> Duration {
        if self.tokens < 0.0 {
            (Duration::from_secs_f64(-self.tokens / self.cores) + PACE_SLACK).min(MAX_PACE)
        } else {
            Duration::ZERO
        }
    }

    /// Cost and ratio of ladder step `s` estimated from the level in use, `cur`, for the
    /// steps next to it (see the module documentation).
    fn prior(&self, s: usize, cur: usize) -> Option<(f64, f64)> {
        let here = self.seen[cur].get()?;
        if s == cur + 1 {
            Some((here.cost * self.climb_cost[s], here.ratio * STEP_RATIO))
        } else if s + 1 == cur {
            let ratio = if s == 0 { 1.0 } else { here.ratio / STEP_RATIO };
            Some((here.cost / self.climb_cost[cur] * STEP_DOWN_COST, ratio))
        } else {
            None
        }
    }

    /// Chooses the ladder step for the next while, after a sample ([`Governor::observe`]):
    /// the one with the highest predicted speed, `min(cores ÷ cost, link ÷ ratio)` (see the
    /// module documentation), where `bound` says what held the streams back since the last
    /// call. `None`: the level in use has not run [`SETTLE`] with data yet; keep it.
    pub fn choose(&mut self, bound: Bound) -> Option<i32> {
        let (cur, last) = (usize::try_from(self.step?).ok()?, self.last?);
        let now = last.wall;
        // The link's pace is read as soon as the streams wait for it (in the first second of a
        // run, while the queue of prepared extents fills), so that the first judgements know
        // what a cheaper level's bytes would cost in link time.
        if let Some(from) = self.history.front().filter(|_| bound == Bound::Link) {
            let span = now.saturating_sub(from.wall);
            if span >= LINK_SPAN {
                let sent = last.sent.saturating_sub(from.sent) as f64;
                self.link = Some((sent / span.as_secs_f64(), now));
            }
        }
        let w = self.window()?;
        if now.saturating_sub(self.entered) < SETTLE {
            return None;
        }
        self.measured(cur as i32)?;
        // The link's pace, while known; unknown, only the CPU decides.
        let link = self
            .link
            .filter(|(_, at)| now.saturating_sub(*at) <= STALE)
            .map_or(f64::INFINITY, |l| l.0);
        // Where the streams wait for the CPU the sender gets what the budget allows, or less
        // on a host that gives it less.
        let cores = match bound {
            Bound::Cpu => (w.cpu / w.wall).clamp(self.cores * 0.1, self.cores),
            _ => self.cores,
        };
        let speed =
            |(cost, ratio): (f64, f64)| (cores / cost.max(1e-15)).min(link / ratio.max(1e-9));
        let here = speed(self.measured(cur as i32).map(|y| (y.cost, y.ratio))?);
        // Each other step's predicted speed, and the gain it must promise: its measurement
        // while fresh; once stale, its measurement given the benefit of the doubt of the
        // data's variation (DOWN_GAIN), so that a level left on a measurement within that
        // band is tried again; unmeasured, the estimate. A step down to a measured level must
        // promise DOWN_GAIN, other steps GAIN.
        let best = (0..self.seen.len())
            .filter(|&s| s != cur)
            .filter_map(|s| {
                let measured = self.seen[s].get();
                let v = match measured {
                    Some(y) if now.saturating_sub(y.at) <= STALE => speed((y.cost, y.ratio)),
                    Some(y) => speed((y.cost, y.ratio)) * (1.0 + DOWN_GAIN),
                    None => self.prior(s, cur).map(speed)?,
                };
                let gain = if s < cur && measured.is_some() {
                    DOWN_GAIN
                } else {
                    GAIN
                };
                (v > here * (1.0 + gain)).then_some((s, v))
            })
            .fold(None, |b: Option<(usize, f64)>, c| match b {
                Some(b) if b.1 >= c.1 => Some(b),
                _ => Some(c),
            });
        Some(best.map_or(cur, |b| b.0) as i32)
    }
}

#[cfg(test)]
mod tests;

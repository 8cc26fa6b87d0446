//! Compression that adapts to the link.
//!
//! The stream workers report how long they waited for the CPU stages (a prepared extent)
//! and how long they waited for the link (the throttle and QUIC's send window). A controller
//! looks at the shares every [`TICK`]: when the link waits for the compressor, it compresses
//! less, down to not at all (loopback, fast LANs); when the compressor waits for the link, it
//! spends the idle CPU on ratio, up past the configured level to [`MAX_ADAPTIVE_LEVEL`]. The
//! configured level is where the controller starts; `--fixed-compression` pins it.
//!
//! It climbs only while the host has spare CPU ([`CpuIdle`]): a receiver that is the
//! bottleneck also makes the streams wait, and on a host that shares its cores with that
//! receiver (or with guests) a higher level would take CPU from it rather than buy ratio.
//!
//! Time shares, not queue fill, drive it: a stream that has just handed bytes to QUIC's send
//! buffer looks fast although the link is the bottleneck, so queue fill alone walks the level
//! the wrong way on slow links (measured in bench/results/ANALYSIS.md).

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::idle::CpuIdle;
use super::JOIN_FROM_LEVEL;

/// The encoding choice for the next extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store raw.
    Off,
    /// zstd at this level.
    Zstd(i32),
}

/// How often the controller decides.
pub const TICK: Duration = Duration::from_millis(250);
/// How often it decides in the first [`WARMUP`] of a run. Until it has seen the link, every
/// read is compressed at the configured level: with 250 ms ticks the first ~70 MiB of a run
/// on a slow link went out at levels 1–3 instead of 11 (0.8 MB more on the wire per GiB on
/// the bench's 100 Mbit/s link). See also [`WARMUP_BUDGET`](super::WARMUP_BUDGET).
pub const WARMUP_TICK: Duration = Duration::from_millis(50);
/// The start of a run in which the controller decides every [`WARMUP_TICK`].
pub const WARMUP: Duration = Duration::from_secs(1);

/// The pause before the controller's next decision, `elapsed` into the run.
pub fn tick_after(elapsed: Duration) -> Duration {
    if elapsed < WARMUP {
        WARMUP_TICK
    } else {
        TICK
    }
}
/// Highest level the controller climbs to on a slow link: level 9's match tables with a
/// deeper search (`zstd_ctx` caps the tables of levels 10–12), 0.6 % fewer bytes than
/// level 9 on the bench image's 4 MiB frames (356.5 against 358.6 MB per GiB) for 1.6× its
/// CPU, which a link-bound sender has spare. Not 13 and up: their binary-tree match finders
/// cost 4–7× level 9's CPU for another 0.3 %.
pub const MAX_ADAPTIVE_LEVEL: i32 = 11;
/// Share of wait time on one side that moves the level.
const MOVE_SHARE: f64 = 0.6;

/// Shared, lock-free compression level controller.
#[derive(Debug)]
pub struct AdaptiveLevel {
    /// Steps from "off" upwards.
    ladder: Vec<Compression>,
    step: AtomicI32,
    adaptive: bool,
    /// Nanoseconds the streams waited for prepared extents since the last tick.
    wait_cpu: AtomicU64,
    /// Nanoseconds the streams waited for the link since the last tick.
    wait_link: AtomicU64,
    incompressible: AtomicU32,
    /// Source bytes read while each step was in use (indexed like `ladder`).
    read_at: Vec<AtomicU64>,
    /// Ticks at which the link was the bottleneck but the host had no spare CPU, so the
    /// level held below the top instead of climbing.
    held: AtomicU64,
    /// Level from which the CPU threads join consecutive reads into one extent
    /// ([`JOIN_FROM_LEVEL`], or every level under a CPU budget:
    /// [`AdaptiveLevel::join_under_budget`]).
    join_from: AtomicI32,
}

/// What the controller did in a run, for the summary (`vdrep send --json`) and the bench's
/// results: a run that stays at a low level on a slow link shows here, and why.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LevelReport {
    /// Source bytes read per level in use (`"off"` or the zstd level), lowest first; levels
    /// never used are left out.
    pub read_bytes_by_level: Vec<(String, u64)>,
    /// Ticks at which the link waited but the host had no spare CPU ([`CpuIdle`]), so the
    /// level held below the top of the ladder instead of climbing.
    pub climbs_held: u64,
}

impl AdaptiveLevel {
    /// `level`: the configured zstd level (0 = off). `adaptive`: follow the link between off
    /// and [`MAX_ADAPTIVE_LEVEL`], starting at `level`; otherwise always `level`.
    pub fn new(level: i32, adaptive: bool) -> Self {
        let mut ladder = vec![Compression::Off];
        let mut levels: Vec<i32> = vec![-3, -1, 1, 3, 6, MAX_ADAPTIVE_LEVEL];
        if level != 0 && !levels.contains(&level) {
            levels.push(level);
            levels.sort_unstable();
        }
        if !adaptive {
            levels.retain(|&l| l == level);
        }
        ladder.extend(levels.into_iter().map(Compression::Zstd));
        let start = ladder
            .iter()
            .position(|&c| {
                c == if level == 0 {
                    Compression::Off
                } else {
                    Compression::Zstd(level)
                }
            })
            .unwrap_or(0) as i32;
        AdaptiveLevel {
            step: AtomicI32::new(start),
            adaptive,
            wait_cpu: AtomicU64::new(0),
            wait_link: AtomicU64::new(0),
            incompressible: AtomicU32::new(0),
            read_at: (0..ladder.len()).map(|_| AtomicU64::new(0)).collect(),
            held: AtomicU64::new(0),
            join_from: AtomicI32::new(JOIN_FROM_LEVEL),
            ladder,
        }
    }

    /// Whether the CPU threads join consecutive reads into one extent at the level in use:
    /// larger frames compress better, and the read-ahead stands aside (the CPU threads read
    /// joined items themselves).
    pub fn joins(&self) -> bool {
        matches!(self.current(), Compression::Zstd(l) if l >= self.join_from.load(Ordering::Relaxed))
    }

    /// Joins reads at every zstd level: for a sender under a CPU budget. There the budget,
    /// not the device, paces the reads, and a frame of a joined 4 MiB read costs less CPU
    /// per byte than four of 1 MiB and is smaller (the bench's text at level 1: 2 MiB frames
    /// against 512 KiB, 6 % less time and 3 % fewer bytes; −1 likewise;
    /// `bench/results/ANALYSIS.md`, session 20). Without a budget the cheap levels serve fast
    /// links, which need the read-ahead (cold sources), so they keep 1 MiB reads.
    pub fn join_under_budget(&self) {
        self.join_from.store(i32::MIN, Ordering::Relaxed);
    }

    /// `n` source bytes were read for extents prepared at the level in use now.
    pub fn note_read(&self, n: u64) {
        self.read_at[self.step_in_use() as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// What the controller did so far.
    pub fn report(&self) -> LevelReport {
        LevelReport {
            read_bytes_by_level: self
                .ladder
                .iter()
                .zip(&self.read_at)
                .map(|(c, n)| (c, n.load(Ordering::Relaxed)))
                .filter(|&(_, n)| n > 0)
                .map(|(c, n)| {
                    let name = match c {
                        Compression::Off => "off".to_string(),
                        Compression::Zstd(l) => l.to_string(),
                    };
                    (name, n)
                })
                .collect(),
            climbs_held: self.held.load(Ordering::Relaxed),
        }
    }

    /// The highest step of the ladder (step 0 is no compression).
    pub fn top(&self) -> i32 {
        self.ladder.len() as i32 - 1
    }

    /// The ladder, step 0 (no compression) first.
    pub fn ladder(&self) -> &[Compression] {
        &self.ladder
    }

    /// The ladder step in use now.
    pub fn step_in_use(&self) -> i32 {
        self.step.load(Ordering::Relaxed).clamp(0, self.top())
    }

    /// Sets the ladder step (clamped to the ladder), for the CPU budget (`crate::cpu`),
    /// which chooses the level itself: it measures what each level costs and buys.
    pub fn set_step(&self, step: i32) {
        self.step
            .store(step.clamp(0, self.top()), Ordering::Relaxed);
    }

    /// The level to use now.
    pub fn current(&self) -> Compression {
        self.ladder[self.step_in_use() as usize]
    }

    /// A stream waited `d` for a prepared extent (the CPU stages are behind).
    pub fn waited_for_cpu(&self, d: Duration) {
        self.wait_cpu
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A stream waited `d` for a prepared extent; `first`: its first one, which is not
    /// counted. A stream's first wait is for the pipeline to fill (the disk's first reads
    /// and frames, and at a run's start the control exchanges before the copy begins), not
    /// for a compressor that is slower than the link: counted, it outweighed the link's
    /// waits at the first tick and stepped a 100 Mbit/s run down from its start level
    /// (1 → -1) before it climbed (bench/results/ANALYSIS.md, session 14, C21Z2).
    pub fn waited_for_extent(&self, d: Duration, first: bool) {
        if !first {
            self.waited_for_cpu(d);
        }
    }

    /// A stream waited `d` for the link (throttle or send window).
    pub fn waited_for_link(&self, d: Duration) {
        self.wait_link
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Forgets the waits so far: the streams' first wait, for the first extents to be read
    /// and compressed, says nothing about the link.
    pub fn discard_waits(&self) {
        self.wait_cpu.store(0, Ordering::Relaxed);
        self.wait_link.store(0, Ordering::Relaxed);
    }

    /// Decides from the waits since the last tick, assuming spare CPU; returns the step
    /// taken (-1, 0, +1).
    pub fn tick(&self) -> i32 {
        self.tick_with_spare_cpu(true)
    }

    /// As [`AdaptiveLevel::tick`]; without spare CPU the level never climbs.
    pub fn tick_with_spare_cpu(&self, spare: bool) -> i32 {
        let dir = self.bottleneck();
        self.move_by(dir, spare)
    }

    /// Where the streams waited since the last call, and forgets the waits: +1 mostly for
    /// the link (compression could spend more CPU on ratio), -1 mostly for prepared extents
    /// (the CPU stages are behind), 0 neither clearly or hardly any waits.
    pub fn bottleneck(&self) -> i32 {
        let cpu = self.wait_cpu.swap(0, Ordering::Relaxed) as f64;
        let link = self.wait_link.swap(0, Ordering::Relaxed) as f64;
        if cpu + link < 1e6 {
            0
        } else if link / (cpu + link) > MOVE_SHARE {
            1
        } else if cpu / (cpu + link) > MOVE_SHARE {
            -1
        } else {
            0
        }
    }

    /// Moves one step in the direction `bottleneck` (from [`AdaptiveLevel::bottleneck`]):
    /// up when the link waits and `spare` says there is CPU to spend, down when the CPU
    /// stages are behind. Returns the step taken; a fixed level never moves.
    fn move_by(&self, bottleneck: i32, spare: bool) -> i32 {
        if !self.adaptive {
            return 0;
        }
        if bottleneck == 1 && !spare && self.step_in_use() < self.top() {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        let dir = match bottleneck {
            1 => i32::from(spare),
            -1 => -1,
            _ => 0,
        };
        if dir != 0 {
            let top = self.top();
            if let Ok(was) = self
                .step
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some((s + dir).clamp(0, top))
                })
            {
                let (was, now) = (was.clamp(0, top), (was + dir).clamp(0, top));
                if was != now {
                    tracing::debug!(from = ?self.ladder[was as usize],
                                    to = ?self.ladder[now as usize], "compression level");
                }
            }
        }
        dir
    }

    /// An extent did not compress; counted for the summary.
    pub fn note_incompressible(&self) {
        self.incompressible.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the compression controller of a sender's run until aborted: it decides every
/// [`tick_after`], often at first with a small prepared budget (`prepared` starts at
/// [`WARMUP_BUDGET`](super::WARMUP_BUDGET)), so that little of the disk is compressed at a
/// level chosen before the link was seen; after [`WARMUP`] the whole
/// [`PREPARED_BUDGET`](super::PREPARED_BUDGET).
///
/// Without a CPU budget it moves by the waits, and climbs only while the host has idle CPU
/// ([`CpuIdle`]). Under a budget (`--cpu-limit`) `steer` gets the waits' verdict
/// ([`AdaptiveLevel::bottleneck`]) each tick, chooses the level itself and returns true: the
/// budget's governor (`cpu::Governor::choose`) measures what each level costs per source byte
/// and buys on the link, where the waits alone would step down whenever the budget holds the
/// CPU back — to levels that cost as much per source byte and put more bytes on the wire. It
/// returns false without a budget.
pub async fn run_controller(
    level: Arc<AdaptiveLevel>,
    prepared: Arc<super::MemoryBudget>,
    steer: impl Fn(i32) -> bool,
) {
    let mut idle = CpuIdle::default();
    let start = crate::clock::std_now();
    let mut warm = false;
    tokio::time::sleep(tick_after(start.elapsed())).await;
    level.discard_waits();
    idle.spare();
    loop {
        tokio::time::sleep(tick_after(start.elapsed())).await;
        let bottleneck = level.bottleneck();
        if !steer(bottleneck) {
            let spare = idle.spare();
            level.move_by(bottleneck, spare);
        }
        if !warm && start.elapsed() >= WARMUP {
            prepared.set_total(super::PREPARED_BUDGET);
            warm = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_level_climbs_past_the_configured_one_while_the_link_is_the_bottleneck() {
        let a = AdaptiveLevel::new(1, true);
        assert_eq!(a.current(), Compression::Zstd(1));
        for _ in 0..10 {
            a.waited_for_link(ms(200));
            a.waited_for_cpu(ms(10));
            a.tick();
        }
        assert_eq!(a.current(), Compression::Zstd(MAX_ADAPTIVE_LEVEL));
    }

    #[test]
    fn the_level_falls_to_off_while_the_link_waits_for_the_compressor() {
        let a = AdaptiveLevel::new(3, true);
        for _ in 0..10 {
            a.waited_for_cpu(ms(200));
            a.waited_for_link(ms(5));
            a.tick();
        }
        assert_eq!(a.current(), Compression::Off);
        // Balanced waits hold the level; no waits at all decide nothing.
        a.waited_for_cpu(ms(100));
        a.waited_for_link(ms(100));
        assert_eq!(a.tick(), 0);
        assert_eq!(a.tick(), 0);
    }

    #[test]
    fn without_spare_cpu_a_waiting_link_holds_the_level_but_a_waiting_link_still_lowers_it() {
        let a = AdaptiveLevel::new(1, true);
        for _ in 0..5 {
            a.waited_for_link(ms(200));
            assert_eq!(a.tick_with_spare_cpu(false), 0);
        }
        assert_eq!(a.current(), Compression::Zstd(1));
        a.waited_for_cpu(ms(200));
        assert_eq!(a.tick_with_spare_cpu(false), -1);
    }

    #[test]
    fn the_report_counts_reads_at_each_level_used() {
        let a = AdaptiveLevel::new(0, true);
        a.note_read(100);
        a.set_step(3);
        a.note_read(7);
        a.note_read(3);
        let r = a.report();
        assert_eq!(
            r.read_bytes_by_level,
            vec![("off".to_string(), 100), ("1".to_string(), 10)]
        );
    }

    #[test]
    fn the_controller_decides_often_while_a_run_starts() {
        assert_eq!(tick_after(Duration::ZERO), WARMUP_TICK);
        assert_eq!(tick_after(ms(950)), WARMUP_TICK);
        assert_eq!(tick_after(WARMUP), TICK);
        // Warm-up reaches the top of the ladder from level 3 well within it.
        let a = AdaptiveLevel::new(3, true);
        let mut t = Duration::ZERO;
        while a.current() != Compression::Zstd(MAX_ADAPTIVE_LEVEL) {
            t += tick_after(t);
            a.waited_for_link(ms(40));
            a.tick();
        }
        assert!(t <= ms(150), "{t:?}");
    }

    #[test]
    fn the_streams_first_waits_for_the_pipeline_to_fill_do_not_step_the_level_down() {
        // A 100 Mbit/s run's first tick (session 14): four streams waited ~200 ms each for
        // their first extents (the control exchanges before the copy, the first reads and
        // frames), then the link held each of them ~40 ms. Counted, the fill outweighs the
        // link 20 to 1 and the level steps down from its start.
        let run = |count_first: bool| {
            let a = AdaptiveLevel::new(1, true);
            for _ in 0..4 {
                if count_first {
                    a.waited_for_cpu(ms(200));
                } else {
                    a.waited_for_extent(ms(200), true);
                }
                a.waited_for_link(ms(40));
                a.waited_for_extent(ms(2), false);
            }
            a.tick();
            a.current()
        };
        assert_eq!(run(true), Compression::Zstd(-1));
        assert_eq!(run(false), Compression::Zstd(3));
        // Later waits for extents count as before: a compressor behind the link steps down.
        let a = AdaptiveLevel::new(3, true);
        a.waited_for_extent(ms(200), false);
        a.waited_for_link(ms(10));
        assert_eq!(a.tick(), -1);
    }

    #[test]
    fn a_step_set_for_the_budget_holds_until_the_waits_move_it() {
        let a = AdaptiveLevel::new(3, true);
        a.set_step(1);
        assert_eq!(a.current(), Compression::Zstd(-3));
        assert_eq!(a.step_in_use(), 1);
        a.set_step(-5);
        assert_eq!(a.current(), Compression::Off);
        a.set_step(99);
        assert_eq!(a.current(), Compression::Zstd(MAX_ADAPTIVE_LEVEL));
        // The waits' verdict is read once: it forgets them.
        a.waited_for_cpu(ms(200));
        assert_eq!(a.bottleneck(), -1);
        assert_eq!(a.bottleneck(), 0);
        a.waited_for_link(ms(200));
        a.waited_for_cpu(ms(10));
        assert_eq!(a.bottleneck(), 1);
    }

    #[test]
    fn reads_join_from_level_six_and_under_a_cpu_budget_at_every_zstd_level() {
        let a = AdaptiveLevel::new(1, true);
        let joins_at = |a: &AdaptiveLevel| {
            (0..=a.top())
                .filter(|&s| {
                    a.set_step(s);
                    a.joins()
                })
                .map(|s| a.ladder()[s as usize])
                .collect::<Vec<_>>()
        };
        let z = Compression::Zstd;
        assert_eq!(joins_at(&a), [z(6), z(MAX_ADAPTIVE_LEVEL)]);
        a.join_under_budget();
        assert_eq!(
            joins_at(&a),
            [z(-3), z(-1), z(1), z(3), z(6), z(MAX_ADAPTIVE_LEVEL)],
            "not off: raw reads gain nothing from joining and keep the read-ahead"
        );
    }

    #[test]
    fn a_fixed_level_never_moves() {
        let f = AdaptiveLevel::new(1, false);
        f.waited_for_link(ms(500));
        f.tick();
        assert_eq!(f.current(), Compression::Zstd(1));
        assert_eq!(AdaptiveLevel::new(0, false).current(), Compression::Off);
    }
}

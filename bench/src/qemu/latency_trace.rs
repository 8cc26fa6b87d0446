//! Every write of one `qemu-latency` run (`nbd_writer.py latency ... TRACE_FILE`) and what
//! the bench reads from them beyond the writer's percentiles: how many writes a view makes
//! slow, and whether the slow writes fall inside the sender's views.
//!
//! A view costs the guest while it lives: from the switch's transaction (the
//! copy-before-write filter goes in) until the view is removed after its cycle. Its window
//! is read from the sender's JSON log: it opens at the switch's line (logged after the
//! transaction and the exports, a few milliseconds late, so the window opens
//! [`OPEN_EARLY`] seconds before the line) and closes at the views-removed line (a binary
//! older than that line: at the VM point's line, which follows the removal).

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::{msg, Event};

/// Seconds a view's window opens before the switch's log line.
pub const OPEN_EARLY: f64 = 0.05;
/// A write counts as slow above this many times the round's unprotected median.
pub const SLOW_FACTOR: f64 = 2.0;
/// The copy-before-write unit of qemu 10.0 (`block-copy`'s minimum cluster): the first
/// guest write to each such block of a living view waits for its copy.
pub const CBW_BLOCK: u64 = 64 << 10;

/// The writes of one run, in order.
#[derive(Debug, Default)]
pub struct Trace {
    /// Start of each write, Unix seconds.
    pub start: Vec<f64>,
    /// Latency of each write, microseconds.
    pub lat_us: Vec<f64>,
    /// Offset of each write, bytes.
    pub offset: Vec<u64>,
}

impl Trace {
    /// Reads the writer's trace of `writes` writes.
    pub fn read(path: &Path, writes: usize) -> anyhow::Result<Trace> {
        let b = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        Trace::parse(&b, writes).with_context(|| format!("{}", path.display()))
    }

    /// Parses N int64 start times (Unix ns), N uint32 latencies (ns) and N uint32 offsets
    /// (4 KiB units), little-endian.
    pub fn parse(b: &[u8], n: usize) -> anyhow::Result<Trace> {
        if b.len() != n * 16 {
            bail!("{} bytes for {n} writes (expected {})", b.len(), n * 16);
        }
        let (starts, rest) = b.split_at(n * 8);
        let (lats, offs) = rest.split_at(n * 4);
        let u32s = |s: &[u8]| -> Vec<u32> {
            s.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        Ok(Trace {
            start: starts
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    i64::from_le_bytes(a) as f64 / 1e9
                })
                .collect(),
            lat_us: u32s(lats).into_iter().map(|x| x as f64 / 1e3).collect(),
            offset: u32s(offs).into_iter().map(|x| x as u64 * 4096).collect(),
        })
    }

    /// The run's first and last write start, Unix seconds.
    pub fn span(&self) -> (f64, f64) {
        (
            self.start.first().copied().unwrap_or(0.0),
            self.start.last().copied().unwrap_or(0.0),
        )
    }

    /// The share of writes slower than `threshold_us`.
    pub fn share_above(&self, threshold_us: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        self.lat_us.iter().filter(|&&l| l > threshold_us).count() as f64 / self.lat_us.len() as f64
    }
}

/// Percentiles of a set of writes (nearest rank, as the writer computes them).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// How many writes.
    pub writes: u64,
    /// Their median latency, microseconds.
    pub median_us: f64,
    /// Their 90th percentile.
    pub p90_us: f64,
    /// Their 99th percentile: the tail figure.
    pub p99_us: f64,
    /// Their mean: with the count, the guest's total time.
    pub mean_us: f64,
}

impl Summary {
    /// Of `lat` (microseconds, any order).
    pub fn of(mut lat: Vec<f64>) -> Summary {
        if lat.is_empty() {
            return Summary::default();
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i]
        };
        Summary {
            writes: lat.len() as u64,
            median_us: pct(0.5),
            p90_us: pct(0.9),
            p99_us: pct(0.99),
            mean_us: lat.iter().sum::<f64>() / lat.len() as f64,
        }
    }
}

/// One view's window in a protected run and the writes it saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewWindow {
    /// Window start, seconds from the run's first write (clipped to the run).
    pub from_s: f64,
    /// Window end, likewise.
    pub to_s: f64,
    /// The switch's generation, from its log line.
    pub generation: u64,
    /// Writes that started inside the window.
    pub writes: u64,
    /// Of those, the first to their 64 KiB block since the window opened (each waits for a
    /// copy-before-write).
    pub first_to_block: u64,
    /// Of those, the slow ones (above [`SLOW_FACTOR`] × the unprotected median).
    pub slow: u64,
    /// The guest's time the view cost: the window's writes' total latency minus as many
    /// writes at the run's median outside the views, milliseconds.
    pub excess_ms: f64,
}

/// Where a protected run's writes fell: inside the views' windows or outside.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attribution {
    /// The views whose window overlapped the run.
    pub views: Vec<ViewWindow>,
    /// Writes inside any window.
    pub inside: Summary,
    /// Writes outside every window: the protected run's own baseline.
    pub outside: Summary,
    /// Writes that were the first to their 64 KiB block in their window.
    pub first_to_block: Summary,
    /// Slow writes (above [`SLOW_FACTOR`] × the unprotected median) inside the windows.
    pub slow_inside: u64,
    /// Slow writes outside them (the noise the views are not to blame for).
    pub slow_outside: u64,
}

/// The views' windows `(generation, open, close)` (Unix seconds) of a sender's log.
pub fn windows(events: &[Event]) -> Vec<(u64, f64, f64)> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if !e.message.contains(msg::SWITCH) {
            continue;
        }
        let generation = e.fields["generation"].as_u64().unwrap_or(0);
        let later = &events[i + 1..];
        let end = later
            .iter()
            .find(|x| x.message.contains(msg::VIEWS_REMOVED))
            .or_else(|| later.iter().find(|x| x.message.contains(msg::POINT)))
            .map_or(f64::INFINITY, |x| x.t);
        out.push((generation, e.t - OPEN_EARLY, end));
    }
    out
}

/// Splits a protected run's writes by `windows`; `slow_us` is the slow threshold.
pub fn attribute(t: &Trace, windows: &[(u64, f64, f64)], slow_us: f64) -> Attribution {
    let (first, last) = t.span();
    let mut inside = Vec::new();
    let mut outside = Vec::new();
    let mut first_lat = Vec::new();
    let mut views = Vec::new();
    let mut in_any = vec![false; t.start.len()];
    for &(generation, open, close) in windows {
        if close < first || open > last {
            continue;
        }
        let mut seen = std::collections::HashSet::new();
        let mut w = ViewWindow {
            from_s: (open - first).max(0.0),
            to_s: close.min(last) - first,
            generation,
            writes: 0,
            first_to_block: 0,
            slow: 0,
            excess_ms: 0.0,
        };
        let lo = t.start.partition_point(|&s| s < open);
        let hi = t.start.partition_point(|&s| s <= close).max(lo);
        in_any[lo..hi].fill(true);
        for (&lat, &off) in t.lat_us[lo..hi].iter().zip(&t.offset[lo..hi]) {
            w.writes += 1;
            if lat > slow_us {
                w.slow += 1;
            }
            if seen.insert(off / CBW_BLOCK) {
                w.first_to_block += 1;
                first_lat.push(lat);
            }
            w.excess_ms += lat / 1e3;
        }
        views.push(w);
    }
    for (i, &l) in t.lat_us.iter().enumerate() {
        if in_any[i] {
            inside.push(l);
        } else {
            outside.push(l);
        }
    }
    let outside = Summary::of(outside);
    for w in &mut views {
        w.excess_ms -= w.writes as f64 * outside.median_us / 1e3;
    }
    Attribution {
        slow_inside: inside.iter().filter(|&&l| l > slow_us).count() as u64,
        slow_outside: t
            .lat_us
            .iter()
            .zip(&in_any)
            .filter(|(&l, &ins)| !ins && l > slow_us)
            .count() as u64,
        views,
        inside: Summary::of(inside),
        outside,
        first_to_block: Summary::of(first_lat),
    }
}

/// The median of `xs` (the mean of the middle two for an even count); 0 when empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(starts_ns: &[i64], lat_ns: &[u32], slots: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        for s in starts_ns {
            b.extend_from_slice(&s.to_le_bytes());
        }
        for l in lat_ns {
            b.extend_from_slice(&l.to_le_bytes());
        }
        for o in slots {
            b.extend_from_slice(&o.to_le_bytes());
        }
        b
    }

    fn event(t: f64, message: &str, generation: u64) -> Event {
        Event {
            t,
            message: message.to_string(),
            fields: serde_json::json!({ "generation": generation }),
        }
    }

    #[test]
    fn a_trace_reads_back_and_a_short_one_is_refused() {
        let b = bytes(
            &[1_000_000_000, 2_500_000_000],
            &[50_000, 400_000],
            &[0, 17],
        );
        let t = Trace::parse(&b, 2).unwrap();
        assert_eq!(t.start, vec![1.0, 2.5]);
        assert_eq!(t.lat_us, vec![50.0, 400.0]);
        assert_eq!(t.offset, vec![0, 17 * 4096]);
        assert_eq!(t.share_above(100.0), 0.5);
        assert!(Trace::parse(&b[..b.len() - 1], 2).is_err());
        assert!(Trace::parse(&b, 3).is_err());
    }

    #[test]
    fn slow_writes_inside_a_view_window_are_attributed_to_it() {
        // Ten writes at t = 100.0 .. 100.9; a view from the switch line at 100.33 to its
        // removal at 100.62: writes 3..=6 inside (the window opens OPEN_EARLY early).
        let starts: Vec<i64> = (0..10).map(|i| 100_000_000_000 + i * 100_000_000).collect();
        let lat = [50, 50, 50, 300, 300, 50, 50, 50, 50, 400].map(|us| us * 1000);
        // Writes 3 and 4 hit the same 64 KiB block (slots 16 and 17), 5 and 6 others.
        let slots = [0, 1, 2, 16, 17, 40, 80, 3, 4, 5];
        let t = Trace::parse(&bytes(&starts, &lat, &slots), 10).unwrap();
        let ev = [
            event(100.33, msg::SWITCH, 7),
            event(100.62, msg::VIEWS_REMOVED, 7),
            event(100.63, msg::POINT, 0),
        ];
        let w = windows(&ev);
        assert_eq!(w.len(), 1);
        let a = attribute(&t, &w, 100.0);
        assert_eq!(a.views.len(), 1);
        let v = &a.views[0];
        assert_eq!(
            (v.generation, v.writes, v.first_to_block, v.slow),
            (7, 4, 3, 2)
        );
        assert!((v.from_s - 0.28).abs() < 1e-6 && (v.to_s - 0.62).abs() < 1e-6);
        // 300 + 300 + 50 + 50 µs against 4 × the outside median (50 µs).
        assert!((v.excess_ms - 0.5).abs() < 1e-9, "{}", v.excess_ms);
        assert_eq!((a.slow_inside, a.slow_outside), (2, 1));
        assert_eq!(a.inside.writes + a.outside.writes, 10);
        assert_eq!(a.outside.median_us, 50.0);
    }

    #[test]
    fn without_a_removal_line_the_view_ends_at_the_point_or_at_the_run_end() {
        let ev = [
            event(10.0, msg::SWITCH, 1),
            event(13.0, msg::POINT, 0),
            event(40.0, msg::SWITCH, 2),
        ];
        let w = windows(&ev);
        assert_eq!(w[0], (1, 10.0 - OPEN_EARLY, 13.0));
        assert_eq!(w[1].0, 2);
        assert!(w[1].2.is_infinite());
        let t = Trace::parse(&bytes(&[41_000_000_000], &[60_000], &[0]), 1).unwrap();
        let a = attribute(&t, &w, 100.0);
        // The first view ended before the run: only the second counts, clipped to the run.
        assert_eq!(a.views.len(), 1);
        assert_eq!(a.views[0].to_s, 0.0);
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let s = Summary::of((1..=100).map(f64::from).collect());
        assert_eq!((s.median_us, s.p90_us, s.p99_us), (50.0, 90.0, 99.0));
    }
}

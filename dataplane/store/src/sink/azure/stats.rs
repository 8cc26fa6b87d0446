//! Counters of a disk's Put Page pipeline, logged at debug level (`VDREP_LOG=
//! vdrep::sink::azure=debug`) every few seconds and when the disk closes: how many Put
//! Pages were in flight on average, their sizes, and how long writers and checkpoints
//! waited. They say where the time of an upload goes (is the pipe kept full, are the pages
//! full-sized) without a profiler; the figures in `bench/results/azure.md` come from them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::blob::MAX_PUT_PAGE;

/// How often a summary is logged while writes go on.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Size classes of Put Pages: `< 1 MiB`, `< 2 MiB`, `< 3 MiB`, `< 4 MiB`, `= 4 MiB`.
const CLASSES: usize = 5;

#[derive(Default)]
struct Window {
    puts: u64,
    bytes: u64,
    sizes: [u64; CLASSES],
    /// ∫ in-flight dt, in seconds × Put Pages.
    in_flight_area: f64,
    max_in_flight: usize,
    /// Time writers spent blocked (sending inline, or waiting for room).
    writer_wait: Duration,
    /// Time checkpoints and commits spent waiting for buffered pages.
    flush_wait: Duration,
    flushes: u64,
    /// Runs taken out of the coalescer: full, evicted, stale, flushed.
    taken: [u64; 4],
}

struct State {
    window: Window,
    started: Instant,
    last_change: Instant,
    in_flight: usize,
}

/// The counters of one disk.
pub(super) struct PutStats {
    s: Mutex<State>,
}

/// The size class of a Put Page of `len` bytes.
fn class_of(len: usize) -> usize {
    if len >= MAX_PUT_PAGE {
        CLASSES - 1
    } else {
        (len >> 20).min(CLASSES - 2)
    }
}

impl PutStats {
    pub(super) fn new() -> PutStats {
        let now = crate::clock::std_now();
        PutStats {
            s: Mutex::new(State {
                window: Window::default(),
                started: now,
                last_change: now,
                in_flight: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.s.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn step(s: &mut State, now: Instant, delta: isize) {
        s.window.in_flight_area +=
            s.in_flight as f64 * now.duration_since(s.last_change).as_secs_f64();
        s.last_change = now;
        s.in_flight = s.in_flight.saturating_add_signed(delta);
        s.window.max_in_flight = s.window.max_in_flight.max(s.in_flight);
    }

    /// A Put Page starts.
    pub(super) fn put_started(&self) {
        Self::step(&mut self.lock(), crate::clock::std_now(), 1);
    }

    /// A Put Page of `len` bytes ended (successfully or not).
    pub(super) fn put_ended(&self, len: usize) {
        let mut s = self.lock();
        Self::step(&mut s, crate::clock::std_now(), -1);
        s.window.puts += 1;
        s.window.bytes += len as u64;
        s.window.sizes[class_of(len)] += 1;
    }

    /// A writer was blocked for `d`.
    pub(super) fn writer_waited(&self, d: Duration) {
        self.lock().window.writer_wait += d;
    }

    /// Runs taken out of the coalescer, by reason ([`super::coalesce::Why`]).
    pub(super) fn taken(&self, counts: [u64; 4]) {
        let mut s = self.lock();
        for (t, c) in s.window.taken.iter_mut().zip(counts) {
            *t += c;
        }
    }

    /// A checkpoint or commit waited `d` for buffered pages.
    pub(super) fn flush_waited(&self, d: Duration) {
        let mut s = self.lock();
        s.window.flush_wait += d;
        s.window.flushes += 1;
    }

    /// Logs the window's summary if it is old enough (or `force`) and starts a new one.
    pub(super) fn report(&self, blob: &str, force: bool) {
        let mut s = self.lock();
        let now = crate::clock::std_now();
        let secs = now.duration_since(s.started).as_secs_f64();
        if !force && (secs < REPORT_EVERY.as_secs_f64() || s.window.puts == 0) {
            return;
        }
        Self::step(&mut s, now, 0);
        let w = std::mem::take(&mut s.window);
        s.started = now;
        s.window.max_in_flight = s.in_flight;
        if w.puts == 0 {
            return;
        }
        tracing::debug!(
            blob,
            secs = format!("{secs:.1}"),
            put_pages = w.puts,
            mb_per_s = format!("{:.1}", w.bytes as f64 / secs.max(1e-9) / 1e6),
            avg_mib = format!("{:.2}", w.bytes as f64 / w.puts as f64 / (1 << 20) as f64),
            sizes_mib_lt1_lt2_lt3_lt4_eq4 = ?w.sizes,
            avg_in_flight = format!("{:.2}", w.in_flight_area / secs.max(1e-9)),
            max_in_flight = w.max_in_flight,
            writer_wait_s = format!("{:.2}", w.writer_wait.as_secs_f64()),
            flush_wait_s = format!("{:.2}", w.flush_wait.as_secs_f64()),
            flushes = w.flushes,
            runs_full_evicted_stale_flushed = ?w.taken,
            "azure put page stats"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_pages_are_classed_by_whole_mib_with_full_pages_apart() {
        assert_eq!(class_of(512), 0);
        assert_eq!(class_of((1 << 20) - 512), 0);
        assert_eq!(class_of(1 << 20), 1);
        assert_eq!(class_of((3 << 20) + 512), 3);
        assert_eq!(class_of(MAX_PUT_PAGE - 512), 3);
        assert_eq!(class_of(MAX_PUT_PAGE), 4);
    }
}

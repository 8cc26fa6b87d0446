//! Progress bars on a terminal, a progress line a minute otherwise (a journal gets 60 lines
//! an hour, each with percent, rate and ETA), nothing with `--no-progress`, and the
//! end-of-run summary.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Clock;
use crate::pipeline::Stats;

/// How often a sender without a terminal logs its progress.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Live progress of a run.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Nothing unless `enabled`; then a bar over `total` source bytes when stderr is a
    /// terminal, otherwise a log line every [`LOG_EVERY`].
    pub fn new(enabled: bool, total: u64, stats: Arc<Stats>) -> Self {
        if !enabled {
            return Progress {
                bar: None,
                ticker: None,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let b = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    b.set_position(Stats::get(&stats.done).min(total));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Progress {
                bar: Some(bar),
                ticker: Some(ticker),
            }
        } else {
            let ticker = tokio::spawn(log_lines(total, stats, |line| tracing::info!("{line}")));
            Progress {
                bar: None,
                ticker: Some(ticker),
            }
        }
    }

    /// Whether anything shows progress (a bar or periodic lines).
    #[cfg(test)]
    fn is_active(&self) -> bool {
        self.ticker.is_some()
    }

    /// Stops the bar.
    pub fn finish(&self) {
        if let Some(t) = &self.ticker {
            t.abort();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// What a run did, for the operator and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Virtual bytes of all disks.
    pub total_bytes: u64,
    /// Bytes read from the sources.
    pub read_bytes: u64,
    /// Bytes found zero inside allocated ranges (not sent as data).
    pub skipped_zero_bytes: u64,
    /// Bytes skipped as unallocated (never read).
    pub skipped_unallocated_bytes: u64,
    /// Uncompressed bytes sent as data.
    pub data_bytes: u64,
    /// Bytes on the wire (frames; QUIC/TLS overhead not included).
    pub wire_bytes: u64,
    /// Resync hash-exchange bytes on the wire, both directions (not in `wire_bytes`).
    pub hash_bytes: u64,
    /// Bytes resyncs found different and sent (uncompressed).
    pub resync_changed_bytes: u64,
    /// data / payload.
    pub compression_ratio: f64,
    /// Extents acknowledged.
    pub extents: u64,
    /// Extents resent after a refusal.
    pub resent_extents: u64,
    /// Reconnects.
    pub retries: u64,
    /// Wall time.
    pub seconds: f64,
    /// Virtual bytes per second.
    pub throughput_bytes_per_sec: f64,
    /// CPU seconds (user + system, all threads) the sender process used from its start to
    /// the end of the run: what replication cost the host, beside what it achieved.
    pub cpu_seconds: f64,
    /// What the compression controller did: source bytes read at each level, and how often
    /// it held instead of climbing for want of spare CPU.
    pub compression: crate::pipeline::LevelReport,
}

impl Summary {
    pub(crate) fn from_stats(s: &Stats, total: u64, elapsed: Duration) -> Self {
        let data = Stats::get(&s.data);
        let payload = Stats::get(&s.payload).max(1);
        let secs = elapsed.as_secs_f64().max(1e-9);
        Summary {
            total_bytes: total,
            read_bytes: Stats::get(&s.read),
            skipped_zero_bytes: Stats::get(&s.skipped_zero),
            skipped_unallocated_bytes: total.saturating_sub(Stats::get(&s.read)),
            data_bytes: data,
            wire_bytes: Stats::get(&s.wire),
            hash_bytes: Stats::get(&s.hash_wire),
            resync_changed_bytes: Stats::get(&s.resync_changed),
            compression_ratio: if data == 0 {
                1.0
            } else {
                data as f64 / payload as f64
            },
            extents: Stats::get(&s.extents),
            resent_extents: Stats::get(&s.resent),
            retries: Stats::get(&s.retries),
            seconds: secs,
            throughput_bytes_per_sec: total as f64 / secs,
            cpu_seconds: crate::cpu::process_cpu_time().as_secs_f64(),
            compression: Default::default(),
        }
    }

    /// One line for logs.
    pub fn one_line(&self) -> String {
        format!(
            "replicated {} in {:.1} s ({}/s): read {}, skipped {} zero + {} unallocated, wire {} data + {} hashes, compression {:.2}x, {} extents, {} resent, {} retries, {:.1} CPU-s",
            human(self.total_bytes),
            self.seconds,
            human(self.throughput_bytes_per_sec as u64),
            human(self.read_bytes),
            human(self.skipped_zero_bytes),
            human(self.skipped_unallocated_bytes),
            human(self.wire_bytes),
            human(self.hash_bytes),
            self.compression_ratio,
            self.extents,
            self.resent_extents,
            self.retries,
            self.cpu_seconds
        )
    }
}

/// Emits a progress line every [`LOG_EVERY`] (the first after one interval) until aborted.
async fn log_lines(total: u64, stats: Arc<Stats>, emit: impl Fn(String)) {
    let clock = crate::clock::process();
    let mut last = (
        Stats::get(&stats.done),
        Stats::get(&stats.wire),
        clock.now(),
    );
    loop {
        tokio::time::sleep(LOG_EVERY).await;
        let now = (
            Stats::get(&stats.done),
            Stats::get(&stats.wire),
            clock.now(),
        );
        let secs = now.2.saturating_duration_since(last.2).as_secs_f64();
        emit(progress_line(
            now.0,
            total,
            now.0.saturating_sub(last.0) as f64 / secs.max(1e-3),
            now.1.saturating_sub(last.1) as f64 / secs.max(1e-3),
        ));
        last = now;
    }
}

/// `progress 42.0 % (1.2 GiB of 2.9 GiB), 35.1 MiB/s read, wire 95.3 Mbit/s, ETA 50s`: rates
/// over the last interval, the ETA at that pace.
pub fn progress_line(done: u64, total: u64, done_per_sec: f64, wire_per_sec: f64) -> String {
    let pct = if total == 0 {
        100.0
    } else {
        done.min(total) as f64 * 100.0 / total as f64
    };
    let left = total.saturating_sub(done);
    let eta = if left == 0 {
        "done".to_string()
    } else if done_per_sec < 1.0 {
        "unknown".to_string()
    } else {
        human_duration(Duration::from_secs_f64(left as f64 / done_per_sec))
    };
    format!(
        "progress {pct:.1} % ({} of {}), {}/s read, wire {}, ETA {eta}",
        human(done.min(total)),
        human(total),
        human(done_per_sec as u64),
        mbit(wire_per_sec)
    )
}

/// A rate in bytes per second as Mbit/s, the unit bandwidth limits are set in.
pub fn mbit(bytes_per_sec: f64) -> String {
    format!("{:.1} Mbit/s", bytes_per_sec * 8.0 / 1e6)
}

/// A duration for people: `45s`, `3m 20s`, `2h 05m`, `3d 04h`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Seconds for a log line: milliseconds at most (`0.004`, not `4.78e-6`), still a number
/// for JSON logs.
pub fn log_secs(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// Bytes in binary units for people.
pub fn human(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    #[test]
    fn a_progress_line_has_percent_rate_and_eta() {
        let gib = 1u64 << 30;
        assert_eq!(
            progress_line(gib, 4 * gib, 100.0 * (1 << 20) as f64, 12_500_000.0),
            "progress 25.0 % (1.0 GiB of 4.0 GiB), 100.0 MiB/s read, wire 100.0 Mbit/s, ETA 30s"
        );
        assert!(progress_line(0, gib, 0.0, 0.0).ends_with("ETA unknown"));
        assert!(progress_line(gib, gib, 0.0, 0.0).starts_with("progress 100.0 %"));
        assert_eq!(human_duration(Duration::from_secs(200)), "3m 20s");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h 05m");
        assert_eq!(format!("{:?}", log_secs(4.78e-6)), "0.0");
        assert_eq!(format!("{:?}", log_secs(1.23456)), "1.235");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_terminal_progress_is_logged_once_a_minute() {
        let stats = Arc::new(Stats::default());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let st = stats.clone();
        let task = tokio::spawn(log_lines(1 << 30, st, move |line| {
            l.lock().unwrap().push(line)
        }));
        // The ticker takes its first reading, then 60 MiB go in its first minute.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stats.done.fetch_add(60 << 20, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(58)).await;
        assert_eq!(lines.lock().unwrap().len(), 0, "a line before a minute");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(lines.lock().unwrap().len(), 1);
        assert!(
            lines.lock().unwrap()[0].contains("1.0 MiB/s read"),
            "{:?}",
            lines
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(lines.lock().unwrap().len(), 2);
        task.abort();
    }

    #[test]
    fn no_progress_means_no_ticker_at_all() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let p = rt.block_on(async { Progress::new(false, 1 << 20, Arc::new(Stats::default())) });
        assert!(!p.is_active());
    }
}

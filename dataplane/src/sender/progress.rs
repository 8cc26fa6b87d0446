//! Progress bars on a terminal, periodic log lines otherwise, and the end-of-run summary.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::pipeline::Stats;

/// Live progress of a run.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// A bar over `total` source bytes when `enabled` and stderr is a terminal; otherwise a
    /// log line every 10 s.
    pub fn new(enabled: bool, total: u64, stats: Arc<Stats>) -> Self {
        if enabled && std::io::stderr().is_terminal() {
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
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    tracing::info!(
                        done_bytes = Stats::get(&stats.done),
                        total_bytes = total,
                        wire_bytes = Stats::get(&stats.wire),
                        "progress"
                    );
                }
            });
            Progress {
                bar: None,
                ticker: Some(ticker),
            }
        }
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

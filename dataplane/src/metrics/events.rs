//! One function per event: the only place each metric is emitted (vector's "one event type
//! per metric"). Without an installed recorder (tests, operator commands) every call is a
//! cheap no-op.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use metrics::{counter, gauge, histogram, Counter, Gauge};

use super::spec::*;

use crate::health::State as Health;

/// A disk's pipeline counters (sender), registered once per disk so the hot path only adds.
#[derive(Debug)]
pub struct DiskMeter {
    read: Counter,
    skipped_zero: Counter,
    skipped_unallocated: Counter,
    data: Counter,
    wire: Counter,
    extents: Counter,
    ratio: Gauge,
    data_total: AtomicU64,
    payload_total: AtomicU64,
}

impl DiskMeter {
    /// The counters of `vm`/`disk`.
    pub fn new(vm: &str, disk: &str) -> Self {
        let l = [("vm", vm.to_string()), ("disk", disk.to_string())];
        let skipped = |reason: &'static str| counter!(SKIPPED_BYTES, "vm" => vm.to_string(), "disk" => disk.to_string(), "reason" => reason);
        DiskMeter {
            read: counter!(READ_BYTES, &l),
            skipped_zero: skipped("zero"),
            skipped_unallocated: skipped("unallocated"),
            data: counter!(DATA_BYTES, &l),
            wire: counter!(WIRE_BYTES, &l),
            extents: counter!(EXTENTS, &l),
            ratio: gauge!(COMPRESSION_RATIO, &l),
            data_total: AtomicU64::new(0),
            payload_total: AtomicU64::new(0),
        }
    }

    /// Bytes read from the source.
    pub fn read(&self, n: u64) {
        self.read.increment(n);
    }
    /// Bytes found zero after reading.
    pub fn skipped_zero(&self, n: u64) {
        self.skipped_zero.increment(n);
    }
    /// Bytes never read (unallocated or cleared).
    pub fn skipped_unallocated(&self, n: u64) {
        self.skipped_unallocated.increment(n);
    }
    /// A write extent: its uncompressed and payload sizes (updates the ratio).
    pub fn payload(&self, data: u64, payload: u64) {
        self.data.increment(data);
        let d = self.data_total.fetch_add(data, Ordering::Relaxed) + data;
        let p = self.payload_total.fetch_add(payload, Ordering::Relaxed) + payload;
        if p > 0 {
            self.ratio.set(d as f64 / p as f64);
        }
    }
    /// Bytes of frames handed to QUIC.
    pub fn wire(&self, n: u64) {
        self.wire.increment(n);
    }
    /// Extents acknowledged.
    pub fn extents(&self, n: u64) {
        self.extents.increment(n);
    }
}

/// The newest recovery point of each disk, for the RPO gauge (sender and receiver).
static NEWEST_POINT: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());

/// A recovery point of `vm`/`disk` created at `created_unix` is committed (the receiver
/// commits it; the sender learns it from the acknowledgement). Older times are ignored.
pub fn recovery_point(vm: &str, disk: &str, created_unix: u64) {
    if let Ok(mut m) = NEWEST_POINT.lock() {
        let e = m.entry((vm.to_string(), disk.to_string())).or_insert(0);
        *e = (*e).max(created_unix);
    }
    rpo_tick(now_unix());
}

/// The newest VM recovery point of each VM (its switch instant): once a VM has one, its
/// disks' RPO is the age of the VM's point (issue 17: the VM's RPO for each disk).
static VM_POINT: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// A VM recovery point of `vm` whose switch was at `switch_unix` is committed.
pub fn vm_point(vm: &str, switch_unix: u64) {
    if let Ok(mut m) = VM_POINT.lock() {
        let e = m.entry(vm.to_string()).or_insert(0);
        *e = (*e).max(switch_unix);
    }
    rpo_tick(now_unix());
}

/// The newest recovery point known for a disk.
pub fn newest_point(vm: &str, disk: &str) -> Option<u64> {
    NEWEST_POINT
        .lock()
        .ok()?
        .get(&(vm.to_string(), disk.to_string()))
        .copied()
}

/// Sets every disk's RPO gauge to its newest point's age (called every second).
pub fn rpo_tick(now_unix: u64) {
    let vm_points = VM_POINT.lock().map(|m| m.clone()).unwrap_or_default();
    let Ok(m) = NEWEST_POINT.lock() else { return };
    for ((vm, disk), t) in m.iter() {
        let t = vm_points.get(vm).unwrap_or(t);
        gauge!(RPO, "vm" => vm.clone(), "disk" => disk.clone())
            .set(now_unix.saturating_sub(*t) as f64);
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    crate::clock::unix_secs()
}

/// A delta cycle was acknowledged as committed after `seconds` of shipping.
pub fn cycle_committed(vm: &str, disk: &str, seconds: f64) {
    let l = [("vm", vm.to_string()), ("disk", disk.to_string())];
    histogram!(CYCLE_DURATION, &l).record(seconds);
    counter!(CYCLES, &l).increment(1);
}

/// A replication attempt failed with an error of `class`; `retry` says whether the sender
/// reconnects and resumes.
pub fn attempt_failed(class: &'static str, retry: bool) {
    counter!(ERRORS, "class" => class).increment(1);
    if retry {
        counter!(RETRIES, "class" => class).increment(1);
    }
}

/// A disk's health, resync mark and copy progress (`progress` 0..=1).
pub fn disk_state(vm: &str, disk: &str, health: Health, resync_required: bool, progress: f64) {
    for h in Health::ALL {
        gauge!(HEALTH, "vm" => vm.to_string(), "disk" => disk.to_string(), "state" => h.as_str())
            .set(if h == health { 1.0 } else { 0.0 });
    }
    let l = [("vm", vm.to_string()), ("disk", disk.to_string())];
    gauge!(RESYNC_REQUIRED, &l).set(if resync_required { 1.0 } else { 0.0 });
    gauge!(RESYNC_PROGRESS, &l).set(progress.clamp(0.0, 1.0));
}

/// The throttle's limit (`None`: unlimited) and the rate actually sent.
pub fn throttle(limit: Option<u64>, rate_bytes_per_sec: f64) {
    gauge!(THROTTLE_LIMIT).set(limit.unwrap_or(0) as f64);
    gauge!(THROTTLE_RATE).set(rate_bytes_per_sec);
}

/// A sample of the QUIC connection's path: RTT, congestion window, packets lost since the
/// previous sample.
pub fn quic_path(rtt_secs: f64, cwnd_bytes: u64, lost_since_last: u64) {
    gauge!(QUIC_RTT).set(rtt_secs);
    gauge!(QUIC_CWND).set(cwnd_bytes as f64);
    counter!(QUIC_LOST).increment(lost_since_last);
}

/// A certificate's expiry (`cert`: identity, ca or peer; `name`: its CN or sender name), as
/// the Unix time it expires: a timestamp stays true between scrapes and restarts, where a
/// "seconds left" value set once would stand still.
pub fn certificate(cert: &'static str, name: &str, not_after_unix: i64) {
    gauge!(CERT_EXPIRY, "cert" => cert, "name" => name.to_string()).set(not_after_unix as f64);
}

/// The running build (`vdrep_build_info{version,commit} 1`).
pub fn build_info() {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => crate::BUILD_COMMIT)
        .set(1.0);
}

/// The receiver wrote `n` verified bytes to a replica.
pub fn written(vm: &str, disk: &str, n: u64) {
    counter!(WRITTEN_BYTES, "vm" => vm.to_string(), "disk" => disk.to_string()).increment(n);
}

/// The receiver refused an extent whose BLAKE3 did not match.
pub fn blake3_mismatch(vm: &str, disk: &str) {
    counter!(BLAKE3_MISMATCHES, "vm" => vm.to_string(), "disk" => disk.to_string()).increment(1);
}

/// The receiver refused a peer (`reason`: handshake, no_certificate, unknown_sender,
/// unauthorized_vm).
pub fn refused_peer(reason: &'static str) {
    counter!(REFUSED_PEERS, "reason" => reason).increment(1);
}

/// The receiver refused a request, a batch or a stream (`class`: a wire error class name, or
/// `connection_limit`; a bounded set).
pub fn refusal(class: &'static str) {
    counter!(REFUSALS, "class" => class).increment(1);
}

/// The store holds `n` recovery points of a disk.
pub fn recovery_points(vm: &str, disk: &str, n: usize) {
    gauge!(RECOVERY_POINTS, "vm" => vm.to_string(), "disk" => disk.to_string()).set(n as f64);
}

/// The sidecar answered an API request.
pub fn api_request(method: &str, status: u16) {
    let method = match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        _ => "other",
    };
    counter!(API_REQUESTS, "method" => method, "status" => status.to_string()).increment(1);
}

/// The sidecar's job counts by state.
pub fn jobs(counts: &[(&'static str, usize)]) {
    for (state, n) in counts {
        gauge!(JOBS, "state" => *state).set(*n as f64);
    }
}

/// Whether the sidecar reached the sender at its last poll.
pub fn sender_up(up: bool) {
    gauge!(SENDER_UP).set(if up { 1.0 } else { 0.0 });
}

/// The meters of every disk, so each disk's counters are registered once per process.
static METERS: Mutex<BTreeMap<(String, String), std::sync::Arc<DiskMeter>>> =
    Mutex::new(BTreeMap::new());

/// The (shared) meter of `vm`/`disk`.
pub fn disk_meter(vm: &str, disk: &str) -> std::sync::Arc<DiskMeter> {
    let key = (vm.to_string(), disk.to_string());
    match METERS.lock() {
        Ok(mut m) => m
            .entry(key)
            .or_insert_with(|| std::sync::Arc::new(DiskMeter::new(vm, disk)))
            .clone(),
        Err(_) => std::sync::Arc::new(DiskMeter::new(vm, disk)),
    }
}

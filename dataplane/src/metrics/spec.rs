//! Every metric vdrep exports, as one table: name, type, unit, help, labels and the roles
//! that emit it. Names follow `vdrep_<name>_<unit>[_total]` (vector's convention); the
//! emitters in [`super::events`] use these constants only, so a name cannot drift between
//! call sites, and the ops kit's dashboard and alert rules are checked against this table.

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the name ends in `_total`.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count` series).
    Histogram,
}

/// Which process exports a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `vdrep send`.
    Sender,
    /// `vdrep receive`.
    Receiver,
    /// `vdrep sidecar`.
    Sidecar,
}

/// One metric's specification.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Full name, `vdrep_<name>_<unit>[_total]`.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Unit (`bytes`, `seconds`, `ratio`, `count`, `bytes_per_second`, `info`).
    pub unit: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// Label names; every value set is bounded (VMs and disks are configured, classes and
    /// states are fixed lists).
    pub labels: &'static [&'static str],
    /// Roles that export it.
    pub roles: &'static [Role],
}

use Kind::*;
use Role::*;

macro_rules! specs {
    ($( $konst:ident = $name:literal, $kind:ident, $unit:literal, [$($l:literal),*], [$($r:ident),*], $help:literal; )*) => {
        $( #[doc = $help] pub const $konst: &str = $name; )*
        /// The table of every metric.
        pub const SPECS: &[Spec] = &[
            $( Spec { name: $name, kind: $kind, unit: $unit, help: $help, labels: &[$($l),*], roles: &[$($r),*] }, )*
        ];
    };
}

specs! {
    READ_BYTES = "vdrep_read_bytes_total", Counter, "bytes", ["vm", "disk"], [Sender],
        "Bytes read from source disks.";
    SKIPPED_BYTES = "vdrep_skipped_bytes_total", Counter, "bytes", ["vm", "disk", "reason"], [Sender],
        "Source bytes not sent as data: reason zero (found zero after reading) or unallocated (never read).";
    DATA_BYTES = "vdrep_data_bytes_total", Counter, "bytes", ["vm", "disk"], [Sender],
        "Uncompressed bytes of write extents sent.";
    WIRE_BYTES = "vdrep_wire_bytes_total", Counter, "bytes", ["vm", "disk"], [Sender],
        "Bytes of extent frames sent on the wire (after compression, before QUIC and TLS overhead).";
    EXTENTS = "vdrep_extents_total", Counter, "count", ["vm", "disk"], [Sender],
        "Extents acknowledged by the receiver.";
    COMPRESSION_RATIO = "vdrep_compression_ratio", Gauge, "ratio", ["vm", "disk"], [Sender],
        "Uncompressed data bytes divided by compressed payload bytes since the sender started.";
    CYCLE_DURATION = "vdrep_cycle_duration_seconds", Histogram, "seconds", ["vm", "disk"], [Sender],
        "Time from the start of shipping a delta cycle to the receiver's commit acknowledgement.";
    CYCLES = "vdrep_cycles_total", Counter, "count", ["vm", "disk"], [Sender],
        "Delta cycles committed by the receiver (acknowledged to this sender).";
    DIRTY_BYTES = "vdrep_dirty_bytes_total", Counter, "bytes", ["vm", "disk"], [Sender],
        "Bytes the qemu change source's dirty bitmaps marked written in shipped cycles (at the bitmaps' granularity).";
    VIEW_READ_BYTES = "vdrep_view_read_bytes_total", Counter, "bytes", ["vm", "disk"], [Sender],
        "Bytes the qemu change source's cycles read from fleecing views over NBD (no more than the dirty bytes).";
    RPO = "vdrep_rpo_seconds", Gauge, "seconds", ["vm", "disk"], [Sender, Receiver],
        "Age of the newest recovery point (the sender knows it from the receiver's commit acknowledgements).";
    RECOVERY_POINTS = "vdrep_recovery_points", Gauge, "count", ["vm", "disk"], [Receiver],
        "Recovery points the store holds for the disk.";
    THROTTLE_LIMIT = "vdrep_throttle_limit_bytes_per_second", Gauge, "bytes_per_second", [], [Sender],
        "Bandwidth limit of the host in bytes per second (0 = no throttle).";
    THROTTLE_RATE = "vdrep_throttle_rate_bytes_per_second", Gauge, "bytes_per_second", [], [Sender],
        "Actual send rate over the last second, in bytes on the wire per second (UDP payload: QUIC and TLS included), the unit of the limit.";
    RETRIES = "vdrep_retries_total", Counter, "count", ["class"], [Sender],
        "Reconnect-and-resume attempts after a recoverable error, by error class.";
    ERRORS = "vdrep_errors_total", Counter, "count", ["class"], [Sender],
        "Failed replication attempts, by error class (recoverable or not).";
    HEALTH = "vdrep_health", Gauge, "info", ["vm", "disk", "state"], [Sender],
        "1 for the disk's current health state (normal, warning, critical), 0 for the others.";
    RESYNC_REQUIRED = "vdrep_resync_required", Gauge, "info", ["vm", "disk"], [Sender],
        "1 while the disk is marked for resynchronisation and delta replication has stopped.";
    RESYNC_PROGRESS = "vdrep_resync_progress_ratio", Gauge, "ratio", ["vm", "disk"], [Sender],
        "Fraction of the disk copied by the running (or last) full copy: initial replication or resync.";
    QUIC_RTT = "vdrep_quic_rtt_seconds", Gauge, "seconds", [], [Sender],
        "Smoothed round-trip time of the QUIC connection to the receiver.";
    QUIC_CWND = "vdrep_quic_congestion_window_bytes", Gauge, "bytes", [], [Sender],
        "Congestion window of the QUIC connection to the receiver.";
    QUIC_LOST = "vdrep_quic_lost_packets_total", Counter, "count", [], [Sender],
        "Packets the QUIC connection to the receiver declared lost.";
    WRITTEN_BYTES = "vdrep_written_bytes_total", Counter, "bytes", ["vm", "disk"], [Receiver],
        "Bytes written to replicas (writes and clears) after verification.";
    BLAKE3_MISMATCHES = "vdrep_blake3_mismatches_total", Counter, "count", ["vm", "disk"], [Receiver],
        "Extents refused because their BLAKE3 did not match the bytes received.";
    REFUSED_PEERS = "vdrep_refused_peers_total", Counter, "count", ["reason"], [Receiver],
        "Connections refused: reason handshake (bad or untrusted certificate), no_certificate, unknown_sender, unauthorized_vm, busy (at --max-connections).";
    REFUSALS = "vdrep_refusals_total", Counter, "count", ["class"], [Receiver],
        "Requests, batches and streams the receiver refused, by class: the wire error class (protocol, invalid_state, unauthorized, target_busy, ...), connection_limit, or slow_frame (a connection closed for a trickled frame body).";
    CERT_EXPIRY = "vdrep_certificate_expiry_timestamp_seconds", Gauge, "seconds", ["cert", "name"], [Sender, Receiver],
        "Unix time at which the certificate expires (compare with time()): cert is identity, ca or peer; re-read when the file changes.";
    API_REQUESTS = "vdrep_api_requests_total", Counter, "count", ["method", "status"], [Sidecar],
        "Requests served by the sidecar's HTTP API, by method and status code.";
    JOBS = "vdrep_jobs", Gauge, "count", ["state"], [Sidecar],
        "Jobs the sidecar knows, by state (queued, running, succeeded, failed).";
    SENDER_UP = "vdrep_sender_up", Gauge, "info", [], [Sidecar],
        "1 when the sidecar reached the sender's control channel at its last poll.";
    BUILD_INFO = "vdrep_build_info", Gauge, "info", ["version", "commit"], [Sender, Receiver, Sidecar],
        "Always 1; its labels name the running build: version and git commit (\"unknown\" outside a git checkout).";
}

/// The metric table (for tests and tools that check dashboards and rules against it).
pub fn specs() -> &'static [Spec] {
    SPECS
}

/// The spec of `name`, also for the series a histogram or counter adds (`_bucket`, `_sum`,
/// `_count`).
pub fn lookup(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| {
        s.name == name
            || (s.kind == Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suf| name.strip_suffix(suf) == Some(s.name)))
    })
}

/// Buckets of the cycle-duration histogram: from sub-second cycles of an idle disk to the
/// 15-minute interval.
pub const CYCLE_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for s in SPECS {
            assert!(seen.insert(s.name), "{} twice", s.name);
            assert!(s.name.starts_with("vdrep_"), "{}", s.name);
            assert_eq!(
                s.kind == Kind::Counter,
                s.name.ends_with("_total"),
                "{}",
                s.name
            );
            if s.unit != "info" && s.unit != "count" {
                let base = s.name.trim_end_matches("_total");
                assert!(
                    base.ends_with(s.unit),
                    "{} should end in its unit {}",
                    s.name,
                    s.unit
                );
            }
            assert!(!s.help.is_empty() && !s.roles.is_empty());
            for l in s.labels {
                assert!(
                    [
                        "vm", "disk", "class", "state", "reason", "cert", "name", "method",
                        "status", "version", "commit"
                    ]
                    .contains(l),
                    "{}: unbounded label {l}",
                    s.name
                );
            }
        }
        assert!(lookup("vdrep_cycle_duration_seconds_bucket").is_some());
        assert!(lookup("vdrep_nope").is_none());
    }
}

//! Counters of one replication run, shared by the pipeline's threads; the summary and the
//! progress bar read them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::events::DiskMeter;

/// Byte counters (all relaxed atomics: they are statistics, not synchronisation).
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes read from disks.
    pub read: AtomicU64,
    /// Bytes found zero inside allocated ranges.
    pub skipped_zero: AtomicU64,
    /// Bytes not read because the format says unallocated (or clears).
    pub skipped_unallocated: AtomicU64,
    /// Uncompressed bytes of write extents.
    pub data: AtomicU64,
    /// Payload bytes after compression.
    pub payload: AtomicU64,
    /// Bytes on the wire (frames, as counted by the sender).
    pub wire: AtomicU64,
    /// Extents acknowledged.
    pub extents: AtomicU64,
    /// Extents resent after a refusal.
    pub resent: AtomicU64,
    /// Reconnects.
    pub retries: AtomicU64,
    /// Source bytes acknowledged (progress).
    pub done: AtomicU64,
    /// Delta cycles committed.
    pub cycles: AtomicU64,
    /// Resync hash-exchange bytes on the wire (requests and answers, both directions).
    pub hash_wire: AtomicU64,
    /// Bytes a resync found different and sent (uncompressed).
    pub resync_changed: AtomicU64,
    /// Times a reconnect found more durable progress at the receiver than before.
    pub durable_growth: AtomicU64,
    /// For one disk's view: the run's counters, which every add reaches too.
    parent: Option<Arc<Stats>>,
    /// For one disk's view: its metrics (the one place pipeline events become metrics).
    meter: Option<Arc<DiskMeter>>,
}

macro_rules! adder {
    ($name:ident, $field:ident, $meter:ident) => {
        #[doc = concat!("Adds to `", stringify!($field), "` (and the parent's, and the disk's metric).")]
        pub fn $name(&self, n: u64) {
            self.$field.fetch_add(n, Ordering::Relaxed);
            if let Some(m) = &self.meter {
                m.$meter(n);
            }
            if let Some(p) = &self.parent {
                p.$name(n);
            }
        }
    };
    ($name:ident, $field:ident) => {
        #[doc = concat!("Adds to `", stringify!($field), "` (and the parent's).")]
        pub fn $name(&self, n: u64) {
            self.$field.fetch_add(n, Ordering::Relaxed);
            if let Some(p) = &self.parent {
                p.$name(n);
            }
        }
    };
}

impl Stats {
    adder!(add_read, read, read);
    adder!(add_skipped_zero, skipped_zero, skipped_zero);
    adder!(
        add_skipped_unallocated,
        skipped_unallocated,
        skipped_unallocated
    );
    adder!(add_wire, wire, wire);
    adder!(add_extents, extents, extents);
    adder!(add_done, done);
    adder!(add_hash_wire, hash_wire);

    /// One disk's view of the run's counters: what it adds reaches `parent` and the disk's
    /// metrics (`vm`, `disk` labels).
    pub fn for_disk(parent: &Arc<Stats>, meter: Arc<DiskMeter>) -> Arc<Stats> {
        Arc::new(Stats {
            parent: Some(parent.clone()),
            meter: Some(meter),
            ..Default::default()
        })
    }

    /// Records a write extent's sizes.
    pub fn add_payload(&self, data: u64, payload: u64) {
        self.data.fetch_add(data, Ordering::Relaxed);
        self.payload.fetch_add(payload, Ordering::Relaxed);
        if let Some(m) = &self.meter {
            m.payload(data, payload);
        }
        if let Some(p) = &self.parent {
            p.add_payload(data, payload);
        }
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

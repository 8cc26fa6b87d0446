//! Health of each protected VM and disk: Normal, Warning or Critical, with the reasons, the
//! last error, the next retry and the RPO (the age of the newest recovery point the receiver
//! committed), written as `health.json` into the sender's `--state DIR` for `vdrep status`.
//!
//! - **Critical**: a non-recoverable error (the VM waits for an operator), or an RPO more
//!   than [`CRITICAL_FACTOR`] times the threshold.
//! - **Warning**: retrying a recoverable error, an RPO above the threshold, a disk that
//!   needs (or runs) a resync.
//! - **Normal** otherwise.
//!
//! The RPO threshold is per policy: by default twice the replication interval plus a minute
//! ([`default_rpo_threshold`]). Before the first recovery point (initial replication) there is
//! no RPO and it does not count against health: a long initial copy is not an outage.
//!
//! This is the one health model of a sender: `health.json`, the control channel's status
//! (each disk's health, reason, RPO and next retry, and [`Report::vms`] whole), the health
//! gauge of the metrics and the sidecar's `/v1/vms` all come from [`Health::report`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;

use crate::clock::SharedClock;

mod own;
mod report;
mod severity;

pub use report::{DiskHealth, LastError, LatestPoint, Report, VmHealth};
pub use severity::{lowercase, Condition, State};

/// The RPO threshold without one configured: twice the interval, plus a minute so that a
/// short interval does not warn on every slow commit.
pub fn default_rpo_threshold(interval: Duration) -> Duration {
    interval * 2 + Duration::from_secs(60)
}

/// An RPO this many times the threshold makes a VM Critical.
pub const CRITICAL_FACTOR: u32 = 4;

#[derive(Debug, Default)]
struct DiskState {
    newest_point: Option<Timestamp>,
    /// Switch times of cycles not committed yet: a cycle's recovery point is the moment
    /// its log was closed.
    switched: BTreeMap<u64, Timestamp>,
    resync: Option<String>,
    resync_running: bool,
}

#[derive(Debug, Default)]
struct VmState {
    disks: BTreeMap<String, DiskState>,
    last_error: Option<LastError>,
    critical: bool,
    next_retry: Option<Timestamp>,
    /// This VM's RPO threshold (`None`: the sender's).
    threshold: Option<Duration>,
    /// The newest VM point: id, switch instant, consistent.
    latest_point: Option<(u64, Timestamp, bool)>,
    /// `last_error` is the VM's own (its change source failed while the other VMs went
    /// on): only the VM's own progress clears it ([`own`]).
    own: bool,
}

/// The health of every VM of a sender.
#[derive(Debug)]
pub struct Health {
    clock: SharedClock,
    threshold: Duration,
    vms: Mutex<BTreeMap<String, VmState>>,
    bandwidth: Mutex<String>,
    /// Held while `health.json` is replaced: the periodic writer (a blocking thread) and the
    /// sender's final write share one temporary file, and the later report must land last.
    file: Mutex<()>,
}

impl Health {
    /// Health of `vms` (name, disk names), RPO threshold `threshold`.
    pub fn new(clock: SharedClock, threshold: Duration, vms: &[(String, Vec<String>)]) -> Self {
        let mut m = BTreeMap::new();
        for (vm, disks) in vms {
            let mut s = VmState::default();
            for d in disks {
                s.disks.insert(d.clone(), DiskState::default());
            }
            m.insert(vm.clone(), s);
        }
        Health {
            clock,
            threshold,
            vms: Mutex::new(m),
            bandwidth: Mutex::new(String::new()),
            file: Mutex::new(()),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, VmState>) -> R) -> Option<R> {
        self.vms.lock().ok().map(|mut g| f(&mut g))
    }

    fn disk<R>(&self, vm: &str, disk: &str, f: impl FnOnce(&mut DiskState) -> R) -> Option<R> {
        self.with(|m| {
            m.entry(vm.to_string())
                .or_default()
                .disks
                .entry(disk.to_string())
                .or_default();
            m.get_mut(vm).and_then(|v| v.disks.get_mut(disk)).map(f)
        })
        .flatten()
    }

    /// Adds a VM protected from now on (enabled at run time), with its own RPO threshold
    /// (`None`: the sender's).
    pub fn add_vm(&self, vm: &str, disks: &[String], threshold: Option<Duration>) {
        self.with(|m| {
            let v = m.entry(vm.to_string()).or_default();
            v.threshold = threshold;
            for d in disks {
                v.disks.entry(d.clone()).or_default();
            }
        });
    }

    /// The receiver committed a recovery point of `vm`/`disk` taken at `at`; an error of
    /// the past is over.
    pub fn committed(&self, vm: &str, disk: &str, at: Timestamp) {
        self.disk(vm, disk, |d| {
            d.newest_point = Some(d.newest_point.map_or(at, |p| p.max(at)));
            d.resync_running = false;
        });
        self.progressed();
        self.own_progress(vm);
    }

    /// The log of `cycle` was closed at `at`: that is the recovery point's time.
    pub fn switched(&self, vm: &str, disk: &str, cycle: u64, at: Timestamp) {
        self.disk(vm, disk, |d| {
            d.switched.insert(cycle, at);
        });
    }

    /// The receiver committed `cycle`: its recovery point (the switch time, or now when the
    /// switch happened in an earlier run) is the newest.
    pub fn cycle_committed(&self, vm: &str, disk: &str, cycle: u64) {
        let now = self.clock.now_utc();
        let at = self
            .disk(vm, disk, |d| {
                let at = d.switched.get(&cycle).copied();
                d.switched.retain(|&c, _| c > cycle);
                at
            })
            .flatten()
            .unwrap_or(now);
        self.committed(vm, disk, at);
    }

    /// The receiver recorded VM point `id` of `vm`, switched at `at`: from now on the VM's
    /// RPO (reported for each of its disks) is that point's age.
    pub fn point_committed(&self, vm: &str, id: u64, at: Timestamp, consistent: bool) {
        self.with(|m| {
            let v = m.entry(vm.to_string()).or_default();
            if v.latest_point.is_none_or(|(old, _, _)| old < id) {
                v.latest_point = Some((id, at, consistent));
            }
        });
        self.progressed();
        self.own_progress(vm);
    }

    /// Durable progress was made: errors are over.
    pub fn progressed(&self) {
        self.with(|m| {
            for v in m.values_mut() {
                // A VM's own fault is cleared by its own progress only.
                if !v.critical && !v.own {
                    v.last_error = None;
                    v.next_retry = None;
                }
            }
        });
    }

    /// The record of a failure now, and when its retry is due (`None`: no retry), for the
    /// connection's failures ([`Health::failed`]) and a VM's own ([`own`]) alike.
    fn failure(
        &self,
        class: &crate::retry::Classified,
        message: &str,
        next_retry: Option<Duration>,
    ) -> (LastError, Option<Timestamp>) {
        let now = self.clock.now_utc();
        let err = LastError {
            at: now.to_string(),
            class: class.class.to_string(),
            recoverable: class.recoverable,
            message: message.to_string(),
            advice: class.advice.to_string(),
        };
        let next = next_retry.and_then(|d| {
            jiff::SignedDuration::try_from(d)
                .ok()
                .and_then(|d| now.checked_add(d).ok())
        });
        (err, next)
    }

    /// An attempt failed with an error affecting every VM of the connection; `next_retry`
    /// `None` means no retry (Critical when not recoverable).
    pub fn failed(
        &self,
        class: &crate::retry::Classified,
        message: &str,
        next_retry: Option<Duration>,
    ) {
        let (err, next) = self.failure(class, message, next_retry);
        self.with(|m| {
            // A VM given up on alone ([`own`]) stays Critical with its own reason.
            for v in m.values_mut().filter(|v| !(v.own && v.critical)) {
                v.last_error = Some(err.clone());
                v.critical = !class.recoverable;
                v.next_retry = next;
                v.own = false;
            }
        });
    }

    /// The receiver refused VM `vm` alone (not authorised for it) while the other VMs of
    /// the connection go on: that VM is Critical with the reason, and stays so until an
    /// attempt that includes it ends otherwise.
    pub fn vm_failed(&self, vm: &str, class: &crate::retry::Classified, message: &str) {
        let err = LastError {
            at: self.clock.now_utc().to_string(),
            class: class.class.to_string(),
            recoverable: class.recoverable,
            message: message.to_string(),
            advice: class.advice.to_string(),
        };
        self.with(|m| {
            let v = m.entry(vm.to_string()).or_default();
            v.last_error = Some(err);
            v.critical = !class.recoverable;
            v.next_retry = None;
        });
    }

    /// `vm`/`disk` needs a resync (`reason`), or no longer does (`None`).
    pub fn resync_required(&self, vm: &str, disk: &str, reason: Option<String>) {
        self.disk(vm, disk, |d| d.resync = reason);
    }

    /// A resync of `vm`/`disk` runs.
    pub fn resync_running(&self, vm: &str, disk: &str, running: bool) {
        self.disk(vm, disk, |d| d.resync_running = running);
    }

    /// Records the bandwidth policy for the report.
    pub fn set_bandwidth(&self, policy: String) {
        if let Ok(mut b) = self.bandwidth.lock() {
            *b = policy;
        }
    }
}

#[cfg(test)]
mod tests;

//! What the sender knows about its VMs, disks and connection: the source of the health and
//! RPO metrics (sampled every second) and of the control channel's `status` answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::disk::DiskJob;
use crate::health::State as Health;
use crate::metrics::events;
use crate::tracking::Tracker;

/// One disk as the sender sees it.
struct Entry {
    job: DiskJob,
    tracker: Option<Tracker>,
    last_cycle: Option<u64>,
    copying: bool,
    resyncs: u64,
    resyncs_completed: u64,
    /// The copy's rate, measured by [`Board::measure_rates`].
    rate: Rate,
}

/// The rate of a full copy or resync: the average over the last [`Rate::WINDOW`] of
/// one-second samples of its progress. Progress moves in bursts (an extent is counted when
/// the receiver acknowledges it), so one second alone says little.
#[derive(Default, Clone)]
struct Rate {
    samples: std::collections::VecDeque<(tokio::time::Instant, u64)>,
}

impl Rate {
    /// How far back the average reaches.
    const WINDOW: Duration = Duration::from_secs(10);
    /// The shortest span that gives a rate.
    const MIN_SPAN: Duration = Duration::from_secs(2);

    fn sample(&mut self, at: tokio::time::Instant, counted: u64) {
        self.samples.push_back((at, counted));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window (`None` before [`Rate::MIN_SPAN`] of samples).
    fn bytes_per_second(&self) -> Option<f64> {
        let ((t0, c0), (t1, c1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.saturating_duration_since(*t0);
        (span >= Self::MIN_SPAN).then(|| c1.saturating_sub(*c0) as f64 / span.as_secs_f64())
    }
}

#[derive(Default)]
struct Inner {
    disks: BTreeMap<(String, String), Entry>,
    next_switch_unix: BTreeMap<String, u64>,
    conn: Option<quinn::Connection>,
    interval: Option<Duration>,
    resync_requested: std::collections::BTreeSet<(String, String)>,
    schedule: Option<crate::throttle::PolicyDocument>,
}

/// The sender's status board, shared by the replication tasks, the sampler and the control
/// channel.
#[derive(Default)]
pub struct Board {
    inner: Mutex<Inner>,
    /// Woken when an operator asks for something the protection loops act on (a resync).
    pub wake: tokio::sync::Notify,
}

/// A disk's status as the control channel reports it (and the sidecar serves it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskStatus {
    /// VM name.
    pub vm: String,
    /// Disk name (the replica's name at the receiver).
    pub disk: String,
    /// Source image.
    pub path: String,
    /// Normal, warning or critical (lower case, as the API has it).
    #[serde(with = "crate::health::lowercase")]
    pub health: Health,
    /// Why the health is not normal (empty when it is).
    pub reason: String,
    /// `initial` (copying), `protected` (delta cycles), `resync_required`, `resyncing`.
    pub phase: String,
    /// Age of the newest recovery point, seconds (`None`: no point yet).
    pub rpo_seconds: Option<u64>,
    /// Newest committed cycle (0 = the initial copy).
    pub last_cycle: Option<u64>,
    /// When the newest recovery point was committed (Unix seconds).
    pub last_cycle_unix: Option<u64>,
    /// When the next log switch is due (Unix seconds).
    pub next_cycle_unix: Option<u64>,
    /// When the next reconnect is due after a recoverable error (Unix seconds).
    pub next_retry_unix: Option<u64>,
    /// Bytes of the current (or last) full copy done.
    pub copied_bytes: u64,
    /// Virtual size of the disk.
    pub size_bytes: u64,
    /// Resyncs completed since the sender started.
    pub resyncs_completed: u64,
    /// The source image's format as `vdrep inspect` names it (`vhdx-dynamic`, `raw`, ...).
    #[serde(default)]
    pub format: String,
    /// Source bytes per second of the full copy or resync under way, smoothed over a few
    /// seconds (`None` when no copy runs: delta cycles are short and have their RPO).
    #[serde(default)]
    pub rate_bytes_per_second: Option<u64>,
    /// When the copy under way should end at that rate (Unix seconds; `None` when idle or
    /// not measured yet).
    #[serde(default)]
    pub eta_unix: Option<u64>,
}

impl Board {
    /// Registers a disk (once per run).
    pub fn add_disk(&self, job: &DiskJob, tracker: Option<Tracker>) {
        if let Ok(mut g) = self.inner.lock() {
            g.disks.insert(
                (job.vm.clone(), job.name.clone()),
                Entry {
                    job: job.clone(),
                    tracker,
                    last_cycle: None,
                    copying: true,
                    resyncs: 0,
                    resyncs_completed: 0,
                    rate: Rate::default(),
                },
            );
        }
    }

    /// Sets the cycle interval (continuous protection).
    pub fn set_interval(&self, interval: Duration) {
        if let Ok(mut g) = self.inner.lock() {
            g.interval = Some(interval);
        }
    }

    /// Records the bandwidth schedule the sidecar pushed (in the API's form).
    pub fn set_schedule(&self, p: Option<crate::throttle::PolicyDocument>) {
        if let Ok(mut g) = self.inner.lock() {
            g.schedule = p;
        }
    }

    /// The bandwidth schedule the sidecar pushed, last.
    pub fn schedule(&self) -> Option<crate::throttle::PolicyDocument> {
        self.inner.lock().ok()?.schedule.clone()
    }

    /// The cycle interval (`None`: one initial copy).
    pub fn interval(&self) -> Option<Duration> {
        self.inner.lock().ok()?.interval
    }

    /// The receiver acknowledged cycle `cycle` (0 = the initial copy) of a disk as committed.
    pub fn committed(&self, vm: &str, disk: &str, cycle: u64) {
        events::recovery_point(vm, disk, events::now_unix());
        if let Ok(mut g) = self.inner.lock() {
            if let Some(e) = g.disks.get_mut(&(vm.to_string(), disk.to_string())) {
                e.last_cycle = Some(cycle);
                // A resync commits as a cycle, an initial copy as cycle 0.
                if e.copying {
                    e.resyncs_completed = e.resyncs;
                    e.copying = false;
                }
            }
        }
    }

    /// The receiver already holds cycle `cycle` of a disk (found at open).
    pub fn known_cycle(&self, vm: &str, disk: &str, cycle: u64) {
        if let Ok(mut g) = self.inner.lock() {
            if let Some(e) = g.disks.get_mut(&(vm.to_string(), disk.to_string())) {
                e.last_cycle = Some(cycle);
                e.copying = false;
            }
        }
    }

    /// An operator asks to resynchronise every disk of `vm` now. Only a protecting sender
    /// (with `--interval`) resynchronises; returns the disks marked.
    pub fn request_resync(&self, vm: &str) -> Result<Vec<String>, String> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| "status lock poisoned".to_string())?;
        if g.interval.is_none() {
            return Err(
                "this sender makes one initial copy (no --interval): run it again to copy anew"
                    .into(),
            );
        }
        let disks: Vec<(String, String)> =
            g.disks.keys().filter(|(v, _)| v == vm).cloned().collect();
        if disks.is_empty() {
            return Err(format!("VM {vm} is not replicated by this sender"));
        }
        let names = disks.iter().map(|(_, d)| d.clone()).collect();
        g.resync_requested.extend(disks);
        drop(g);
        self.wake.notify_waiters();
        Ok(names)
    }

    /// Takes a pending resync request of a disk.
    pub fn take_resync(&self, vm: &str, disk: &str) -> bool {
        self.inner
            .lock()
            .map(|mut g| {
                g.resync_requested
                    .remove(&(vm.to_string(), disk.to_string()))
            })
            .unwrap_or(false)
    }

    /// Whether any disk of `vm` waits for a resync.
    pub fn resync_pending(&self, vm: &str) -> bool {
        self.inner
            .lock()
            .map(|g| g.resync_requested.iter().any(|(v, _)| v == vm))
            .unwrap_or(false)
    }

    /// A full copy or a resync (block-checksum comparison) of the disk starts.
    pub fn copy_started(&self, vm: &str, disk: &str, resync: bool) {
        if let Ok(mut g) = self.inner.lock() {
            if let Some(e) = g.disks.get_mut(&(vm.to_string(), disk.to_string())) {
                e.copying = true;
                if resync {
                    e.resyncs += 1;
                }
            }
        }
    }

    /// The next log switch of `vm`.
    pub fn next_switch(&self, vm: &str, unix: u64) {
        if let Ok(mut g) = self.inner.lock() {
            g.next_switch_unix.insert(vm.to_string(), unix);
        }
    }

    /// A connection is up: the last failure is over.
    pub fn connected(&self, conn: &quinn::Connection) {
        if let Ok(mut g) = self.inner.lock() {
            g.conn = Some(conn.clone());
        }
    }

    /// An attempt failed (counted; its health effect is the health model's).
    pub fn failed(&self, class: &'static str, retry_in: Option<Duration>) {
        events::attempt_failed(class, retry_in.is_some());
    }

    /// The current connection, for path statistics.
    pub fn connection(&self) -> Option<quinn::Connection> {
        self.inner.lock().ok()?.conn.clone()
    }

    /// Tells the health model which disks need a resync now (the marks live beside the
    /// disks; an operator's request or a gap found shows within a second).
    pub fn refresh_health(&self, health: &crate::health::Health) {
        let Ok(g) = self.inner.lock() else { return };
        for e in g.disks.values() {
            if let Some(t) = &e.tracker {
                health.resync_required(&e.job.vm, &e.job.name, t.resync_reason());
            }
        }
    }

    /// Samples the progress of every copy under way (called every second by [`sample`]):
    /// the source of `rate_bytes_per_second` and `eta_unix`.
    pub fn measure_rates(&self, at: tokio::time::Instant) {
        let Ok(mut g) = self.inner.lock() else { return };
        for e in g.disks.values_mut() {
            if e.copying {
                e.rate.sample(at, e.job.progress.counted());
            } else {
                e.rate = Rate::default();
            }
        }
    }

    /// Every disk's status now; health, reason, RPO and next retry are the health
    /// model's ([`crate::health::Health::report`]), not computed again here.
    pub fn disks(&self, health: &crate::health::Health) -> Vec<DiskStatus> {
        let report = health.report();
        let Ok(g) = self.inner.lock() else {
            return Vec::new();
        };
        let unix = |t: &str| {
            t.parse::<jiff::Timestamp>()
                .ok()
                .map(|t| t.as_second().max(0) as u64)
        };
        g.disks
            .values()
            .map(|e| {
                let (vm, disk) = (e.job.vm.clone(), e.job.name.clone());
                let newest = events::newest_point(&vm, &disk);
                let resyncing = e.copying && e.resyncs > e.resyncs_completed;
                let vh = report.vms.iter().find(|v| v.vm == vm);
                let dh = vh.and_then(|v| v.disks.iter().find(|d| d.disk == disk));
                // Change logs keep the mark beside the disk; other sources (qemu) report it
                // to health.
                let resync = match &e.tracker {
                    Some(t) => t.resync_reason(),
                    None => dh.and_then(|d| d.resync_required.clone()),
                };
                // The VM's error (retrying, or not retried) is every disk's too.
                let (mut state, mut reason) = dh
                    .map(|d| (d.state, d.reasons.first().cloned().unwrap_or_default()))
                    .unwrap_or((crate::health::State::Normal, String::new()));
                if let Some(v) = vh.filter(|v| v.last_error.is_some()) {
                    state = state.max(v.state);
                    reason = v.reasons.first().cloned().unwrap_or(reason);
                }
                let health = state;
                let phase = match (&resync, e.copying, resyncing) {
                    (_, _, true) => "resyncing",
                    (Some(_), _, _) => "resync_required",
                    (None, true, false) => "initial",
                    (None, false, _) => "protected",
                };
                let info = e.job.disk.info();
                let rate = e.rate.bytes_per_second().filter(|_| e.copying);
                let left = info.virtual_size.saturating_sub(e.job.progress.counted());
                DiskStatus {
                    format: info.format.as_str().into(),
                    rate_bytes_per_second: rate.map(|r| r.round() as u64),
                    eta_unix: rate
                        .filter(|r| *r >= 1.0)
                        .map(|r| events::now_unix() + (left as f64 / r).ceil() as u64),
                    path: info.path.display().to_string(),
                    health,
                    reason,
                    phase: phase.into(),
                    rpo_seconds: dh.and_then(|d| d.rpo_seconds).map(|r| r as u64),
                    last_cycle: e.last_cycle,
                    last_cycle_unix: newest,
                    next_cycle_unix: g.next_switch_unix.get(&vm).copied(),
                    next_retry_unix: vh.and_then(|v| v.next_retry.as_deref()).and_then(unix),
                    // A committed copy is whole, including what it never had to send.
                    copied_bytes: if e.copying {
                        e.job.progress.counted()
                    } else {
                        e.job.disk.info().virtual_size
                    },
                    size_bytes: e.job.disk.info().virtual_size,
                    resyncs_completed: e.resyncs_completed,
                    vm,
                    disk,
                }
            })
            .collect()
    }
}

/// Samples the board, the throttle and the QUIC path into metrics every second until the
/// task is aborted.
pub async fn sample(board: Arc<Board>, sh: Arc<super::Shared>) {
    // Bytes on the wire (what the limit counts), not extent-frame bytes.
    let mut last_wire = sh.throttle.wire_bytes();
    let mut last_at = crate::clock::tokio_now();
    let mut last_lost: Option<(usize, u64)> = None;
    loop {
        board.measure_rates(crate::clock::tokio_now());
        board.refresh_health(&sh.health);
        for d in board.disks(&sh.health) {
            let progress = if d.size_bytes == 0 {
                1.0
            } else {
                d.copied_bytes as f64 / d.size_bytes as f64
            };
            events::disk_state(
                &d.vm,
                &d.disk,
                d.health,
                d.phase == "resync_required",
                progress,
            );
        }
        events::rpo_tick(events::now_unix());
        let wire = sh.throttle.wire_bytes();
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        events::throttle(
            sh.throttle.rate(),
            wire.saturating_sub(last_wire) as f64 / dt,
        );
        (last_wire, last_at) = (wire, crate::clock::tokio_now());
        if let Some(conn) = board.connection() {
            let s = conn.stats();
            let id = conn.stable_id();
            let lost = s.path.lost_packets;
            let delta = match last_lost {
                Some((i, l)) if i == id => lost.saturating_sub(l),
                _ => lost,
            };
            last_lost = Some((id, lost));
            events::quic_path(s.path.rtt.as_secs_f64(), s.path.cwnd, delta);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Rate;
    use std::time::Duration;

    #[test]
    fn a_copy_rate_is_the_average_over_the_last_ten_seconds() {
        let t0 = crate::clock::tokio_now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Rate::default();
        r.sample(at(0), 0);
        r.sample(at(1), 8_000_000);
        assert_eq!(r.bytes_per_second(), None, "under two seconds: no rate yet");
        // Bursts: nothing counted in one second, 16 MB in the next.
        r.sample(at(2), 8_000_000);
        assert_eq!(r.bytes_per_second(), Some(4_000_000.0));
        r.sample(at(3), 24_000_000);
        assert_eq!(r.bytes_per_second(), Some(8_000_000.0));
        // Samples older than the window drop out.
        for s in 4..=13 {
            r.sample(at(s), 24_000_000 + (s - 3) * 1_000_000);
        }
        assert_eq!(r.bytes_per_second(), Some(1_000_000.0));
    }
}

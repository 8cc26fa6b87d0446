//! One log switch for a set of disks (a VM's, later a consistency group's) at one instant.
//!
//! **Invariant:** no tracked write to any disk of the set lands between the first and the
//! last disk's switch. Every recovery point of the set is then the state of all its disks
//! at one instant, and a writer that writes its disks in order finds every point holding a
//! prefix of its writes.
//!
//! How [`switch_set`] keeps it, and keeps the writers' wait short:
//! 1. *Before any lock*: each disk's next log `D.hrl.next.N` is created chained to the
//!    active log's `UniqueId` (read from its header, which appends never rewrite) and
//!    synced; each folder is synced; the intent `D.hrl.switch` ([`SwitchIntent`]) is
//!    written beside every disk, locked by this process; each folder is synced again.
//! 2. *The hold*: every disk's tracking lock is taken in one fixed order (by the lock
//!    file's absolute path, so two set switches, or a switch and a completion, never
//!    deadlock); then only renames (`D.hrl` → `D.NNNNNNNN.hrl`, `D.hrl.next.N` → `D.hrl`)
//!    and one sync per folder; then all locks are released.
//! 3. *After*: the old logs are closed (their `EOLLocation` written: nobody appends to a
//!    renamed log) and the intents removed.
//!
//! A process killed anywhere leaves either no intent (nothing renamed yet: the prepared
//! logs are dropped at the next start) or an intent beside every disk. The intent is
//! completed for *all* its disks ([`complete_interrupted`]) before any further tracked
//! write on any of them is accepted ([`Tracker::lock_for_write`]) and at the sender's
//! next start.
//!
//! A writer holding one disk's lock sees either none of the set's renames or all of them
//! (the switch holds every lock while it renames), so an intent whose switch is alive is
//! no reason to wait; only a set left half renamed by a dead process is, and the writer
//! then completes it first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use vdrep_proto::Guid;

use super::intent::{self, IntentDisk, IntentVm, SwitchIntent};
use super::lock::LockGuard;
use super::{Locked, Tracker, TrackingError};
use crate::hrl::{read_log_header, HrlWriter, WriterOptions};

/// One disk of a set switch.
#[derive(Debug, Clone, Copy)]
pub struct SwitchDisk<'a> {
    /// The VM the disk belongs to.
    pub vm: &'a str,
    /// The disk's tracking.
    pub tracker: &'a Tracker,
    /// The cycle its active log closes (its closed log's number).
    pub cycle: u64,
}

/// What one disk's switch left.
#[derive(Debug, Clone)]
pub struct Switched {
    /// The closed log of the cycle.
    pub closed: PathBuf,
    /// Its `UniqueId` (the new active log's `PreviousUniqueId`).
    pub id: Guid,
}

/// What [`switch_set`] did.
#[derive(Debug, Clone)]
pub struct SetSwitch {
    /// Per disk, in the order given.
    pub disks: Vec<Switched>,
    /// The VMs and their VM cycles (as the intent recorded them).
    pub vms: Vec<IntentVm>,
    /// From the first tracking lock taken to the last released: the longest any tracked
    /// write of the set could have waited for this switch.
    pub hold: Duration,
    /// Monotonic instants of the first lock taken and the last released (for measuring
    /// writers' waits against the hold).
    pub locked_at: tokio::time::Instant,
    /// See `locked_at`.
    pub released_at: tokio::time::Instant,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(std::io::Error) -> TrackingError + 'a {
    move |e| TrackingError::Io {
        path: path.to_path_buf(),
        op,
        source: e,
    }
}

fn absolute(p: &Path) -> Result<PathBuf, TrackingError> {
    std::path::absolute(p).map_err(io_err(p, "absolute path"))
}

/// Syncs each distinct folder once.
fn sync_folders<'a>(trackers: impl Iterator<Item = &'a Tracker>) -> Result<(), TrackingError> {
    let mut done = std::collections::HashSet::new();
    for t in trackers {
        let p = t.paths();
        if done.insert(p.dir().to_path_buf()) {
            p.sync_dir().map_err(io_err(p.dir(), "sync folder"))?;
        }
    }
    Ok(())
}

/// Takes the tracking locks of `trackers` in the fixed order (absolute lock path).
/// Returns them with the instant the first was taken (from then on writers of that disk
/// wait).
fn lock_all<'a>(
    trackers: &[&'a Tracker],
) -> Result<(Vec<Locked<'a>>, tokio::time::Instant), TrackingError> {
    let mut order: Vec<(PathBuf, &Tracker)> = Vec::with_capacity(trackers.len());
    for t in trackers {
        order.push((absolute(&t.paths().lock)?, *t));
    }
    order.sort_by(|a, b| a.0.cmp(&b.0));
    order.dedup_by(|a, b| a.0 == b.0);
    let mut locks = Vec::with_capacity(order.len());
    let mut first = None;
    for (_, t) in order {
        locks.push(t.lock()?);
        first.get_or_insert_with(now_mono);
    }
    Ok((locks, first.unwrap_or_else(now_mono)))
}

fn now_mono() -> tokio::time::Instant {
    use crate::clock::Clock;
    crate::clock::process().now()
}

/// Switches the logs of every disk in `set` at one instant (see the module
/// documentation). `set` may hold disks of several VMs (a consistency group); each VM's
/// cycle is the highest of its disks' cycles. On an error after the intents were written
/// they stay, unlocked: the switch is then completed by the next tracked write or start.
pub fn switch_set(set: &[SwitchDisk<'_>], now: SystemTime) -> Result<SetSwitch, TrackingError> {
    switch_set_with(set, now, &mut || {})
}

/// [`switch_set`] that runs `inside` during the hold, once every tracking lock of the set
/// is taken and before any log is renamed: no tracked write to the set lands while it
/// runs, so whatever `inside` cuts (a consistency group's qemu VM: its QMP switch
/// transaction, `sender::group`) is the same instant as the set's switch for any writer
/// that writes in order. Tracked writers of the set wait for `inside` too: keep it short.
/// It does not run when the switch fails before the hold.
pub fn switch_set_with(
    set: &[SwitchDisk<'_>],
    now: SystemTime,
    inside: &mut dyn FnMut(),
) -> Result<SetSwitch, TrackingError> {
    if set.is_empty() {
        return Err(TrackingError::Switch {
            problem: "a switch needs at least one disk".into(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for d in set {
        let lock = absolute(&d.tracker.paths().lock)?;
        if !seen.insert(lock) {
            return Err(TrackingError::Switch {
                problem: format!(
                    "{} is named twice in one switch",
                    d.tracker.paths().disk.display()
                ),
            });
        }
    }
    // An earlier switch of these disks that failed half-way is completed first.
    for d in set {
        complete_interrupted(d.tracker, now)?;
    }

    // 1. Prepare, without locks.
    let mut ids = Vec::with_capacity(set.len());
    for d in set {
        let paths = d.tracker.paths();
        if !paths.active.is_file() {
            return Err(TrackingError::ActiveMissing {
                path: paths.active.clone(),
            });
        }
        if let Some((_, stale)) = paths
            .find_next()
            .map_err(io_err(&paths.active, "list prepared logs"))?
        {
            // Prepared by a switch that never renamed (no intent is left): not a log.
            std::fs::remove_file(&stale).map_err(io_err(&stale, "remove stale prepared log"))?;
        }
        let header = read_log_header(&paths.active)?;
        if header.eol_location != 0 {
            return Err(TrackingError::Switch {
                problem: format!(
                    "{}: the active log is closed; a switch would lose the writes after it",
                    paths.active.display()
                ),
            });
        }
        let id = header.unique_id;
        HrlWriter::create(
            &paths.next(d.cycle),
            &WriterOptions::new(crate::layout::random_guid(), id, d.tracker.disk_size, now),
        )?;
        ids.push(id);
    }
    sync_folders(set.iter().map(|d| d.tracker))?;
    let mut vms: BTreeMap<&str, u64> = BTreeMap::new();
    for d in set {
        let c = vms.entry(d.vm).or_insert(0);
        *c = (*c).max(d.cycle);
    }
    let mut disks = Vec::with_capacity(set.len());
    for d in set {
        let abs = absolute(&d.tracker.paths().disk)?;
        let disk = abs
            .to_str()
            .ok_or_else(|| TrackingError::Switch {
                problem: format!("{}: the disk path is not UTF-8", abs.display()),
            })?
            .to_string();
        disks.push(IntentDisk {
            vm: d.vm.to_string(),
            disk,
            cycle: d.cycle,
            size: d.tracker.disk_size,
        });
    }
    let intent = SwitchIntent {
        vms: vms
            .into_iter()
            .map(|(vm, cycle)| IntentVm {
                vm: vm.to_string(),
                cycle,
            })
            .collect(),
        disks,
    };
    let mut held = Vec::with_capacity(set.len());
    for d in set {
        held.push(intent::write(&d.tracker.paths().switch, &intent)?);
    }
    sync_folders(set.iter().map(|d| d.tracker))?;

    // 2. The hold: every lock in the fixed order, renames, one sync per folder.
    let trackers: Vec<&Tracker> = set.iter().map(|d| d.tracker).collect();
    let (locks, locked_at) = lock_all(&trackers)?;
    inside();
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.sort_by_key(|&i| absolute(&set[i].tracker.paths().lock).unwrap_or_default());
    for (k, &i) in order.iter().enumerate() {
        let d = &set[i];
        let paths = d.tracker.paths();
        let closed = paths.closed(d.cycle);
        std::fs::rename(&paths.active, &closed).map_err(io_err(&closed, "rename closed log"))?;
        std::fs::rename(paths.next(d.cycle), &paths.active)
            .map_err(io_err(&paths.active, "rename next log"))?;
        if k + 1 < order.len() {
            super::test_hook::between_disks(&paths.disk.display().to_string());
        }
    }
    sync_folders(set.iter().map(|d| d.tracker))?;
    drop(locks);
    let released_at = now_mono();

    // 3. Close the old logs, then drop the intents.
    let mut out = Vec::with_capacity(set.len());
    for (d, id) in set.iter().zip(ids) {
        let closed = d.tracker.paths().closed(d.cycle);
        close_renamed(&closed, d.tracker.disk_size, now)?;
        out.push(Switched { closed, id });
    }
    for (d, g) in set.iter().zip(&held) {
        intent::remove_if_same(g.file(), &d.tracker.paths().switch)?;
    }
    drop(held);
    Ok(SetSwitch {
        disks: out,
        vms: intent.vms,
        hold: released_at.saturating_duration_since(locked_at),
        locked_at,
        released_at,
    })
}

/// Closes a log that a switch renamed away from `D.hrl` (writes `EOLLocation`); one that
/// is already closed is left as it is. A log that cannot be reopened is left for shipping
/// to judge (it marks the disk for resync).
fn close_renamed(path: &Path, disk_size: u64, now: SystemTime) -> Result<(), TrackingError> {
    if !path.is_file() {
        return Ok(());
    }
    match read_log_header(path) {
        Ok(h) if h.eol_location != 0 => return Ok(()),
        Ok(_) => {}
        Err(_) => return Ok(()),
    }
    if let Ok(w) = HrlWriter::reopen(path, Some(disk_size)) {
        w.close(now)?;
    }
    Ok(())
}

/// Where one disk of an intent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Not renamed: `D.hrl.next.N` and the old `D.hrl` are in place.
    Before,
    /// Renamed: no `D.hrl.next.N`.
    After,
    /// Half renamed (killed between the two renames of this disk).
    Torn,
}

fn part(t: &Tracker, cycle: u64) -> Part {
    let p = t.paths();
    match (p.next(cycle).is_file(), p.active.is_file()) {
        (false, _) => Part::After,
        (true, true) => Part::Before,
        (true, false) => Part::Torn,
    }
}

fn trackers_of(i: &SwitchIntent) -> Vec<Tracker> {
    i.disks
        .iter()
        .map(|d| Tracker::new(Path::new(&d.disk), d.size))
        .collect()
}

/// Completes a switch interrupted by a crash whose intent lies beside `tracker`'s disk,
/// for every disk it names: under all their locks (fixed order) each disk not yet
/// switched is, then the old logs are closed and the intents removed. Waits while another
/// live process (the sender, or another completing writer) holds the intent. Returns the
/// intent completed, `None` if there was none. Call without holding any tracking lock.
pub fn complete_interrupted(
    tracker: &Tracker,
    now: SystemTime,
) -> Result<Option<SwitchIntent>, TrackingError> {
    let path = &tracker.paths().switch;
    loop {
        let Some(found) = intent::read(path)? else {
            return Ok(None);
        };
        let guard = LockGuard::on_file(found.file).map_err(io_err(path, "lock switch intent"))?;
        if !intent::still_at(guard.file(), path) {
            // Completed (or replaced) while we waited: look again.
            continue;
        }
        let trackers = trackers_of(&found.intent);
        let refs: Vec<&Tracker> = trackers.iter().collect();
        let (locks, _) = lock_all(&refs)?;
        for (t, d) in trackers.iter().zip(&found.intent.disks) {
            let p = t.paths();
            let next = p.next(d.cycle);
            if !next.is_file() {
                continue;
            }
            let closed = p.closed(d.cycle);
            if p.active.is_file() {
                std::fs::rename(&p.active, &closed)
                    .map_err(io_err(&closed, "rename closed log"))?;
            }
            std::fs::rename(&next, &p.active).map_err(io_err(&p.active, "rename next log"))?;
        }
        sync_folders(trackers.iter())?;
        drop(locks);
        for (t, d) in trackers.iter().zip(&found.intent.disks) {
            close_renamed(&t.paths().closed(d.cycle), d.size, now)?;
        }
        // The other disks' intents are copies of this one: removed if they still are.
        for t in &trackers {
            let other = &t.paths().switch;
            if other == path {
                continue;
            }
            if let Ok(Some(f)) = intent::read(other) {
                if f.intent == found.intent {
                    intent::remove_if_same(&f.file, other)?;
                }
            }
        }
        intent::remove_if_same(guard.file(), path)?;
        tracing::warn!(disks = found.intent.disks.len(),
            vms = ?found.intent.vms.iter().map(|v| (&v.vm, v.cycle)).collect::<Vec<_>>(),
            intent = %path.display(),
            "a log switch interrupted by a crash was completed for all its disks");
        return Ok(Some(found.intent));
    }
}

impl Tracker {
    /// Takes the tracking lock for a tracked write (the disk write and its log append go
    /// under it). A switch interrupted by a crash beside this disk is first completed for
    /// all its disks (waiting for a live process that is completing it), so no write
    /// lands in a set whose disks stand on both sides of a switch.
    pub fn lock_for_write(&self, now: SystemTime) -> Result<Locked<'_>, TrackingError> {
        loop {
            let locked = self.lock()?;
            let Some(found) = intent::read(&self.paths().switch)? else {
                return Ok(locked);
            };
            let alive = LockGuard::try_on_file(found.file)
                .map_err(io_err(&self.paths().switch, "lock switch intent"))?
                .is_none();
            if alive {
                // Under our lock no switch or completion renames: the set is wholly
                // before or wholly after the switch, unless a dead sender left it half
                // way and a live completer has not finished yet.
                let parts: Vec<Part> = trackers_of(&found.intent)
                    .iter()
                    .zip(&found.intent.disks)
                    .map(|(t, d)| part(t, d.cycle))
                    .collect();
                let whole = parts.iter().all(|&p| p == Part::Before)
                    || parts.iter().all(|&p| p == Part::After);
                if whole {
                    return Ok(locked);
                }
            }
            drop(locked);
            // Dead: complete it ourselves; alive but half way: wait for its completer.
            complete_interrupted(self, now)?;
        }
    }
}

/// Removes a prepared next log left by a switch that never renamed (no intent), so that a
/// per-disk completion does not switch one disk of a set alone. Returns whether one was.
pub(super) fn drop_unstarted(tracker: &Tracker) -> Result<bool, TrackingError> {
    let p = tracker.paths();
    if p.switch.exists() {
        return Ok(false);
    }
    let Some((_, next)) = p
        .find_next()
        .map_err(io_err(&p.active, "list prepared logs"))?
    else {
        return Ok(false);
    };
    // The active log still takes appends: nothing was renamed.
    let open = read_log_header(&p.active).is_ok_and(|h| h.eol_location == 0);
    if !open {
        return Ok(false);
    }
    std::fs::remove_file(&next).map_err(io_err(&next, "remove unused prepared log"))?;
    Ok(true)
}

#[cfg(test)]
#[path = "switch_tests.rs"]
mod tests;

//! Delta cycles of a protected VM: the log switch of all its disks at one instant (the
//! tracking locks held only for renames), each cycle's digest computed beside the shipping,
//! and shipping the closed logs' coalesced extents until the receiver commits each cycle as
//! a recovery point.

use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::disk::{Opened, Shared};
use super::protect::{poisoned, resync_required, skip, Policy, Protected};
use super::source::hrl::HrlCycles;
use super::source::ship_pending;
use super::{ControlStream, SendError};
use crate::tracking::{catch_up, switch_digest, switch_set, HashTable, SwitchDigest, SwitchDisk};

/// A disk taking part in a VM switch.
#[derive(Clone)]
struct Member {
    index: usize,
    vm: String,
    name: String,
    path: std::path::PathBuf,
    tracker: crate::tracking::Tracker,
    cycle: u64,
}

/// The disk's next cycle, unless its logs already hold half the disk (then a resync is
/// cheaper than shipping them).
fn member(index: usize, d: &Mutex<Protected>) -> Result<Member, String> {
    let g = d.lock().map_err(|_| "lock poisoned".to_string())?;
    if !g.tracker.is_active() {
        // This disk alone leaves delta replication; the VM's other disks still switch.
        return Err(format!(
            "the active change log {} is missing: writes since the last switch are unknown",
            g.tracker.paths().active.display()
        ));
    }
    let pending = g.tracker.pending().map_err(|e| e.to_string())?;
    let last_pending = pending.last().map(|(c, _)| *c).unwrap_or(0);
    let size = g.job.disk.info().virtual_size;
    if g.tracker.log_bytes() >= size / 2 {
        return Err(format!(
            "change logs hold {} bytes, half of the disk's {size}: shipping them would cost more than a resync",
            g.tracker.log_bytes()
        ));
    }
    Ok(Member {
        index,
        vm: g.job.vm.clone(),
        name: g.job.name.clone(),
        path: g.job.disk.info().path.clone(),
        tracker: g.tracker.clone(),
        cycle: g.committed_cycle.unwrap_or(0).max(last_pending) + 1,
    })
}

/// Switches the logs of every disk of the VM that takes part (not waiting for a resync) at
/// one instant (`tracking::switch_set`: the tracking locks are held only for renames), so
/// the VM's next recovery point is one instant of all its disks. Each disk's cycle digest
/// is computed afterwards, without the locks, while the closed logs already ship; it is
/// awaited before the cycle commits. Returns, per disk, the cycle switched to.
pub(super) async fn switch_vm(disks: &[Arc<Mutex<Protected>>], sh: &Shared) -> Vec<Option<u64>> {
    let mut out = vec![None; disks.len()];
    let mut members = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        if skip(d) {
            continue;
        }
        match member(i, d) {
            Ok(m) => members.push(m),
            Err(reason) => {
                if let Ok(g) = d.lock() {
                    resync_required(&g, format!("log switch failed: {reason}"));
                }
            }
        }
    }
    if members.is_empty() {
        return out;
    }
    let now = std::time::SystemTime::from(sh.clock.now_utc());
    let ms = members.clone();
    let res = tokio::task::spawn_blocking(move || {
        let set: Vec<SwitchDisk<'_>> = ms
            .iter()
            .map(|m| SwitchDisk {
                vm: &m.vm,
                tracker: &m.tracker,
                cycle: m.cycle,
            })
            .collect();
        switch_set(&set, now)
    })
    .await;
    let sw = match res {
        Ok(Ok(sw)) => sw,
        Ok(Err(e)) => return switch_failed(disks, &members, e.to_string(), out),
        Err(e) => return switch_failed(disks, &members, format!("switch task failed: {e}"), out),
    };
    for v in &sw.vms {
        info!(vm = %v.vm, vm_cycle = v.cycle, disks = members.len(),
              hold_ms = sw.hold.as_secs_f64() * 1e3, "log switch of the VM's disks");
    }
    for m in members {
        out[m.index] = Some(m.cycle);
        let d = &disks[m.index];
        let task = tokio::task::spawn_blocking(move || digest(m));
        if let Ok(mut g) = d.lock() {
            g.digest_task = Some(task);
        }
    }
    out
}

fn switch_failed(
    disks: &[Arc<Mutex<Protected>>],
    members: &[Member],
    reason: String,
    out: Vec<Option<u64>>,
) -> Vec<Option<u64>> {
    for m in members {
        if let Ok(g) = disks[m.index].lock() {
            resync_required(&g, format!("log switch failed: {reason}"));
        }
    }
    out
}

/// Computes and records the digest of the disk at the switch that closed `m.cycle`. The
/// disk is opened after the locks were released: a write since then is in the active
/// log, which `switch_digest` checks.
fn digest(m: Member) {
    let t0 = crate::clock::std_now();
    let disk = crate::disk::open(&m.path, crate::disk::OpenOptions::default());
    let res = disk.map_err(|e| e.to_string()).and_then(|disk| {
        switch_digest(&m.tracker, disk.as_ref(), m.cycle).map_err(|e| e.to_string())
    });
    let seconds = t0.elapsed().as_secs_f64();
    let (vm, name, next) = (&m.vm, &m.name, m.cycle);
    match res {
        Ok(SwitchDigest::Exact(digest)) => {
            if let Err(e) = m.tracker.record_digest(next, digest) {
                warn!(error = %e, "cannot record the cycle digest");
            }
            info!(%vm, disk = %name, cycle = next, seconds, "cycle digest computed");
        }
        Ok(SwitchDigest::Overwritten { offset }) => {
            warn!(%vm, disk = %name, cycle = next, offset, seconds,
                  "no digest for this cycle: a write after the switch changed a block it touched before the block was hashed (failover cannot verify this point)");
        }
        Ok(_) => {}
        Err(e) => warn!(%vm, disk = %name, cycle = next, error = %e,
                        "no digest for this cycle (failover cannot verify it)"),
    }
}

/// Waits for the digest of the last switch (see [`switch`]).
pub(super) async fn await_digest(d: &Arc<Mutex<Protected>>) {
    let task = d.lock().ok().and_then(|mut g| g.digest_task.take());
    if let Some(t) = task {
        if let Err(e) = t.await {
            warn!(error = %e, "the cycle digest task failed");
        }
    }
}

/// Computes the block-hash table once tracking runs (blocks changing meanwhile are in the
/// logs and are recomputed at the next switch), or brings a kept table up to date with the
/// closed logs it has not seen (a sender killed between a switch and its refresh).
pub(super) async fn ensure_hash_table(d: &Arc<Mutex<Protected>>) {
    await_digest(d).await;
    let d2 = d.clone();
    let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
        // A snapshot: hashing a whole disk must not hold the disk's state.
        let (path, tracker, committed) = {
            let g = d2.lock().map_err(|_| "lock poisoned".to_string())?;
            let info = g.job.disk.info();
            (info.path.clone(), g.tracker.clone(), g.committed_cycle)
        };
        let disk = crate::disk::open(&path, crate::disk::OpenOptions::default())
            .map_err(|e| e.to_string())?;
        let mut t = HashTable::open(&tracker.paths().hashes, disk.info().virtual_size)
            .map_err(|e| e.to_string())?;
        let pending = tracker.pending().map_err(|e| e.to_string())?;
        let newest = pending
            .last()
            .map(|(c, _)| *c)
            .unwrap_or(0)
            .max(committed.unwrap_or(0));
        if t.is_complete() && t.through() > newest {
            // Cycle numbers restarted (a new protection): the table belongs to another chain.
            t.invalidate().map_err(|e| e.to_string())?;
        }
        if t.is_complete() {
            catch_up(&tracker, disk.as_ref(), &mut t).map_err(|e| e.to_string())
        } else {
            // Writes after this point are in the active log or later ones: cycles > newest.
            t.compute_all(disk.as_ref(), newest)
                .map_err(|e| e.to_string())
        }
    })
    .await;
    if let Ok(Err(e)) | Err(e) = res.map_err(|e| e.to_string()) {
        warn!(error = %e, "cannot compute the block-hash table; cycles carry no digest");
    }
}

pub(super) async fn ship_all(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    disks: &Arc<Vec<Arc<Mutex<Protected>>>>,
    opened: &mut [Option<Opened>],
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    for (d, o) in disks.iter().zip(opened.iter_mut()) {
        let Some(o) = o else { continue };
        if skip(d) {
            continue;
        }
        let job = d.lock().map_err(poisoned)?.job.clone();
        let Some(src) = HrlCycles::new(d) else {
            return Err(poisoned(()));
        };
        ship_pending(conn, ctrl, &job, Arc::new(src), o, policy, sh).await?;
    }
    Ok(())
}

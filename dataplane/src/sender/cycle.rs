//! Delta cycles of a protected VM: the log switch of all its disks at one instant (the
//! tracking locks held only for renames), each cycle's digest computed beside the shipping,
//! and shipping the closed logs' coalesced extents until the receiver commits each cycle as
//! a recovery point.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::disk::{Opened, Shared};
use super::points::{PlanDisk, PointPlan};
use super::protect::{poisoned, resync_required, skip, Policy, Protected};
use super::source::hrl::HrlCycles;
use super::source::ship_pending;
use super::{ControlStream, SendError};
use crate::tracking::{
    catch_up, switch_digest, switch_set_with, HashTable, SwitchDigest, SwitchDisk,
};

/// A disk taking part in a VM switch.
#[derive(Clone)]
struct Member {
    /// Which VM of the switch (index into the sets given) and which of its disks.
    set: usize,
    index: usize,
    vm: String,
    name: String,
    path: std::path::PathBuf,
    tracker: crate::tracking::Tracker,
    cycle: u64,
}

/// The disk's next cycle, unless its logs already hold half the disk (then a resync is
/// cheaper than shipping them).
fn member(set: usize, index: usize, d: &Mutex<Protected>) -> Result<Member, String> {
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
        set,
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
/// awaited before the cycle commits. Before the switch, it is recorded as the VM's point
/// plan ([`record_plan`]): [`ship_all`] commits it as the VM's recovery point once every
/// disk's part is committed. Returns, per disk, the cycle switched to.
pub(super) async fn switch_vm(disks: &[Arc<Mutex<Protected>>], sh: &Shared) -> Vec<Option<u64>> {
    let now = std::time::SystemTime::from(sh.clock.now_utc());
    switch_vms(&[disks], now, |_| Ok(None), None)
        .await
        .pop()
        .unwrap_or_default()
}

/// [`switch_vm`] for the disks of several VMs at one instant `now` (a consistency group:
/// one `switch_set` over every member's disks, all their locks held at once). `before` is
/// told each VM's cycle (the highest of its switching disks') before anything is prepared
/// or renamed, so a record of the switch can be made durable first, and answers the
/// consistency group and group cycle of the switch (`None` outside a group); an error from
/// it cancels the switch (the writes stay in the active logs for the next one). Each VM
/// whose every disk switches gets its point plan ([`super::points`]) before the renames
/// too, so a switch interrupted by a crash and completed later still becomes a point.
/// `inside` runs while every lock is held, before any rename (a group's qemu VM's cut:
/// `super::group_qemu`); after `before` and without locks when no disk switches; never
/// when `before` cancels the switch or it fails before the hold.
/// Returns, per VM and disk, the cycle switched to.
pub(super) async fn switch_vms(
    vms: &[&[Arc<Mutex<Protected>>]],
    now: std::time::SystemTime,
    before: impl FnOnce(&[crate::tracking::IntentVm]) -> Result<Option<(String, u64)>, String>
        + Send
        + 'static,
    inside: Option<Box<dyn FnOnce() + Send>>,
) -> Vec<Vec<Option<u64>>> {
    let mut out: Vec<Vec<Option<u64>>> = vms.iter().map(|d| vec![None; d.len()]).collect();
    let mut members = Vec::new();
    for (s, disks) in vms.iter().enumerate() {
        for (i, d) in disks.iter().enumerate() {
            if skip(d) {
                continue;
            }
            match member(s, i, d) {
                Ok(m) => members.push(m),
                Err(reason) => {
                    if let Ok(g) = d.lock() {
                        resync_required(&g, format!("log switch failed: {reason}"));
                    }
                }
            }
        }
    }
    if members.is_empty() {
        if let Some(inside) = inside {
            // No log to switch, so no write to order against: the cut alone, recorded.
            let r = tokio::task::spawn_blocking(move || before(&[]).map(|_| inside())).await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "switch cancelled before anything switched"),
                Err(e) => warn!(error = %e, "switch task failed"),
            }
        }
        return out;
    }
    let ms = members.clone();
    let sizes: Vec<usize> = vms.iter().map(|d| d.len()).collect();
    let res = tokio::task::spawn_blocking(move || {
        let set: Vec<SwitchDisk<'_>> = ms
            .iter()
            .map(|m| SwitchDisk {
                vm: &m.vm,
                tracker: &m.tracker,
                cycle: m.cycle,
            })
            .collect();
        let mut cycles: BTreeMap<&str, u64> = Default::default();
        for m in &ms {
            let c = cycles.entry(&m.vm).or_insert(0);
            *c = (*c).max(m.cycle);
        }
        let intent_vms: Vec<crate::tracking::IntentVm> = cycles
            .into_iter()
            .map(|(vm, cycle)| crate::tracking::IntentVm {
                vm: vm.to_string(),
                cycle,
            })
            .collect();
        let group = before(&intent_vms).map_err(NoSwitch::Cancelled)?;
        record_plans(&ms, &sizes, &intent_vms, now, group);
        let mut inside = inside;
        switch_set_with(&set, now, &mut || {
            if let Some(f) = inside.take() {
                f()
            }
        })
        .map_err(|e| NoSwitch::Failed(e.to_string()))
    })
    .await;
    let sw = match res {
        Ok(Ok(sw)) => sw,
        Ok(Err(NoSwitch::Cancelled(e))) => {
            // Nothing was renamed: the writes stay in the active logs for the next switch.
            warn!(error = %e, "log switch cancelled before any log was renamed");
            return out;
        }
        Ok(Err(NoSwitch::Failed(e))) => return switch_failed(vms, &members, e, out),
        Err(e) => return switch_failed(vms, &members, format!("switch task failed: {e}"), out),
    };
    for v in &sw.vms {
        info!(vm = %v.vm, vm_cycle = v.cycle, disks = members.len(),
              hold_ms = sw.hold.as_secs_f64() * 1e3, "log switch of the VM's disks");
    }
    for m in members {
        out[m.set][m.index] = Some(m.cycle);
        let d = &vms[m.set][m.index];
        let task = tokio::task::spawn_blocking(move || digest(m));
        if let Ok(mut g) = d.lock() {
            g.digest_task = Some(task);
        }
    }
    out
}

/// Writes the point plan of each VM of a switch about to happen (`sizes`: each VM's
/// number of disks): the switch becomes the VM's recovery point once every disk's part
/// commits; a switch without every disk of the VM (one waits for a resync) is none. Written
/// before the renames: a plan whose switch never happened (a crash before them) names
/// cycles its disks never commit, and is dropped when shipping finds that; the next switch
/// of the same cycles writes it again.
fn record_plans(
    members: &[Member],
    sizes: &[usize],
    vms: &[crate::tracking::IntentVm],
    now: std::time::SystemTime,
    group: Option<(String, u64)>,
) {
    let switch_unix_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for v in vms {
        let mine: Vec<&Member> = members.iter().filter(|m| m.vm == v.vm).collect();
        let all = mine
            .first()
            .and_then(|m| sizes.get(m.set))
            .is_some_and(|&n| n == mine.len());
        if !all {
            info!(vm = %v.vm, vm_cycle = v.cycle, "not every disk of the VM switched: no VM recovery point for this switch");
            continue;
        }
        let plan = PointPlan {
            vm: v.vm.clone(),
            vm_cycle: v.cycle,
            switch_unix_ms,
            group: group.as_ref().map(|g| g.0.clone()),
            group_cycle: group.as_ref().map(|g| g.1),
            disks: mine
                .iter()
                .map(|m| PlanDisk {
                    name: m.name.clone(),
                    cycle: m.cycle,
                })
                .collect(),
            one_instant: false,
        };
        let at: Vec<(&crate::tracking::Tracker, u64)> =
            mine.iter().map(|m| (&m.tracker, m.cycle)).collect();
        if let Err(e) = super::points::record(&plan, &at) {
            warn!(vm = %v.vm, vm_cycle = v.cycle, error = %e,
                  "cannot record the VM point plan: this switch ships without a VM point");
        }
    }
}

/// Why a switch did not happen.
enum NoSwitch {
    /// `before` refused: nothing was prepared or renamed.
    Cancelled(String),
    /// The switch itself failed: its disks need a resync.
    Failed(String),
}

fn switch_failed(
    vms: &[&[Arc<Mutex<Protected>>]],
    members: &[Member],
    reason: String,
    out: Vec<Vec<Option<u64>>>,
) -> Vec<Vec<Option<u64>>> {
    for m in members {
        if let Ok(g) = vms[m.set][m.index].lock() {
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

/// Ships the closed logs of every disk of the VM, one VM switch after another: for the
/// oldest switch with a point plan ([`super::points`]), each of its disks ships its cycles
/// up to its part, then the switch is committed as the VM's recovery point; what no plan
/// names (a switch whose plan was never written) ships last. So a VM point is made only of
/// committed parts, and no disk's part is pruned by its retention before its VM point
/// exists.
pub(super) async fn ship_all(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    disks: &Arc<Vec<Arc<Mutex<Protected>>>>,
    opened: &mut [Option<Opened>],
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    let retention = policy.retention.as_secs().min(86_400) as u32;
    let mut known = BTreeMap::new();
    let mut handled = std::collections::BTreeSet::new();
    loop {
        let plans = super::points::pending(disks);
        // A plan whose files could not be removed is not taken twice.
        let plan = plans.iter().find(|p| !handled.contains(&p.vm_cycle));
        for (d, o) in disks.iter().zip(opened.iter_mut()) {
            let Some(o) = o else { continue };
            if skip(d) {
                continue;
            }
            let job = d.lock().map_err(poisoned)?.job.clone();
            let name = job.name.clone();
            let up_to = match plan {
                Some(p) => match p.cycle_of(&name) {
                    Some(c) => Some(c),
                    None => continue,
                },
                None => None,
            };
            let Some(src) = HrlCycles::new(d) else {
                return Err(poisoned(()));
            };
            let shipped = ship_pending(conn, ctrl, &job, Arc::new(src), o, up_to, policy, sh);
            for (cycle, bytes, digest) in shipped.await? {
                known.insert((name.clone(), cycle), (bytes, digest));
            }
        }
        let Some(plan) = plan else { return Ok(()) };
        handled.insert(plan.vm_cycle);
        super::points::commit(ctrl, plan, disks, opened, &known, retention, sh).await?;
    }
}

//! Delta cycles of a protected VM: the log switch of all its disks at one instant (the
//! tracking locks held only for renames), each cycle's digest computed beside the shipping,
//! and shipping the closed logs' coalesced extents until the receiver commits each cycle as
//! a recovery point.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};
use vdrep_proto::{Guid, RangeSet};

use super::disk::{begin_cycle, commit_cycle, send_all, DiskJob, Opened, Shared};
use super::logimage::LogImage;
use super::points::{PlanDisk, PointPlan};
use super::progress::log_secs;
use super::protect::{poisoned, resync_required, skip, Policy, Protected};
use super::{ControlStream, SendError};
use crate::hrl::coalesce_log;
use crate::pipeline::WorkItem;
use crate::tracking::{catch_up, switch_digest, switch_set, HashTable, SwitchDigest, SwitchDisk};

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
    switch_vms(&[disks], now, |_| Ok(None))
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
/// Returns, per VM and disk, the cycle switched to.
pub(super) async fn switch_vms(
    vms: &[&[Arc<Mutex<Protected>>]],
    now: std::time::SystemTime,
    before: impl FnOnce(&[crate::tracking::IntentVm]) -> Result<Option<(String, u64)>, String>
        + Send
        + 'static,
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
        switch_set(&set, now).map_err(|e| NoSwitch::Failed(e.to_string()))
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
            let name = d.lock().map_err(poisoned)?.job.name.clone();
            let up_to = match plan {
                Some(p) => match p.cycle_of(&name) {
                    Some(c) => Some(c),
                    None => continue,
                },
                None => None,
            };
            for (cycle, bytes, digest) in ship_pending(conn, ctrl, d, o, up_to, policy, sh).await? {
                known.insert((name.clone(), cycle), (bytes, digest));
            }
        }
        let Some(plan) = plan else { return Ok(()) };
        handled.insert(plan.vm_cycle);
        super::points::commit(ctrl, plan, disks, opened, &known, retention, sh).await?;
    }
}

/// Ships the closed logs of a disk as its cycles, oldest first, up to cycle `up_to` (all
/// when `None`). Returns the cycles committed, with their bytes and digests.
pub(super) async fn ship_pending(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    d: &Arc<Mutex<Protected>>,
    o: &mut Opened,
    up_to: Option<u64>,
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<Vec<(u64, u64, [u8; 32])>, SendError> {
    let mut done = Vec::new();
    let (job, tracker) = {
        let g = d.lock().map_err(poisoned)?;
        (g.job.clone(), g.tracker.clone())
    };
    let pending = tracker
        .pending()
        .map_err(|e| SendError::Internal(e.to_string()))?;
    for (cycle, path) in pending {
        if up_to.is_some_and(|u| cycle > u) {
            break;
        }
        let committed = d.lock().map_err(poisoned)?.committed_cycle.unwrap_or(0);
        let t0 = crate::clock::tokio_now();
        // The log's structure is checked before anything ships; its data checksums (a read
        // of the whole log) are checked while the cycle ships and before it commits: a
        // damaged log's bytes then reach at most the receiver's open cycle, which is never
        // committed — the resync that follows reopens that cycle and brings the replica in
        // line (`sender/resync.rs`), so no recovery point holds the damage.
        let (t, p) = (tracker.clone(), path.clone());
        let data_check = tokio::task::spawn_blocking(move || t.open_closed(&p).map(|_| ()));
        let (t, p) = (tracker.clone(), path.clone());
        let opened = tokio::task::spawn_blocking(move || {
            t.open_closed_with(&p, false).map(|log| {
                let extents = coalesce_log(&log);
                (log, extents)
            })
        })
        .await
        .map_err(|e| SendError::Internal(format!("open log task: {e}")))?;
        let (log, extents) = match opened {
            Ok(l) => l,
            Err(e) if e.needs_resync() => {
                resync_required(&*d.lock().map_err(poisoned)?, format!("cycle {cycle}: {e}"));
                return Ok(done);
            }
            Err(e) => return Err(SendError::Internal(e.to_string())),
        };
        let id = log.header().unique_id;
        if cycle <= committed {
            // Committed before a crash deleted the log: record the chain and drop it.
            let _ = tracker.set_shipped_id(id);
            let _ = tracker.remove_shipped(&path);
            continue;
        }
        let expected = tracker.shipped_id().unwrap_or(Guid::NIL);
        if log.header().previous_unique_id != expected {
            resync_required(
                &*d.lock().map_err(poisoned)?,
                format!(
                    "cycle {cycle}: log {} follows {} but the last shipped log is {expected}: a log is missing",
                    path.display(),
                    log.header().previous_unique_id
                ),
            );
            return Ok(done);
        }
        let open_s = t0.elapsed().as_secs_f64();
        let bytes: u64 = extents.iter().map(|e| e.length).sum();
        let resume = begin_cycle(ctrl, o, cycle).await?;
        let items = cycle_items(
            &extents,
            &super::disk::durable(&resume.done),
            sh.opts.chunk as u64,
        );
        let image = LogImage::new(log, extents, job.disk.info().clone());
        let cjob = DiskJob {
            vm: job.vm.clone(),
            name: job.name.clone(),
            disk: Arc::new(image),
            progress: Default::default(),
        };
        // A cycle's zeros are real writes: never "known empty".
        let co = Opened {
            known_empty: false,
            ..o.clone()
        };
        send_all(conn, &cjob, &co, Some(items), &RangeSet::new(), sh).await?;
        let shipped_s = t0.elapsed().as_secs_f64();
        match data_check.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.needs_resync() => {
                resync_required(&*d.lock().map_err(poisoned)?, format!("cycle {cycle}: {e}"));
                return Ok(done);
            }
            Ok(Err(e)) => return Err(SendError::Internal(e.to_string())),
            Err(e) => return Err(SendError::Internal(format!("log check task: {e}"))),
        }
        // The switch's digest was computed while the cycle shipped.
        await_digest(d).await;
        let digest_wait_s = t0.elapsed().as_secs_f64() - shipped_s;
        // Recorded at the switch; none (zeros) when the table was not ready then.
        let digest = tracker.cycle_digest(cycle).unwrap_or([0; 32]);
        commit_cycle(
            ctrl,
            o,
            bytes,
            digest,
            policy.retention.as_secs().min(86_400) as u32,
        )
        .await?;
        tracker
            .set_shipped_id(id)
            .map_err(|e| SendError::Internal(e.to_string()))?;
        tracker
            .remove_shipped(&path)
            .map_err(|e| SendError::Internal(e.to_string()))?;
        if let Ok(mut g) = d.lock() {
            g.committed_cycle = Some(cycle);
        }
        sh.stats.cycles.fetch_add(1, Ordering::Relaxed);
        sh.health.cycle_committed(&job.vm, &job.name, cycle);
        sh.board.committed(&job.vm, &job.name, cycle);
        crate::metrics::events::cycle_committed(&job.vm, &job.name, t0.elapsed().as_secs_f64());
        // `open_seconds`: reading the log's structure; `shipped_seconds`: to the last
        // extent acknowledged; `digest_wait_seconds`: then waiting for the data check and
        // the digest.
        info!(vm = %job.vm, disk = %job.name, cycle, bytes,
              seconds = log_secs(t0.elapsed().as_secs_f64()), open_seconds = log_secs(open_s),
              shipped_seconds = log_secs(shipped_s), digest_wait_seconds = log_secs(digest_wait_s),
              "cycle committed");
        done.push((cycle, bytes, digest));
    }
    Ok(done)
}

/// The work items of a cycle: its extents less what the receiver already holds, in pieces of
/// at most `chunk` bytes.
fn cycle_items(
    extents: &[crate::hrl::CoalescedExtent],
    done: &RangeSet,
    chunk: u64,
) -> Vec<WorkItem> {
    let mut out = Vec::new();
    for e in extents {
        for g in done.gaps_in(e.offset, e.end()) {
            crate::pipeline::push_split(&mut out, g.start, g.end, chunk, false);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hrl::CoalescedExtent;

    #[test]
    fn cycle_items_skip_durable_ranges_and_respect_the_chunk() {
        let ext = |o, l| CoalescedExtent {
            offset: o,
            length: l,
            pieces: vec![],
        };
        let v = cycle_items(
            &[ext(0, 4096), ext(8192, 3 << 20)],
            &[1024..2048, 8192..9216].into_iter().collect(),
            1 << 20,
        );
        let got: Vec<(u64, u32)> = v
            .iter()
            .map(|w| match *w {
                WorkItem::Read { offset, len } => (offset, len),
                WorkItem::Clear { offset, len } => (offset, len),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 1024),
                (2048, 2048),
                (9216, 1 << 20),
                (9216 + (1 << 20), 1 << 20),
                (9216 + (2 << 20), (3 << 20) - 1024 - (2 << 20)),
            ]
        );
    }
}

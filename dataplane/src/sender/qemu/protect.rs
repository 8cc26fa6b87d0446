//! The protection loop of a qemu VM, on an established connection. Each round is one
//! switch of all the VM's disks (one QMP transaction), then per disk what its replica
//! needs, read from the disk's view:
//! - no committed replica: the initial copy (the first round's view is the disks at
//!   protection start), followed by the previous bitmap's cycle when a copy interrupted by
//!   a restart resumed from a later view;
//! - marked "resync required", or no bitmap of its own yet while the receiver holds a
//!   replica: the block-checksum resync (`sender/resync.rs`), committed as one cycle;
//! - otherwise: the previous bitmap's dirty extents, shipped and committed as the next
//!   cycle ([`crate::sender::source::ship_pending`]).
//!
//! Once every disk holds its view, the switch is committed as the VM's recovery point
//! ([`super::point`]). Then the views go, with the bitmaps whose writes are committed. The first round runs at
//! once (it enables protection, or ships what was written while the sender was stopped),
//! then one every interval; every round counts toward `--max-cycles`.
//!
//! A VM in a consistency group (`crate::sender::group_qemu`) runs its first round, and a
//! round retried after qemu was unreachable, alone; every other round's switch is the
//! group's, cut while the image members' tracking locks are held, at the group's times,
//! and its VM point carries the group cycle.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use super::ctl::{QemuVm, Switched};
use super::cycle::ViewCycle;
use super::view::{NbdView, Uncounted};
use crate::sender::disk::{copy_initial, open_disk, DiskJob, Opened, Shared};
use crate::sender::group::Membership;
use crate::sender::protect::{Policy, Schedule, OPERATOR_RESYNC};
use crate::sender::source::ship_pending;
use crate::sender::{ControlStream, SendError};

fn task(e: tokio::task::JoinError) -> SendError {
    SendError::Internal(format!("qemu task: {e}"))
}

async fn blocking<T: Send + 'static>(
    vm: &Arc<QemuVm>,
    f: impl FnOnce(&QemuVm) -> Result<T, SendError> + Send + 'static,
) -> Result<T, SendError> {
    let vm = vm.clone();
    tokio::task::spawn_blocking(move || f(&vm))
        .await
        .map_err(task)?
}

/// Protects `vm` on `conn` until `policy.max_cycles` rounds or an error. A round that
/// fails because qemu is unreachable (a transient source error) is retried for this VM
/// alone, on its control stream and with its disks still open ([`crate::sender::vm_retry`]:
/// Warning, then Critical and an error once `--give-up-after` passed without a round of
/// its own).
pub async fn protect(
    conn: &quinn::Connection,
    vm: &Arc<QemuVm>,
    sched: &Schedule,
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    let mut ctrl = ControlStream::open(conn, &sh.peer, &sh.credit).await?;
    let mut opened: Vec<Option<Opened>> = vec![None; vm.disks.len()];
    let mut first = true;
    // A group member is waited for by the group's switches from now on (its first round,
    // alone, included: as an image member's initial copy is).
    let mut member = policy.group.as_ref().map(|g| g.enter(&vm.name));
    loop {
        if let Some(max) = policy.max_cycles {
            if sched.cycles.load(Ordering::Relaxed) >= max {
                ctrl.finish();
                blocking(vm, |v| v.stop()).await?;
                return Ok(());
            }
        }
        if !first {
            let at = match &member {
                Some(m) => m.group().next_at(),
                None => *sched
                    .next
                    .lock()
                    .map_err(|_| SendError::Internal("schedule lock poisoned".into()))?,
            };
            let left = at
                .saturating_duration_since(crate::clock::tokio_now())
                .as_secs();
            sh.board
                .next_switch(&vm.name, crate::metrics::events::now_unix() + left);
            tokio::time::sleep_until(at).await;
            if member.is_none() {
                if let Ok(mut n) = sched.next.lock() {
                    *n = (*n + sched.interval()).max(crate::clock::tokio_now());
                }
            }
        } else if let Ok(mut n) = sched.next.lock() {
            *n = crate::clock::tokio_now() + sched.interval();
        }
        let cut = if first { None } else { member.as_ref() };
        first = false;
        match switch_and_ship(conn, &mut ctrl, vm, &mut opened, cut, sched, policy, sh).await {
            Ok(()) => {
                if member.is_none() {
                    // Back in the group once a round of its own went through.
                    member = policy.group.as_ref().map(|g| g.enter(&vm.name));
                }
            }
            Err(e) if crate::sender::vm_retry::source_alone(&e) => {
                // The group switches without this VM until it is back.
                member = None;
                let rounds = sched.cycles.load(Ordering::Relaxed);
                let verdict = match &sh.vms {
                    Some(set) => {
                        set.retries
                            .failed(&vm.name, rounds, sh.opts.protect_give_up_after)
                    }
                    None => crate::sender::vm_retry::Verdict::GaveUp,
                };
                let crate::sender::vm_retry::Verdict::RetryIn(delay) = verdict else {
                    return Err(e);
                };
                sh.health
                    .vm_source_failed(&vm.name, &e.verdict(), &e.to_string(), Some(delay));
                warn!(vm = %vm.name, error = %e, retry_in_ms = delay.as_millis() as u64,
                      "the VM's change source failed; retrying this VM alone (the others go on)");
                tokio::time::sleep(delay).await;
                // The retry's round runs at once, then the schedule goes on.
                first = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One round: the switch of every disk (the group's switch when `member` is given), what
/// each disk needs from its view, the VM point.
#[allow(clippy::too_many_arguments)]
async fn switch_and_ship(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    vm: &Arc<QemuVm>,
    opened: &mut [Option<Opened>],
    member: Option<&Membership>,
    sched: &Schedule,
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    // The switch instant (taken before the transaction, as for a log switch): the VM
    // point's time; a group's switch has its own, every member's points' time.
    let (switched, switch_unix_ms, group) = match member {
        None => {
            let at = sh.clock.now_utc().as_millisecond().max(0) as u64;
            (blocking(vm, |v| v.switch()).await?, at, None)
        }
        Some(m) => {
            let cut = m.switch_qemu(vm, &sh.clock).await;
            let Some(switched) = cut.switched else {
                info!(vm = %vm.name, group = %m.group().name(),
                      "the group switch did not reach this VM; its round waits for the next");
                return Ok(());
            };
            (switched?, cut.unix_ms, cut.group)
        }
    };
    let views = match switched {
        Switched::Views(v) => v,
        Switched::NoRoom(message) => {
            // No room for the views' scratch images: the cycle waits (a full target would
            // fail the guest's writes).
            warn!(vm = %vm.name, %message, "no room for the fleecing views: the cycle waits");
            let class = crate::retry::Classified {
                class: "source",
                recoverable: true,
                advice: "free space in the sender's state folder (the views' scratch images need the disks' full size and their metadata, size/4096 + 1 MiB each); the cycle waits",
            };
            sh.health.vm_failed(&vm.name, &class, &message);
            return Ok(());
        }
    };
    info!(vm = %vm.name, generation = views.first().map(|v| v.generation).unwrap_or(0),
          disks = views.len(), group = ?group.as_ref().map(|g| &g.0),
          group_cycle = ?group.as_ref().map(|g| g.1),
          "qemu switch of the VM's disks (one transaction)");
    super::test_hook::after_switch().await;
    // Copies are armed again only by a round that commits (`ctl_copy.rs`).
    vm.disarm_copies();
    let mut advanced = vec![false; views.len()];
    let r = round(
        conn,
        ctrl,
        vm,
        &views,
        opened,
        &mut advanced,
        switch_unix_ms,
        group.as_ref(),
        policy,
        sh,
    )
    .await
    .map_err(|e| view_lost(vm, e));
    let fin = {
        let adv = advanced.clone();
        blocking(vm, move |v| v.finish_switch(&adv)).await
    };
    r?;
    let retention = policy.retention.as_secs().min(86_400) as u32;
    super::point::commit(
        ctrl,
        vm,
        switch_unix_ms,
        group.as_ref(),
        &advanced,
        opened,
        retention,
        sh,
    )
    .await?;
    fin?;
    vm.arm_copies(&advanced);
    sched.cycles.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A round's disk reads are reads of its views: one that failed transiently (qemu went
/// away, its NBD connection lost) is the VM's change source failing, retried for the VM
/// alone.
fn view_lost(vm: &QemuVm, e: SendError) -> SendError {
    match e {
        SendError::Disk(d) if crate::error::Classify::is_transient(&d) => SendError::Source {
            vm: vm.name.clone(),
            message: d.to_string(),
            transient: true,
        },
        e => e,
    }
}

#[allow(clippy::too_many_arguments)]
async fn round(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    vm: &Arc<QemuVm>,
    views: &[vdrep_qemu::fleece::View],
    opened: &mut [Option<Opened>],
    advanced: &mut [bool],
    switch_unix_ms: u64,
    group: Option<&(String, u64)>,
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    // Open the views over NBD.
    let mut readers = Vec::new();
    for v in views {
        let (v, threads) = (v.clone(), sh.opts.threads);
        let r = tokio::task::spawn_blocking(move || NbdView::open(&v, threads))
            .await
            .map_err(task)?
            .map_err(|e| SendError::Source {
                vm: vm.name.clone(),
                message: format!("NBD: {e}"),
                // The switch has just added this export: missing, qemu is stopping or was
                // restarted (seen with a qemu-storage-daemon stopped mid-round); the retry
                // sets up again and finds what qemu lost.
                transient: e.is_transient() || e.is_export_missing(),
            })?;
        readers.push(Arc::new(r));
    }
    let jobs: Vec<DiskJob> = vm
        .disks
        .iter()
        .zip(&readers)
        .map(|(d, r)| DiskJob {
            vm: vm.name.clone(),
            name: d.name.clone(),
            disk: r.clone(),
            progress: Default::default(),
        })
        .collect();
    if opened.iter().any(Option::is_none) {
        // Enable protection's checks at the receiver (authorised, capacity), once per
        // connection.
        let mut to_check = Vec::new();
        // The VM's disk set: the receiver refuses a VM whose store holds other disks too.
        let vm_disks: Vec<String> = vm.disks.iter().map(|d| d.name.clone()).collect();
        for (job, o) in jobs.iter().zip(opened.iter_mut()) {
            let op = open_disk(ctrl, job, &vm_disks, false).await?;
            let copy = !op.initial_committed || op.known_empty;
            to_check.push((job.clone(), op.clone(), copy));
            *o = Some(op);
        }
        sh.jobs
            .connected(ctrl, &vm.name, &to_check, &sh.opts.identity)
            .await?;
        // A point a killed sender planned, before this round ships anything.
        let retention = policy.retention.as_secs().min(86_400) as u32;
        super::point::resend(ctrl, vm, opened, retention, sh).await?;
    }
    // What each disk does from its view, and so the cycle it commits: the round's VM point
    // plan, durable before anything ships.
    let resync_now = sh.bandwidth.resync_allowed_now();
    let steps: Vec<Option<Step>> = views
        .iter()
        .zip(opened.iter())
        .zip(&vm.disks)
        .map(|((view, o), d)| {
            let mark = vm.state.resync_reason(&d.name);
            o.as_ref()
                .map(|o| Step::of(o, view, mark.as_deref(), resync_now))
        })
        .collect();
    let planned: Vec<Option<u64>> = steps
        .iter()
        .zip(opened.iter())
        .map(|(s, o)| s.as_ref()?.cycle(o.as_ref()?.committed_cycle))
        .collect();
    for ((view, step), d) in views.iter().zip(&steps).zip(&vm.disks) {
        if let Some(step) = step.filter(|s| view.copied && *s != Step::Cycle) {
            // qemu's copy holds the dirty blocks only; this step reads more. The retry's
            // switch takes a fleecing view (copies stay disarmed until a round commits).
            return Err(SendError::Source {
                vm: vm.name.clone(),
                message: format!(
                    "disk {}: the switch took qemu's copy of its dirty blocks, but its step is {step:?}; retrying with a fleecing view",
                    d.name
                ),
                transient: true,
            });
        }
    }
    super::point::record(vm, switch_unix_ms, group, &planned);
    for (i, ((job, view), reader)) in jobs.iter().zip(views).zip(&readers).enumerate() {
        let (Some(o), Some(step)) = (opened[i].as_mut(), steps[i]) else {
            continue;
        };
        let name = &vm.disks[i].name;
        let mark = vm.state.resync_reason(name);
        sh.health.resync_required(&vm.name, name, mark.clone());
        if matches!(step, Step::Copy | Step::CopyThenCycle | Step::Resync) {
            // The digest table stops reflecting the disk from here (durably, before
            // anything ships); it is computed again from this view once committed.
            if let Err(e) = blocking(vm, move |v| Ok(v.with_digest(i, |d| d.invalidate()))).await? {
                warn!(vm = %vm.name, disk = %name, error = %e, "cannot mark the digest table stale");
            }
        }
        if matches!(step, Step::Copy | Step::CopyThenCycle) {
            info!(vm = %vm.name, disk = %name, "initial replication from the view of protection start");
            let t0 = crate::clock::tokio_now();
            sh.board.copy_started(&vm.name, name, false);
            sh.jobs.copy_started(ctrl, &vm.name, name).await;
            let out = copy_initial(conn, ctrl, job, o, sh).await?;
            // The replica is point 0 now: later rounds ship cycles.
            o.initial_committed = true;
            o.known_empty = false;
            sh.health.committed(&vm.name, name, sh.clock.now_utc());
            let copied = (view.size, t0.elapsed().as_secs_f64(), out.resumed);
            sh.jobs.copy_done(ctrl, &vm.name, name, copied).await;
            sh.board.committed(&vm.name, name, 0);
            if step == Step::Copy {
                rehash(vm, i, reader, 0).await;
                let b = view.bitmap.clone();
                blocking(vm, move |v| v.advance(i, &b)).await?;
                vm.state.clear_resync(name).ok();
                advanced[i] = true;
                continue;
            }
            // A copy resumed from this later view: blocks copied from an earlier view and
            // written since are in the previous bitmap; its cycle follows.
        } else if step == Step::Wait {
            info!(vm = %vm.name, disk = %name, reason = mark.as_deref().unwrap_or(""),
                  "resync required: it waits for the next non-work period (send --resync starts it now)");
            continue;
        } else if step == Step::Resync {
            info!(vm = %vm.name, disk = %name, reason = mark.as_deref().unwrap_or("no bitmap of this protection yet"),
                  "resync from the view");
            sh.board.copy_started(&vm.name, name, true);
            sh.health.resync_running(&vm.name, name, true);
            let out =
                crate::sender::resync::resync(conn, ctrl, job, o, sh, policy.retention, false)
                    .await;
            sh.health.resync_running(&vm.name, name, false);
            let out = out?;
            rehash(vm, i, reader, out.cycle).await;
            let b = view.bitmap.clone();
            blocking(vm, move |v| v.advance(i, &b)).await?;
            if let Err(e) = vm.state.clear_resync(name) {
                warn!(error = %e, "cannot clear the resync mark");
            }
            sh.health.resync_required(&vm.name, name, None);
            sh.board.committed(&vm.name, name, out.cycle);
            info!(vm = %vm.name, disk = %name, cycle = out.cycle, changed_bytes = out.changed,
                  "resync committed; delta replication resumes");
            advanced[i] = true;
            continue;
        }
        let cycle = o.committed_cycle + 1;
        sh.health
            .switched(&vm.name, name, cycle, sh.clock.now_utc());
        let before = reader.read_bytes();
        let src = Arc::new(ViewCycle {
            vm: vm.clone(),
            index: i,
            cycle,
            view: reader.clone(),
            new_bitmap: view.bitmap.clone(),
            read_before: before,
            extents: Default::default(),
            tee: Default::default(),
        });
        let dirty_before = vm.counters[i].dirty.load(Ordering::Relaxed);
        let shipped = ship_pending(conn, ctrl, job, src, o, None, policy, sh).await;
        let read = reader.read_bytes() - before;
        vm.counters[i].read.fetch_add(read, Ordering::Relaxed);
        let c = &vm.counters[i];
        c.discarded
            .fetch_add(reader.discarded_bytes(), Ordering::Relaxed);
        c.refused
            .fetch_add(reader.refused_reads(), Ordering::Relaxed);
        let shipped = shipped?;
        let dirty = vm.counters[i].dirty.load(Ordering::Relaxed) - dirty_before;
        crate::metrics::events::view_cycle_read(&vm.name, name, dirty, read);
        advanced[i] = shipped.last().map(|c| c.0) == Some(cycle);
    }
    // Every disk's initial copy committed: the initial replication job succeeds and
    // protection is finalized (once; as for change logs). Left running, the job would be
    // failed as "interrupted" by the next sender process.
    if opened.iter().all(|o| {
        o.as_ref()
            .is_some_and(|o| o.initial_committed && !o.known_empty)
    }) {
        let names: Vec<String> = vm.disks.iter().map(|d| d.name.clone()).collect();
        let bitmaps: Vec<String> = vm
            .disks
            .iter()
            .map(|d| format!("{} on node {}", d.name, d.node))
            .collect();
        let tracking = format!("qemu dirty bitmaps: {}", bitmaps.join(", "));
        sh.jobs
            .finalize(ctrl, &vm.name, &names, Some(tracking))
            .await;
    }
    Ok(())
}

/// Computes disk `index`'s digest table from `reader`, the view of its committed cycle
/// `through` (after a copy or a resync): the next cycle's digest refreshes it. A failure
/// leaves it stale, and the next cycle computes it (without it, that cycle has no digest
/// only if that fails too).
async fn rehash(vm: &Arc<QemuVm>, index: usize, reader: &Arc<NbdView>, through: u64) {
    let r = reader.clone();
    let res = blocking(vm, move |v| {
        Ok(v.with_digest(index, |d| {
            let before = d.read;
            d.compute_all(&Uncounted(&r), through)?;
            Ok(d.read - before)
        }))
    })
    .await;
    match res {
        Ok(Ok(read)) => {
            vm.counters[index]
                .digest_read
                .fetch_add(read, Ordering::Relaxed);
            info!(vm = %vm.name, disk = %vm.disks[index].name, cycle = through, read_bytes = read,
                  "digest table computed from the view");
        }
        Ok(Err(e)) => warn!(vm = %vm.name, disk = %vm.disks[index].name, error = %e,
                            "cannot compute the digest table; the next cycle tries again"),
        Err(e) => warn!(vm = %vm.name, error = %e, "digest task failed"),
    }
}

/// What a disk does from its view in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The initial copy (no committed replica), as recovery point 0.
    Copy,
    /// A copy resumed from this later view: blocks copied from an earlier view and written
    /// since are in the previous bitmap, whose cycle (1) follows.
    CopyThenCycle,
    /// The block-checksum resync, as the next cycle: marked "resync required", or no
    /// bitmap of this protection yet while the receiver holds a replica.
    Resync,
    /// A resync vdrep starts by itself (a bitmap lost) waits for the next non-work period,
    /// as for change logs (a new protection and an operator's do not): no cycle this round.
    Wait,
    /// The previous bitmap's dirty extents, as the next cycle.
    Cycle,
}

impl Step {
    fn of(
        o: &Opened,
        view: &vdrep_qemu::fleece::View,
        mark: Option<&str>,
        resync_now: bool,
    ) -> Step {
        if !o.initial_committed || o.known_empty {
            if view.previous_bitmap.is_none() {
                Step::Copy
            } else {
                Step::CopyThenCycle
            }
        } else if mark.is_some() || view.previous_bitmap.is_none() {
            let automatic = mark.is_some_and(|m| m != OPERATOR_RESYNC);
            if automatic && !resync_now {
                Step::Wait
            } else {
                Step::Resync
            }
        } else {
            Step::Cycle
        }
    }

    /// The cycle the disk commits from the view (`committed`: its newest now).
    fn cycle(self, committed: u64) -> Option<u64> {
        match self {
            Step::Copy => Some(0),
            Step::CopyThenCycle => Some(1),
            Step::Resync | Step::Cycle => Some(committed + 1),
            Step::Wait => None,
        }
    }
}

//! Continuous protection: change tracking starts, the initial copy runs, then every interval
//! the active logs of all the VM's disks are switched at one instant and the closed logs are
//! shipped as cycles, each committed by the receiver as a recovery point.
//!
//! A disk whose change history has a gap (a log lost, corrupt or out of chain, or logs
//! reaching half the disk's size) is marked "resync required" (`D.hrl.resync`) and its
//! delta replication stops: shipping a cycle across a gap would make a recovery point that
//! never existed on the source.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};
use vdrep_proto::Guid;

use super::cycle::{ensure_hash_table, ship_all, switch_vm};
use super::disk::{copy_initial, open_disk, DiskJob, Opened, Shared};
use super::{ControlStream, SendError};
use crate::tracking::{Tracker, TrackingError};

/// Cycle policy of a protected VM.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Time between log switches (30 s, 5 min, 15 min; any duration for tests).
    pub interval: Duration,
    /// Recovery points older than this are pruned (0..=24 h).
    pub retention: Duration,
    /// Stop after this many cycles (tests, one-off catch-up); `None` runs until SIGTERM.
    pub max_cycles: Option<u64>,
    /// Initial replication at a start time (ASR's "initial replication: later", to keep a
    /// big first copy out of work hours): change tracking starts at once, so no write is
    /// missed, and disks whose replica is not committed wait until then. `None`: now.
    pub initial_at: Option<jiff::Timestamp>,
    /// The consistency group the VM belongs to (`None`: it switches alone): its switches
    /// are the group's ([`super::group`]).
    pub group: Option<Arc<super::group::Group>>,
}

/// One protected disk across reconnects.
pub struct Protected {
    /// The disk.
    pub job: DiskJob,
    /// Its change logs.
    pub tracker: Tracker,
    /// Newest cycle the receiver committed (known after the first open).
    pub committed_cycle: Option<u64>,
    /// Tracking started in this run: whatever replica the receiver holds predates it, so
    /// the disk is copied in full before cycles can follow.
    pub fresh: bool,
    /// Resynchronise before the next cycle even without a mark (`send --resync`).
    pub force_resync: bool,
    /// The digest of the last switch, computed after the tracking lock is released while
    /// the closed log already ships; awaited before its cycle commits (the commit carries
    /// it).
    pub digest_task: Option<tokio::task::JoinHandle<()>>,
    /// A required resync is waiting for non-work hours (said once).
    pub resync_waiting: bool,
}

/// Starts change tracking of every disk (before its initial copy, so no write is missed).
pub fn start_tracking(disks: &mut [Protected]) -> Result<(), SendError> {
    for d in disks.iter_mut() {
        // A VM switch interrupted by a crash is completed for all its disks (no lock held:
        // it takes them all).
        let now =
            std::time::SystemTime::from(crate::clock::Clock::now_utc(crate::clock::process()));
        if let Some(i) =
            crate::tracking::complete_interrupted(&d.tracker, now).map_err(tracking_err(&d.job))?
        {
            warn!(vm = %d.job.vm, disk = %d.job.name,
                  vm_cycles = ?i.vms.iter().map(|v| (&v.vm, v.cycle)).collect::<Vec<_>>(),
                  "the VM's log switch was interrupted; it is completed for all its disks");
        }
        let locked = d.tracker.lock().map_err(tracking_err(&d.job))?;
        if let Some(cycle) = locked
            .finish_switch(crate::clock::system_time())
            .map_err(tracking_err(&d.job))?
        {
            warn!(vm = %d.job.vm, disk = %d.job.name, cycle,
                  "the switch of this cycle was interrupted; it is completed and tracking continues");
        }
        if !d.tracker.is_active() {
            locked
                .start(Guid::NIL, crate::clock::system_time())
                .map_err(tracking_err(&d.job))?;
            d.tracker
                .set_shipped_id(Guid::NIL)
                .map_err(tracking_err(&d.job))?;
            info!(vm = %d.job.vm, disk = %d.job.name, log = %d.tracker.paths().active.display(),
                  "change tracking started");
            drop(locked);
            d.fresh = true;
        }
    }
    Ok(())
}

pub(super) fn tracking_err(job: &DiskJob) -> impl Fn(TrackingError) -> SendError + '_ {
    move |e| SendError::Internal(format!("{}/{}: change tracking: {e}", job.vm, job.name))
}

/// The schedule of one VM's switches, kept across reconnects.
#[derive(Debug)]
pub struct Schedule {
    pub(super) next: Mutex<Instant>,
    pub(super) cycles: std::sync::atomic::AtomicU64,
    /// Time between switches; a policy change (the control channel) replaces it, from the
    /// switch after the one awaited now.
    interval: Mutex<Duration>,
}

impl Schedule {
    /// The first switch one interval from now.
    pub fn new(interval: Duration) -> Self {
        Schedule {
            next: Mutex::new(crate::clock::tokio_now() + interval),
            cycles: Default::default(),
            interval: Mutex::new(interval),
        }
    }

    /// The interval now.
    pub fn interval(&self) -> Duration {
        self.interval
            .lock()
            .map(|i| *i)
            .unwrap_or(Duration::from_secs(300))
    }

    /// Changes the interval.
    pub fn set_interval(&self, interval: Duration) {
        if let Ok(mut i) = self.interval.lock() {
            *i = interval;
        }
    }
}

/// Why a disk left delta replication.
pub(super) fn resync_required(d: &Protected, reason: String) {
    error!(vm = %d.job.vm, disk = %d.job.name, %reason,
           "resync required: delta replication stops for this disk");
    if let Err(e) = d.tracker.mark_resync(&reason) {
        warn!(error = %e, "cannot record the resync mark");
    }
}

/// Waits until the wall clock reaches the initial replication's start time. Read every
/// second through the sender's clock (so a clock that jumps, or the test-only offset, is
/// followed); the connection stays up meanwhile (QUIC keep-alives).
async fn wait_for_start(at: jiff::Timestamp, job: &DiskJob, sh: &Shared) {
    let mut said = false;
    loop {
        let now = sh.clock.now_utc();
        if now >= at {
            return;
        }
        if !said {
            info!(vm = %job.vm, disk = %job.name, start = %at,
                "initial replication scheduled (writes are tracked meanwhile)");
            said = true;
        }
        let left = now.duration_until(at).unsigned_abs();
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

/// Runs one VM's protection on an established connection until `policy.max_cycles` or an
/// error. Disks that need a resync are resynchronised before cycles resume.
pub async fn protect_vm(
    conn: &quinn::Connection,
    disks: &Arc<Vec<Arc<Mutex<Protected>>>>,
    sched: &Schedule,
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    // A group member is waited for by the group's switches from now on.
    let member = policy.group.as_ref().map(|g| g.enter(&vm_name(disks)));
    let mut ctrl = ControlStream::open(conn, &sh.peer, &sh.credit).await?;
    report_resync(disks, sh);
    // Open every disk first (the receiver authorises the VM; enable protection's checks),
    // then copy those whose initial replication is not committed.
    let mut opened: Vec<Option<Opened>> = Vec::new();
    let mut to_check = Vec::new();
    let vm_disks = disks
        .iter()
        .map(|d| d.lock().map(|g| g.job.name.clone()).map_err(poisoned))
        .collect::<Result<Vec<String>, SendError>>()?;
    for d in disks.iter() {
        let job = d.lock().map(|g| g.job.clone()).map_err(poisoned)?;
        let o = open_disk(&mut ctrl, &job, &vm_disks, false).await?;
        // `known_empty` is set while an initial copy is in progress.
        let copy = !o.initial_committed || o.known_empty;
        to_check.push((job, o.clone(), copy));
        opened.push(Some(o));
    }
    let vm = disks
        .first()
        .and_then(|d| d.lock().ok().map(|g| g.job.vm.clone()))
        .unwrap_or_default();
    sh.jobs
        .connected(&mut ctrl, &vm, &to_check, &sh.opts.identity)
        .await?;
    let mut names = Vec::new();
    let mut logs = Vec::new();
    for (d, o) in disks.iter().zip(opened.iter_mut()) {
        let Some(o) = o else { continue };
        let (job, log, fresh) = d
            .lock()
            .map(|g| (g.job.clone(), g.tracker.paths().active.clone(), g.fresh))
            .map_err(poisoned)?;
        names.push(job.name.clone());
        logs.push(log.display().to_string());
        let committed = if o.initial_committed && !o.known_empty {
            if fresh {
                // Tracking started now: the replica predates it and is brought in line.
                if let Ok(mut g) = d.lock() {
                    g.force_resync = true;
                }
            }
            sh.board.known_cycle(&job.vm, &job.name, o.committed_cycle);
            o.committed_cycle
        } else {
            if needs_resync(d) {
                // The copy reads the disk as it is: a fresh chain follows it.
                restart_chain(d).await?;
            }
            if let Some(at) = policy.initial_at {
                wait_for_start(at, &job, sh).await;
            }
            info!(vm = %job.vm, disk = %job.name, "initial replication (writes are tracked meanwhile)");
            let t0 = crate::clock::tokio_now();
            sh.board.copy_started(&job.vm, &job.name, false);
            sh.jobs.copy_started(&mut ctrl, &vm, &job.name).await;
            let out = copy_initial(conn, &mut ctrl, &job, o, sh).await?;
            sh.health.committed(&job.vm, &job.name, sh.clock.now_utc());
            let copied = (
                job.disk.info().virtual_size,
                t0.elapsed().as_secs_f64(),
                out.resumed,
            );
            sh.jobs.copy_done(&mut ctrl, &vm, &job.name, copied).await;
            clear_resync(d);
            sh.board.committed(&job.vm, &job.name, 0);
            0
        };
        if let Ok(mut g) = d.lock() {
            g.committed_cycle = Some(committed);
            g.fresh = false;
        }
        ensure_hash_table(d).await;
    }
    resync_marked(conn, &mut ctrl, disks, &mut opened, policy, sh).await?;
    sh.jobs
        .finalize(
            &mut ctrl,
            &vm,
            &names,
            Some(format!("change logs: {}", logs.join(", "))),
        )
        .await;
    // Ship whatever is pending (a previous run's closed logs), then cycle.
    ship_all(conn, &mut ctrl, disks, &mut opened, policy, sh).await?;
    loop {
        if let Some(max) = policy.max_cycles {
            if sched.cycles.load(Ordering::Relaxed) >= max {
                ctrl.finish();
                return Ok(());
            }
        }
        let at = match &member {
            Some(m) => m.group().next_at(),
            None => *sched.next.lock().map_err(poisoned)?,
        };
        if let Some(vm) = disks
            .first()
            .and_then(|d| d.lock().ok().map(|g| g.job.vm.clone()))
        {
            let left = at
                .saturating_duration_since(crate::clock::tokio_now())
                .as_secs();
            sh.board
                .next_switch(&vm, crate::metrics::events::now_unix() + left);
            // An operator's resync request interrupts the wait; the switch stays on schedule.
            loop {
                let woken = sh.board.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if mark_requested(disks, sh) {
                    resync_marked(conn, &mut ctrl, disks, &mut opened, policy, sh).await?;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => break,
                    _ = &mut woken => {}
                }
            }
        }
        tokio::time::sleep_until(at).await;
        // One switch for all the VM's disks: their next points are one instant. A group
        // member's is the group's: every member's disks at one instant.
        let cycles = match &member {
            Some(m) => m.switch(disks, &sh.clock).await,
            None => switch_vm(disks, sh).await,
        };
        for (d, cycle) in disks.iter().zip(cycles) {
            if let (Some(cycle), Ok(g)) = (cycle, d.lock()) {
                sh.health
                    .switched(&g.job.vm, &g.job.name, cycle, sh.clock.now_utc());
            }
        }
        if member.is_none() {
            if let Ok(mut n) = sched.next.lock() {
                // Fixed cadence; a late switch does not pile up a burst of switches after it.
                *n = (*n + sched.interval()).max(crate::clock::tokio_now());
            }
        }
        ship_all(conn, &mut ctrl, disks, &mut opened, policy, sh).await?;
        // A gap found while shipping: resynchronise now, then cycles resume.
        resync_marked(conn, &mut ctrl, disks, &mut opened, policy, sh).await?;
        report_resync(disks, sh);
        sched.cycles.fetch_add(1, Ordering::Relaxed);
    }
}

/// The VM of a VM's disks.
fn vm_name(disks: &[Arc<Mutex<Protected>>]) -> String {
    disks
        .first()
        .and_then(|d| d.lock().ok().map(|g| g.job.vm.clone()))
        .unwrap_or_default()
}

/// Tells health which disks need a resync (the marks live beside the disks).
fn report_resync(disks: &[Arc<Mutex<Protected>>], sh: &Shared) {
    for d in disks {
        if let Ok(g) = d.lock() {
            sh.health
                .resync_required(&g.job.vm, &g.job.name, g.tracker.resync_reason());
        }
    }
}

/// Marks `D.hrl.resync` on every disk an operator asked to resynchronise (the control
/// channel's `resync`), so [`resync_marked`] runs the block-checksum resync and a sender
/// that stops before it commits resumes it on restart. Returns whether any disk was marked.
fn mark_requested(disks: &[Arc<Mutex<Protected>>], sh: &Shared) -> bool {
    let mut any = false;
    for d in disks {
        let Ok(mut g) = d.lock() else { continue };
        if !sh.board.take_resync(&g.job.vm, &g.job.name) {
            continue;
        }
        info!(vm = %g.job.vm, disk = %g.job.name, "resync requested by an operator");
        if let Err(e) = g.tracker.mark_resync(OPERATOR_RESYNC) {
            // Still resynchronised now; only a crash before the commit would forget it.
            warn!(error = %e, "cannot record the resync mark");
            g.force_resync = true;
        }
        any = true;
    }
    any
}

/// The `D.hrl.resync` reason of an operator's request.
pub const OPERATOR_RESYNC: &str = "requested by an operator";

fn needs_resync(d: &Mutex<Protected>) -> bool {
    d.lock()
        .map(|g| g.force_resync || g.tracker.resync_reason().is_some())
        .unwrap_or(false)
}

/// Starts a fresh change-log chain under the tracking lock (see `Locked::restart_chain`).
async fn restart_chain(d: &Arc<Mutex<Protected>>) -> Result<(), SendError> {
    let d2 = d.clone();
    tokio::task::spawn_blocking(move || {
        let g = d2.lock().map_err(poisoned)?;
        let locked = g.tracker.lock().map_err(tracking_err(&g.job))?;
        locked
            .restart_chain(crate::clock::system_time())
            .map_err(tracking_err(&g.job))?;
        drop(locked);
        g.tracker
            .set_shipped_id(Guid::NIL)
            .map_err(tracking_err(&g.job))
    })
    .await
    .map_err(|e| SendError::Internal(format!("restart chain task: {e}")))?
}

fn clear_resync(d: &Mutex<Protected>) {
    if let Ok(mut g) = d.lock() {
        g.force_resync = false;
        if let Err(e) = g.tracker.clear_resync() {
            warn!(error = %e, "cannot clear the resync mark");
        }
    }
}

/// Resynchronises every disk marked "resync required" (or forced): a fresh log chain starts
/// under the lock, the replica is brought in line by block checksums as the next cycle, and
/// the mark is cleared once that cycle is committed. A crash in between leaves the mark, so
/// the next run starts over (the comparison skips what already arrived).
async fn resync_marked(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    disks: &Arc<Vec<Arc<Mutex<Protected>>>>,
    opened: &mut [Option<Opened>],
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    for (d, o) in disks.iter().zip(opened.iter_mut()) {
        let Some(o) = o else { continue };
        if !needs_resync(d) {
            continue;
        }
        let (job, committed, forced, reason) = {
            let g = d.lock().map_err(poisoned)?;
            (
                g.job.clone(),
                g.committed_cycle.unwrap_or(o.committed_cycle),
                g.force_resync,
                g.tracker.resync_reason(),
            )
        };
        // An automatic resync waits for the next non-work period (KB3056159: it reads the
        // whole disk); `send --resync`, a new protection and an operator's request do not.
        let asked = forced || reason.as_deref() == Some(OPERATOR_RESYNC);
        if !asked && !sh.bandwidth.resync_allowed_now() {
            let mut g = d.lock().map_err(poisoned)?;
            if !g.resync_waiting {
                g.resync_waiting = true;
                warn!(vm = %job.vm, disk = %job.name, reason = reason.as_deref().unwrap_or(""),
                      "resync required: it waits for the next non-work period (send --resync \
                       starts it now); delta replication stays stopped for this disk");
            }
            continue;
        }
        if let Ok(mut g) = d.lock() {
            g.resync_waiting = false;
        }
        info!(vm = %job.vm, disk = %job.name, "resync started");
        sh.board.copy_started(&job.vm, &job.name, true);
        restart_chain(d).await?;
        o.committed_cycle = committed;
        sh.health.resync_running(&job.vm, &job.name, true);
        let out = super::resync::resync(conn, ctrl, &job, o, sh, policy.retention, false).await;
        sh.health.resync_running(&job.vm, &job.name, false);
        let out = out?;
        if let Ok(mut g) = d.lock() {
            g.committed_cycle = Some(out.cycle);
        }
        clear_resync(d);
        sh.board.committed(&job.vm, &job.name, out.cycle);
        ensure_hash_table(d).await;
        info!(vm = %job.vm, disk = %job.name, cycle = out.cycle, changed_bytes = out.changed,
              "resync committed; delta replication resumes");
    }
    Ok(())
}

pub(super) fn poisoned<T>(_: T) -> SendError {
    SendError::Internal("a lock was poisoned by a panicked task".into())
}

pub(super) fn skip(d: &Mutex<Protected>) -> bool {
    d.lock()
        .map(|g| g.tracker.resync_reason().is_some())
        .unwrap_or(true)
}

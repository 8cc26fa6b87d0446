//! Continuous protection: change tracking starts, the initial copy runs, then every interval
//! each disk's active log is switched and the closed logs are shipped as cycles, each
//! committed by the receiver as a recovery point.
//!
//! A disk whose change history has a gap (a log lost, corrupt or out of chain, or logs
//! reaching half the disk's size) is marked "resync required" (`D.hrl.resync`) and its
//! delta replication stops: shipping a cycle across a gap would make a recovery point that
//! never existed on the source.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{error, info, warn};
use vdrep_proto::wire::Control;
use vdrep_proto::Guid;

use super::disk::{copy_initial, open_disk, send_all, DiskJob, Opened, Shared};
use super::logimage::LogImage;
use super::{ControlStream, SendError};
use crate::hrl::coalesce_log;
use crate::pipeline::WorkItem;
use crate::tracking::{catch_up, switch_digest, HashTable, SwitchDigest, Tracker, TrackingError};

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
        let locked = d.tracker.lock().map_err(tracking_err(&d.job))?;
        if let Some(cycle) = locked
            .finish_switch(SystemTime::now())
            .map_err(tracking_err(&d.job))?
        {
            warn!(vm = %d.job.vm, disk = %d.job.name, cycle,
                  "the switch of this cycle was interrupted; it is completed and tracking continues");
        }
        if !d.tracker.is_active() {
            locked
                .start(Guid::NIL, SystemTime::now())
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

fn tracking_err(job: &DiskJob) -> impl Fn(TrackingError) -> SendError + '_ {
    move |e| SendError::Internal(format!("{}/{}: change tracking: {e}", job.vm, job.name))
}

/// The schedule of one VM's switches, kept across reconnects.
#[derive(Debug)]
pub struct Schedule {
    next: Mutex<Instant>,
    cycles: std::sync::atomic::AtomicU64,
    /// Time between switches; a policy change (the control channel) replaces it, from the
    /// switch after the one awaited now.
    interval: Mutex<Duration>,
}

impl Schedule {
    /// The first switch one interval from now.
    pub fn new(interval: Duration) -> Self {
        Schedule {
            next: Mutex::new(Instant::now() + interval),
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
fn resync_required(d: &Protected, reason: String) {
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
    let mut ctrl = ControlStream::open(conn, &sh.peer).await?;
    report_resync(disks, sh);
    // Open every disk first (the receiver authorises the VM; enable protection's checks),
    // then copy those whose initial replication is not committed.
    let mut opened: Vec<Option<Opened>> = Vec::new();
    let mut to_check = Vec::new();
    for d in disks.iter() {
        let job = d.lock().map(|g| g.job.clone()).map_err(poisoned)?;
        let o = open_disk(&mut ctrl, &job, false).await?;
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
    for (d, o) in disks.iter().zip(&opened) {
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
            let t0 = Instant::now();
            sh.board.copy_started(&job.vm, &job.name, false);
            sh.jobs.copy_started(&mut ctrl, &vm, &job.name).await;
            let out = copy_initial(conn, &mut ctrl, &job, o, sh).await?;
            sh.health.committed(&job.vm, &job.name, sh.clock.now_utc());
            let detail = format!(
                "{} bytes committed as recovery point 0 in {:.1} s ({} bytes resumed)",
                job.disk.info().virtual_size,
                t0.elapsed().as_secs_f64(),
                out.resumed
            );
            sh.jobs.copy_done(&mut ctrl, &vm, &job.name, &detail).await;
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
    resync_marked(conn, &mut ctrl, disks, &opened, policy, sh).await?;
    sh.jobs
        .finalize(
            &mut ctrl,
            &vm,
            &names,
            Some(format!("change logs: {}", logs.join(", "))),
        )
        .await;
    // Ship whatever is pending (a previous run's closed logs), then cycle.
    ship_all(conn, &mut ctrl, disks, &opened, policy, sh).await?;
    loop {
        if let Some(max) = policy.max_cycles {
            if sched.cycles.load(Ordering::Relaxed) >= max {
                ctrl.finish();
                return Ok(());
            }
        }
        let at = *sched.next.lock().map_err(poisoned)?;
        if let Some(vm) = disks
            .first()
            .and_then(|d| d.lock().ok().map(|g| g.job.vm.clone()))
        {
            let left = at.saturating_duration_since(Instant::now()).as_secs();
            sh.board
                .next_switch(&vm, crate::metrics::events::now_unix() + left);
            // An operator's resync request interrupts the wait; the switch stays on schedule.
            loop {
                let woken = sh.board.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if mark_requested(disks, sh) {
                    resync_marked(conn, &mut ctrl, disks, &opened, policy, sh).await?;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => break,
                    _ = &mut woken => {}
                }
            }
        }
        tokio::time::sleep_until(at).await;
        for d in disks.iter() {
            if skip(d) {
                continue;
            }
            if let Some(cycle) = switch(d).await {
                if let Ok(g) = d.lock() {
                    sh.health
                        .switched(&g.job.vm, &g.job.name, cycle, sh.clock.now_utc());
                }
            }
        }
        if let Ok(mut n) = sched.next.lock() {
            // Fixed cadence; a late switch does not pile up a burst of switches after it.
            *n = (*n + sched.interval()).max(Instant::now());
        }
        ship_all(conn, &mut ctrl, disks, &opened, policy, sh).await?;
        // A gap found while shipping: resynchronise now, then cycles resume.
        resync_marked(conn, &mut ctrl, disks, &opened, policy, sh).await?;
        report_resync(disks, sh);
        sched.cycles.fetch_add(1, Ordering::Relaxed);
    }
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
            .restart_chain(SystemTime::now())
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
    opened: &[Option<Opened>],
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    for (d, o) in disks.iter().zip(opened) {
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
        let o = Opened {
            committed_cycle: committed,
            ..o.clone()
        };
        sh.health.resync_running(&job.vm, &job.name, true);
        let out = super::resync::resync(conn, ctrl, &job, &o, sh, policy.retention, false).await;
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

fn poisoned<T>(_: T) -> SendError {
    SendError::Internal("a lock was poisoned by a panicked task".into())
}

fn skip(d: &Mutex<Protected>) -> bool {
    d.lock()
        .map(|g| g.tracker.resync_reason().is_some())
        .unwrap_or(true)
}

/// Closes the active log as the next cycle and starts the next log, holding the tracking
/// lock only for that (and to open a reader of the disk as the switch left it). The cycle's
/// digest is computed after the lock is released (`tracking::switch_digest`), so writers
/// never wait for hashing, and while the closed log already ships; it is awaited before
/// the cycle commits. Returns the cycle switched to.
async fn switch(d: &Arc<Mutex<Protected>>) -> Option<u64> {
    let d2 = d.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<u64, String>>();
    let task = tokio::task::spawn_blocking(move || {
        let prepared = (|| {
            let g = d2.lock().map_err(|_| "lock poisoned".to_string())?;
            let pending = g.tracker.pending().map_err(|e| e.to_string())?;
            let last_pending = pending.last().map(|(c, _)| *c).unwrap_or(0);
            let next = g.committed_cycle.unwrap_or(0).max(last_pending) + 1;
            let size = g.job.disk.info().virtual_size;
            if g.tracker.log_bytes() >= size / 2 {
                return Err(format!(
                    "change logs hold {} bytes, half of the disk's {size}: shipping them would cost more than a resync",
                    g.tracker.log_bytes()
                ));
            }
            Ok((
                next,
                g.tracker.clone(),
                g.job.disk.info().path.clone(),
                g.job.vm.clone(),
                g.job.name.clone(),
            ))
        })();
        let (next, tracker, path, vm, name) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let locked = match tracker.lock() {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        if let Err(e) = locked.switch(next, SystemTime::now()) {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
        // Opened under the lock: a dynamic disk's metadata as the switch left it.
        let disk = crate::disk::open(&path, crate::disk::OpenOptions::default());
        drop(locked);
        let _ = tx.send(Ok(next));
        let t0 = std::time::Instant::now();
        let res = disk.map_err(|e| e.to_string()).and_then(|disk| {
            switch_digest(&tracker, disk.as_ref(), next).map_err(|e| e.to_string())
        });
        let seconds = t0.elapsed().as_secs_f64();
        match res {
            Ok(SwitchDigest::Exact(digest)) => {
                if let Err(e) = tracker.record_digest(next, digest) {
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
    });
    let reason = match rx.await {
        Ok(Ok(next)) => {
            if let Ok(mut g) = d.lock() {
                g.digest_task = Some(task);
            }
            return Some(next);
        }
        Ok(Err(r)) => r,
        Err(_) => match task.await {
            Err(e) => format!("switch task failed: {e}"),
            Ok(()) => "switch task ended without an answer".to_string(),
        },
    };
    if let Ok(g) = d.lock() {
        resync_required(&g, format!("log switch failed: {reason}"));
    }
    None
}

/// Waits for the digest of the last switch (see [`switch`]).
async fn await_digest(d: &Arc<Mutex<Protected>>) {
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
async fn ensure_hash_table(d: &Arc<Mutex<Protected>>) {
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

async fn ship_all(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    disks: &Arc<Vec<Arc<Mutex<Protected>>>>,
    opened: &[Option<Opened>],
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    for (d, o) in disks.iter().zip(opened) {
        let Some(o) = o else { continue };
        if skip(d) {
            continue;
        }
        ship_pending(conn, ctrl, d, o, policy, sh).await?;
    }
    Ok(())
}

/// Ships every closed log of a disk as its cycle, oldest first.
async fn ship_pending(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    d: &Arc<Mutex<Protected>>,
    o: &Opened,
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    let (job, tracker) = {
        let g = d.lock().map_err(poisoned)?;
        (g.job.clone(), g.tracker.clone())
    };
    let pending = tracker
        .pending()
        .map_err(|e| SendError::Internal(e.to_string()))?;
    for (cycle, path) in pending {
        let committed = d.lock().map_err(poisoned)?.committed_cycle.unwrap_or(0);
        let t0 = Instant::now();
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
                return Ok(());
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
            return Ok(());
        }
        let open_s = t0.elapsed().as_secs_f64();
        let bytes: u64 = extents.iter().map(|e| e.length).sum();
        let req = ctrl.req();
        let ans = ctrl
            .call(Control::BeginCycle {
                req,
                handle: o.handle,
                cycle,
            })
            .await?;
        let Control::CycleOpened { progress, .. } = ans else {
            return Err(ctrl.unexpected(ans));
        };
        let items = cycle_items(&extents, &progress, sh.opts.chunk as u64);
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
        send_all(conn, &cjob, &co, Some(items), &[], sh).await?;
        let shipped_s = t0.elapsed().as_secs_f64();
        match data_check.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.needs_resync() => {
                resync_required(&*d.lock().map_err(poisoned)?, format!("cycle {cycle}: {e}"));
                return Ok(());
            }
            Ok(Err(e)) => return Err(SendError::Internal(e.to_string())),
            Err(e) => return Err(SendError::Internal(format!("log check task: {e}"))),
        }
        // The switch's digest was computed while the cycle shipped.
        await_digest(d).await;
        let digest_wait_s = t0.elapsed().as_secs_f64() - shipped_s;
        let digest = tracker.cycle_digest(cycle);
        let req = ctrl.req();
        let ans = ctrl
            .call(Control::CommitCycle {
                req,
                handle: o.handle,
                cycle,
                bytes,
                // Recorded at the switch; none (zeros) when the table was not ready then.
                digest: digest.unwrap_or([0; 32]),
                retention_secs: policy.retention.as_secs().min(86_400) as u32,
            })
            .await?;
        if !matches!(ans, Control::Committed { .. }) {
            return Err(ctrl.unexpected(ans));
        }
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
              seconds = t0.elapsed().as_secs_f64(), open_seconds = open_s,
              shipped_seconds = shipped_s, digest_wait_seconds = digest_wait_s,
              "cycle committed");
    }
    Ok(())
}

/// The work items of a cycle: its extents less what the receiver already holds, in pieces of
/// at most `chunk` bytes.
fn cycle_items(
    extents: &[crate::hrl::CoalescedExtent],
    done: &[(u64, u64)],
    chunk: u64,
) -> Vec<WorkItem> {
    let mut out = Vec::new();
    for e in extents {
        let mut gaps = vec![(e.offset, e.end())];
        for &(ds, de) in done {
            gaps = gaps
                .into_iter()
                .flat_map(|(s, t)| {
                    if de <= s || ds >= t {
                        vec![(s, t)]
                    } else {
                        let mut v = Vec::new();
                        if ds > s {
                            v.push((s, ds));
                        }
                        if de < t {
                            v.push((de, t));
                        }
                        v
                    }
                })
                .collect();
        }
        for (s, t) in gaps {
            crate::pipeline::push_split(&mut out, s, t, chunk, false);
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
            &[(1024, 2048), (8192, 9216)],
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

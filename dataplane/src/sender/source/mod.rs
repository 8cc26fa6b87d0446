//! Change sources: where a protected VM's writes come from. The sender ships a VM's changes
//! the same way whatever tracks them; only the tracking differs:
//! - [`hrl`]: [MS-HRL] change logs beside each disk (Hyper-V writes them, or `vdrep
//!   log-write`); a switch renames the active logs (`tracking::switch_set`);
//! - `sender::qemu`: qemu's dirty bitmaps, read from a fleecing view over NBD; a switch is
//!   one QMP transaction.
//!
//! Per switch a source gives, for every disk of the VM, a closed **cycle**: the extents
//! written since the previous switch and a read-only view that holds at least those
//! extents' bytes as the switch left them ([`CycleChanges`]). Shipping ([`ship_pending`]),
//! recovery points (a committed cycle is the next point), digests and resync are shared.
//!
//! The lifecycle of a cycle, per disk ([`CycleSource`]):
//! 1. [`CycleSource::pending`] lists the closed cycles, oldest first;
//! 2. [`CycleSource::open`] gives a cycle's extents and view, or says it is already
//!    committed (a crash after the commit), or that the history has a gap
//!    ([`SourceError::Gap`]: the disk needs a resync and its delta replication stops);
//! 3. the extents are read from the view and shipped; the cycle's check (if any) must pass
//!    and its digest (if any) is awaited before the commit;
//! 4. [`CycleSource::committed`] releases what held the cycle (a closed log, a view and
//!    its bitmap) once the receiver committed it.
//!
//! The invariant every source keeps: a cycle's extents may over-approximate the writes
//! (unchanged bytes ship again) but never under-approximate them.

pub mod hrl;

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{error, info};
use vdrep_proto::RangeSet;

use super::disk::{begin_cycle, commit_cycle, DiskJob, Opened, Shared};
use super::pass::send_all;
use super::progress::log_secs;
use super::protect::Policy;
use super::{ControlStream, SendError};
use crate::disk::VirtualDisk;
use crate::pipeline::WorkItem;

/// A check run while a cycle ships, to pass before it commits (a log's data checksums).
pub type CycleCheck = Box<dyn FnOnce() -> Result<(), SourceError> + Send>;

/// One closed cycle of one disk, ready to ship.
pub struct CycleChanges {
    /// The extents written in the cycle: sorted, disjoint, inside the disk.
    pub extents: Vec<Range<u64>>,
    /// Reads the extents' bytes as the switch left them (offsets are disk offsets).
    pub view: Arc<dyn VirtualDisk>,
    /// Runs beside the shipping; its failure keeps the cycle from committing.
    pub check: Option<CycleCheck>,
}

/// What [`CycleSource::open`] found.
pub enum Opening {
    /// Ship this.
    Ship(CycleChanges),
    /// The receiver committed the cycle before a crash kept the source from releasing it;
    /// it has been released now.
    AlreadyCommitted,
}

/// Why a cycle cannot ship.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The change history has a gap (a log lost, corrupt or out of chain; a bitmap lost):
    /// shipping would make a recovery point that never existed, so the disk needs a resync.
    #[error("{0}")]
    Gap(String),
    /// A failure of the sender itself (a log unreadable for another reason): the attempt
    /// fails and the VM goes Critical.
    #[error("{0}")]
    Failed(String),
    /// A failure that retrying may cure (qemu or its NBD server unreachable): the attempt
    /// fails and is retried on the schedule.
    #[error("{0}")]
    Transient(String),
}

/// One disk's closed cycles (the lifecycle is at the top of this module). Methods block
/// (file IO, QMP): the sender calls them from blocking threads.
pub trait CycleSource: Send + Sync {
    /// The closed cycles not yet released, oldest first.
    fn pending(&self) -> Result<Vec<u64>, SourceError>;
    /// Opens closed cycle `cycle`.
    fn open(&self, cycle: u64) -> Result<Opening, SourceError>;
    /// The digest of the disk as cycle `cycle`'s switch left it, when known (waits for one
    /// still being computed).
    fn digest(&self, cycle: u64) -> Option<[u8; 32]>;
    /// The receiver committed `cycle`: release it.
    fn committed(&self, cycle: u64) -> Result<(), SourceError>;
    /// Records that the disk needs a resync, with the reason (kept across restarts).
    fn mark_resync(&self, reason: &str);
    /// Whether cycle `cycle`'s bytes are the ones an earlier opening shipped (a closed
    /// [MS-HRL] log never changes: yes). Only then does a cycle the receiver holds in part
    /// (a killed sender, a failed round) skip the ranges it holds; otherwise — a qemu
    /// cycle opened from a new view, which may hold writes made there since the old view —
    /// every extent ships again over the receiver's partial bytes (its undo log keeps each
    /// range's pre-image once, so the point stays one instant).
    fn same_bytes_as_before(&self, cycle: u64) -> bool;
}

fn task_err(what: &str) -> impl Fn(tokio::task::JoinError) -> SendError + '_ {
    move |e| SendError::Internal(format!("{what} task: {e}"))
}

fn failed(vm: &str, e: SourceError) -> SendError {
    match e {
        SourceError::Transient(message) => SendError::Source {
            vm: vm.to_string(),
            message,
            transient: true,
        },
        e => SendError::Internal(e.to_string()),
    }
}

/// Ships the closed cycles of a disk, oldest first, up to cycle `up_to` (all when `None`),
/// each committed as the disk's recovery point. A gap marks the disk "resync required" and
/// stops there (`Ok`). Returns the cycles committed, with their bytes and digests (a VM
/// point is made of them: `sender::points`).
#[allow(clippy::too_many_arguments)]
pub async fn ship_pending(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    job: &DiskJob,
    src: Arc<dyn CycleSource>,
    o: &mut Opened,
    up_to: Option<u64>,
    policy: &Policy,
    sh: &Arc<Shared>,
) -> Result<Vec<(u64, u64, [u8; 32])>, SendError> {
    let s = src.clone();
    let pending = tokio::task::spawn_blocking(move || s.pending())
        .await
        .map_err(task_err("list cycles"))?
        .map_err(|e| failed(&job.vm, e))?;
    let gap = |reason: String| {
        error!(vm = %job.vm, disk = %job.name, %reason,
               "resync required: delta replication stops for this disk");
        src.mark_resync(&reason);
    };
    let mut done = Vec::new();
    for cycle in pending {
        if up_to.is_some_and(|u| cycle > u) {
            break;
        }
        let t0 = crate::clock::tokio_now();
        let s = src.clone();
        let opening = tokio::task::spawn_blocking(move || s.open(cycle))
            .await
            .map_err(task_err("open cycle"))?;
        let changes = match opening {
            Ok(Opening::Ship(c)) => c,
            Ok(Opening::AlreadyCommitted) => continue,
            Err(SourceError::Gap(reason)) => {
                gap(format!("cycle {cycle}: {reason}"));
                return Ok(done);
            }
            Err(e) => return Err(failed(&job.vm, e)),
        };
        // The structure is checked before anything ships, the data while it ships: damaged
        // bytes then reach at most the receiver's open cycle, which is never committed —
        // the resync that follows reopens that cycle (`sender/resync.rs`).
        let check = changes.check.map(tokio::task::spawn_blocking);
        let open_s = t0.elapsed().as_secs_f64();
        let bytes: u64 = changes.extents.iter().map(|e| e.end - e.start).sum();
        let resume = begin_cycle(ctrl, o, cycle).await?;
        let held = if resume.done.is_empty() || src.same_bytes_as_before(cycle) {
            resume.done
        } else {
            info!(vm = %job.vm, disk = %job.name, cycle, held_bytes = resume.done.covered_len(),
                  "the receiver holds part of this cycle from an earlier view: every extent ships again");
            RangeSet::new()
        };
        let items = cycle_items(&changes.extents, &held, sh.opts.chunk as u64);
        let cjob = DiskJob {
            vm: job.vm.clone(),
            name: job.name.clone(),
            disk: changes.view,
            progress: Default::default(),
        };
        // A cycle's zeros are real writes: never "known empty".
        let co = Opened {
            known_empty: false,
            ..o.clone()
        };
        send_all(conn, &cjob, &co, Some(items), &RangeSet::new(), sh).await?;
        let shipped_s = t0.elapsed().as_secs_f64();
        if let Some(check) = check {
            match check.await.map_err(task_err("cycle check"))? {
                Ok(()) => {}
                Err(SourceError::Gap(reason)) => {
                    gap(format!("cycle {cycle}: {reason}"));
                    return Ok(done);
                }
                Err(e) => return Err(failed(&job.vm, e)),
            }
        }
        let s = src.clone();
        let digest = tokio::task::spawn_blocking(move || s.digest(cycle))
            .await
            .map_err(task_err("cycle digest"))?;
        let digest_wait_s = t0.elapsed().as_secs_f64() - shipped_s;
        // None (zeros) when the source has no digest for the cycle.
        let digest = digest.unwrap_or([0; 32]);
        commit_cycle(
            ctrl,
            o,
            bytes,
            digest,
            policy.retention.as_secs().min(86_400) as u32,
        )
        .await?;
        let s = src.clone();
        tokio::task::spawn_blocking(move || s.committed(cycle))
            .await
            .map_err(task_err("release cycle"))?
            .map_err(|e| failed(&job.vm, e))?;
        done.push((cycle, bytes, digest));
        sh.stats.cycles.fetch_add(1, Ordering::Relaxed);
        sh.health.cycle_committed(&job.vm, &job.name, cycle);
        sh.board.committed(&job.vm, &job.name, cycle);
        crate::metrics::events::cycle_committed(&job.vm, &job.name, t0.elapsed().as_secs_f64());
        // `open_seconds`: opening the cycle (a log's structure, a view's block status);
        // `shipped_seconds`: to the last extent acknowledged; `digest_wait_seconds`: then
        // waiting for the check and the digest.
        info!(vm = %job.vm, disk = %job.name, cycle, bytes,
              seconds = log_secs(t0.elapsed().as_secs_f64()), open_seconds = log_secs(open_s),
              shipped_seconds = log_secs(shipped_s), digest_wait_seconds = log_secs(digest_wait_s),
              "cycle committed");
    }
    Ok(done)
}

/// The work items of a cycle: its extents less what the receiver already holds, in pieces of
/// at most `chunk` bytes.
fn cycle_items(extents: &[Range<u64>], done: &RangeSet, chunk: u64) -> Vec<WorkItem> {
    let mut out = Vec::new();
    for e in extents {
        for g in done.gaps_in(e.start, e.end) {
            crate::pipeline::push_split(&mut out, g.start, g.end, chunk, false);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_items_skip_durable_ranges_and_respect_the_chunk() {
        let v = cycle_items(
            &[0..4096, 8192..8192 + (3 << 20)],
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

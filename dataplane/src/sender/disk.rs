//! Replicating one disk over an established connection: what a run's disks share, the
//! disk's protocol calls (open, cycles, the initial copy and its commit) and its progress
//! across reconnects. The passes of extents through the pipeline are `super::pass`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::debug;
use vdrep_proto::session::sender::{DiskEvent, Resume, SenderDisk, ZeroBlocks};
use vdrep_proto::wire::{Control, ExtentHashing};

use super::pass::send_all;
use super::{ControlStream, SendError, SendOptions};
use crate::disk::VirtualDisk;
use crate::pipeline::{AdaptiveLevel, MemoryBudget, Stats, Zeros};
use crate::throttle::Throttle;

/// What every disk and stream of a run shares.
pub struct Shared {
    /// The options.
    pub opts: SendOptions,
    /// Run counters.
    pub stats: Arc<Stats>,
    /// The compression level controller.
    pub level: Arc<AdaptiveLevel>,
    /// The host's bandwidth limit.
    pub throttle: Arc<Throttle>,
    /// The receiver, for error messages.
    pub peer: String,
    /// Health of the VMs and disks.
    pub health: Arc<crate::health::Health>,
    /// The run's clock.
    pub clock: crate::clock::SharedClock,
    /// The host's bandwidth policy (the local control channel changes it).
    pub bandwidth: Arc<crate::throttle::BandwidthControl>,
    /// The run's jobs per VM.
    pub jobs: Arc<super::jobs::SenderJobs>,
    /// Status of every disk (health, RPO, progress) for metrics and the control channel.
    pub board: Arc<super::Board>,
    /// The protected VMs, which the control channel adds to (`None`: one initial copy).
    pub vms: Option<Arc<super::vmset::VmSet>>,
    /// The state folder (`--state`): jobs, health, added VMs, the pushed bandwidth schedule.
    pub state: std::path::PathBuf,
    /// Bytes of prepared extents all disks of the run may hold together.
    pub prepared: Arc<MemoryBudget>,
    /// The process's CPU budget (`--cpu-limit`), which holds back the reads.
    pub cpu: Option<Arc<crate::cpu::CpuBudget>>,
    /// Streams waiting for QUIC stream credit: a batch that would wait for its next extent
    /// ends instead while any does (`sender/credit.rs`).
    pub credit: Arc<super::credit::StreamCredit>,
}

/// One disk to replicate.
#[derive(Clone)]
pub struct DiskJob {
    /// VM name.
    pub vm: String,
    /// Disk name in the store.
    pub name: String,
    /// The source.
    pub disk: Arc<dyn VirtualDisk>,
    /// Progress bookkeeping that survives reconnects.
    pub progress: Arc<DiskProgress>,
}

/// What a disk has contributed to the run's progress, kept across attempts so that a
/// reconnect neither counts resumed bytes twice nor hides progress made durable.
#[derive(Debug, Default)]
pub struct DiskProgress {
    /// Bytes of this disk counted in `Stats::done`.
    counted: AtomicU64,
    /// Largest durable progress the receiver reported for this disk.
    durable: AtomicU64,
    /// Fewest differing bytes a resync comparison of this disk found (0: none yet).
    resync_left: AtomicU64,
}

impl DiskProgress {
    /// Source bytes of the disk's current copy acknowledged or resumed.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    pub(super) fn count(&self, stats: &Stats, n: u64) {
        self.counted.fetch_add(n, Ordering::Relaxed);
        stats.add_done(n);
    }

    /// Records a resync comparison's differing bytes; returns whether fewer remain than any
    /// earlier attempt found: the resync's writes before an interruption became durable,
    /// which is progress (it resets the give-up window like a resumed copy does).
    pub fn resync_remaining(&self, stats: &Stats, left: u64) -> bool {
        let stored = left.saturating_add(1);
        let prev = self.resync_left.load(Ordering::Relaxed);
        if prev == 0 || stored < prev {
            self.resync_left.store(stored, Ordering::Relaxed);
        }
        let grew = prev != 0 && stored < prev;
        if grew {
            stats.durable_growth.fetch_add(1, Ordering::Relaxed);
        }
        grew
    }

    /// Restarts the count at what the receiver holds durably; returns whether that grew
    /// since the last attempt (an attempt that made progress durable did useful work).
    fn reset_to(&self, stats: &Stats, resumed: u64) -> bool {
        let prev = self.counted.swap(resumed, Ordering::Relaxed);
        stats
            .done
            .fetch_sub(prev.min(Stats::get(&stats.done)), Ordering::Relaxed);
        stats.add_done(resumed);
        self.durable.fetch_max(resumed, Ordering::Relaxed) < resumed
    }
}

/// Outcome of a disk's replication.
#[derive(Debug, Clone)]
pub struct DiskOutcome {
    /// Bytes resumed from earlier attempts (skipped).
    pub resumed: u64,
}

/// The receiver's view of a disk, from `OpenDisk`, and the disk's protocol session
/// ([`SenderDisk`]): which request the disk's state allows and which answer it expects.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Handle for data streams and requests.
    pub handle: u32,
    /// Copy generation.
    pub generation: u64,
    /// The working image holds zeros wherever nothing was written.
    pub known_empty: bool,
    /// The protocol version negotiated with the receiver.
    pub protocol: u16,
    /// Durable ranges of the ongoing initial copy, and so what remains to send.
    pub resume: Resume,
    /// An initial copy is committed.
    pub initial_committed: bool,
    /// The newest committed cycle.
    pub committed_cycle: u64,
    /// The disk's protocol state on this connection.
    pub(super) session: SenderDisk,
}

impl Opened {
    /// How the zero blocks of a read travel ([`ZeroBlocks::choose`]: by what the replica
    /// holds and the protocol version), as the pipeline's [`Zeros`].
    pub fn zeros(&self) -> Zeros {
        match ZeroBlocks::choose(self.known_empty, self.protocol) {
            ZeroBlocks::Pack { known_empty } => Zeros::Pack { known_empty },
            ZeroBlocks::Clear => Zeros::Clear,
            ZeroBlocks::Span => Zeros::Span,
            ZeroBlocks::Skip => Zeros::Skip,
        }
    }

    /// What the extents' hashes are made of, by the protocol version (WIRE.md §5).
    pub fn hashing(&self) -> ExtentHashing {
        ExtentHashing::of_version(self.protocol)
    }
}

/// Sends a request the disk's session made and feeds it the answer. A refusal reaches the
/// session too, so that its state stays that of the receiver.
pub(super) async fn disk_call(
    ctrl: &mut ControlStream,
    session: &mut SenderDisk,
    msg: Control,
) -> Result<DiskEvent, SendError> {
    match ctrl.call(msg).await {
        Ok(ans) => session.handle_answer(ans).map_err(|e| ctrl.error(e)),
        Err(e) => {
            if let SendError::Remote { class, message, .. } = &e {
                let _ = session.handle_answer(Control::Error {
                    req: 0,
                    class: *class,
                    message: message.clone(),
                });
            }
            Err(e)
        }
    }
}

/// An answer the session accepted for another request than the driver made: a bug here.
pub(super) fn out_of_order(ev: DiskEvent) -> SendError {
    SendError::Internal(format!("the disk session answered {ev:?} out of order"))
}

/// Opens `job`'s replica at the receiver. `vm_disks` names every disk of the VM (the
/// receiver refuses a VM whose store holds other disks too: issue 17, item 6). `full_copy`
/// starts a new copy of a committed disk (a one-shot send); without it a committed replica
/// is kept for delta cycles.
pub async fn open_disk(
    ctrl: &mut ControlStream,
    job: &DiskJob,
    vm_disks: &[String],
    full_copy: bool,
) -> Result<Opened, SendError> {
    let info = job.disk.info();
    let mut session = SenderDisk::new(
        &job.vm,
        &job.name,
        info.virtual_size,
        info.disk_id.unwrap_or_default(),
        ctrl.version(),
    )
    .with_vm_disks(vm_disks.to_vec());
    let req = ctrl.req();
    let msg = session.open(req, full_copy).map_err(|e| ctrl.error(e))?;
    match disk_call(ctrl, &mut session, msg).await? {
        DiskEvent::Opened { disk, resume } => Ok(Opened {
            handle: disk.handle,
            generation: disk.generation,
            known_empty: disk.known_empty,
            protocol: disk.protocol,
            resume,
            initial_committed: disk.initial_committed,
            committed_cycle: disk.committed_cycle,
            session,
        }),
        other => Err(out_of_order(other)),
    }
}

/// Opens cycle `cycle` of an opened disk at the receiver (a delta cycle, or a resync as the
/// next cycle); returns the cycle's durable progress, for a resumed cycle.
pub async fn begin_cycle(
    ctrl: &mut ControlStream,
    o: &mut Opened,
    cycle: u64,
) -> Result<Resume, SendError> {
    let req = ctrl.req();
    let msg = o
        .session
        .begin_cycle(req, cycle)
        .map_err(|e| ctrl.error(e))?;
    match disk_call(ctrl, &mut o.session, msg).await? {
        DiskEvent::CycleOpened { resume, .. } => Ok(resume),
        other => Err(out_of_order(other)),
    }
}

/// Commits the open cycle of an opened disk as a recovery point.
pub async fn commit_cycle(
    ctrl: &mut ControlStream,
    o: &mut Opened,
    bytes: u64,
    digest: [u8; 32],
    retention_secs: u32,
) -> Result<u64, SendError> {
    let req = ctrl.req();
    let msg = o
        .session
        .commit_cycle(req, bytes, digest, retention_secs)
        .map_err(|e| ctrl.error(e))?;
    match disk_call(ctrl, &mut o.session, msg).await? {
        DiskEvent::CycleCommitted { cycle } => {
            o.committed_cycle = cycle;
            Ok(cycle)
        }
        other => Err(out_of_order(other)),
    }
}

/// The initial copy of an opened disk, resumed from its durable progress, then committed.
pub async fn copy_initial(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    job: &DiskJob,
    o: &mut Opened,
    sh: &Arc<Shared>,
) -> Result<DiskOutcome, SendError> {
    let stats = &sh.stats;
    let resumed = o.resume.resumed;
    if job.progress.reset_to(stats, resumed) {
        stats.durable_growth.fetch_add(1, Ordering::Relaxed);
    }
    debug!(vm = %job.vm, disk = %job.name, handle = o.handle, generation = o.generation, resumed, "initial copy");
    send_all(conn, job, o, None, &o.resume.done, sh).await?;
    let req = ctrl.req();
    let msg = o.session.commit_initial(req).map_err(|e| ctrl.error(e))?;
    match disk_call(ctrl, &mut o.session, msg).await? {
        DiskEvent::InitialCommitted => {
            o.committed_cycle = 0;
            Ok(DiskOutcome { resumed })
        }
        other => Err(out_of_order(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_differing_bytes_than_any_earlier_resync_attempt_count_as_durable_progress() {
        let stats = Stats::default();
        let p = DiskProgress::default();
        assert!(
            !p.resync_remaining(&stats, 1000),
            "the first comparison is the baseline"
        );
        assert!(!p.resync_remaining(&stats, 1000), "no change: no progress");
        assert!(p.resync_remaining(&stats, 600));
        assert!(
            !p.resync_remaining(&stats, 800),
            "more than the best is no progress"
        );
        assert!(p.resync_remaining(&stats, 0), "nothing left differs");
        assert_eq!(Stats::get(&stats.durable_growth), 2);
    }
}

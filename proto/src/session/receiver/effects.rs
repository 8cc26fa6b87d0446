//! What a receiver session asks its driver to do, what the driver reports back, and what the
//! session answers: the vocabulary between [`ReceiverSession`](super::ReceiverSession) and the
//! IO that stores replicas.

use crate::ranges::RangeSet;
use crate::wire::{Control, Job};
use crate::Guid;

use super::super::Refusal;

/// Store work a control request needs. The driver performs it (off the protocol's thread,
/// with its own clock for timestamps) and hands the outcome to
/// [`ReceiverSession::handle_done`](super::ReceiverSession::handle_done) as the matching
/// [`Done`]. The replica's own lifecycle rules (which cycle may begin, a resent commit) are
/// the store's: its refusals come back as a [`Refusal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Open (creating if needed) the replica of `vm`/`disk`; an uncommitted copy resumes, a
    /// new copy generation starts when none is committed or `full_copy` asks for one.
    /// Answer with [`Done::Opened`].
    OpenReplica {
        /// VM name (already authorised).
        vm: String,
        /// Disk name inside the VM (the store validates it as a name).
        disk: String,
        /// Virtual size of the source disk.
        virtual_size: u64,
        /// Identity of the source disk.
        source_id: Guid,
        /// Start a new full copy even if one is committed.
        full_copy: bool,
        /// The sender's disk set of the VM (`OpenDisk.vm_disks`, checked by
        /// [`super::checks::check_vm_disks`]); the store refuses the open when it holds a
        /// disk of the VM not in it. Empty: not said, not checked.
        vm_disks: Vec<String>,
    },
    /// Make every written range durable and commit the initial copy of `handle`.
    /// Answer with [`Done::InitialCommitted`].
    CommitInitial {
        /// The disk.
        handle: u32,
    },
    /// Open delta cycle `cycle` of `handle` (or reopen it after an interruption).
    /// Answer with [`Done::CycleOpened`].
    BeginCycle {
        /// The disk.
        handle: u32,
        /// The cycle.
        cycle: u64,
    },
    /// Commit cycle `cycle` of `handle` as a recovery point, then prune points older than
    /// `retention_secs`. Answer with [`Done::CycleCommitted`].
    CommitCycle {
        /// The disk.
        handle: u32,
        /// The cycle.
        cycle: u64,
        /// Bytes the cycle changed.
        bytes: u64,
        /// Digest of the source at the cycle's switch (all zero: none).
        digest: [u8; 32],
        /// Retention, already clamped to one day.
        retention_secs: u64,
    },
    /// Hash the working image of `handle`: the truncated hashes of `level` under `parents`
    /// (already checked against the disk's tree). Answer with [`Done::Hashes`].
    Hashes {
        /// The disk.
        handle: u32,
        /// Tree level (< `RESYNC_NODE_SIZES.len()`).
        level: u8,
        /// Parent indices at `level - 1` (empty at level 0).
        parents: Vec<u64>,
        /// Rehash the whole image rather than trust the durable index.
        verify: bool,
    },
    /// The full-strength root hash of the working image of `handle`. Answer with
    /// [`Done::Root`].
    Root {
        /// The disk.
        handle: u32,
    },
    /// Record `job` in the store beside its VM's replicas (its VM is authorised and its size
    /// checked). Answer with [`Done::JobRecorded`].
    RecordJob {
        /// The job.
        job: Job,
    },
    /// Free bytes of the store. Answer with [`Done::Capacity`].
    QueryCapacity {
        /// The VM asking (authorised).
        vm: String,
        /// Bytes it expects to write.
        needed: u64,
    },
    /// Make consistency group `group` this connection's, unless another sender's
    /// connection holds it (the holders span connections: the driver keeps them). Its VMs
    /// are authorised. Answer with [`Done::GroupClaimed`].
    ClaimGroup {
        /// The group.
        group: String,
        /// Its member VMs on this sender.
        vms: Vec<String>,
        /// Their interval in seconds.
        interval_secs: u32,
    },
    /// Record VM cycle `vm_cycle` of `vm` as its recovery point: the store checks that every
    /// disk's part is a committed point of that disk, writes the VM's manifest (the point
    /// is visible only then), and prunes whole VM points older than `retention_secs`. A
    /// point already recorded with the same parts succeeds again. Answer with
    /// [`Done::PointCommitted`].
    CommitPoint {
        /// The VM (its disks are open on this connection, so authorised).
        vm: String,
        /// The VM cycle (the point's id).
        vm_cycle: u64,
        /// The sender's switch instant, Unix milliseconds.
        switch_unix_ms: u64,
        /// Consistency group, if the switch was a group's.
        group: Option<String>,
        /// The group's switch number, if any.
        group_cycle: Option<u64>,
        /// Retention, already clamped to one day.
        retention_secs: u64,
        /// The disks' parts, by disk name, sorted by name.
        disks: Vec<PointDisk>,
        /// The sender vouches that every part is one instant of the VM, initial copies
        /// included ([`crate::wire::Control::CommitPoint`]).
        one_instant: bool,
    },
}

/// One disk's part of a VM point, as [`Effect::CommitPoint`] names it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointDisk {
    /// Disk name inside the VM.
    pub disk: String,
    /// The disk's committed cycle that is part of the point.
    pub cycle: u64,
    /// Bytes that cycle changed.
    pub bytes: u64,
    /// Digest of the disk at the switch (all zero: none).
    pub digest: [u8; 32],
}

/// What the store holds of a replica just opened, as [`Effect::OpenReplica`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedReplica {
    /// The current copy generation.
    pub generation: u64,
    /// An initial copy is committed.
    pub initial_committed: bool,
    /// The newest committed cycle.
    pub committed_cycle: u64,
    /// An initial copy is in progress (its working image holds zeros outside `progress`).
    pub initial_in_progress: bool,
    /// Ranges already durable in this generation (canonical: sorted, disjoint, non-empty).
    pub progress: RangeSet,
}

/// The outcome of an [`Effect`], in the same order: one variant per effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// Outcome of [`Effect::OpenReplica`].
    Opened(Result<OpenedReplica, Refusal>),
    /// Outcome of [`Effect::CommitInitial`].
    InitialCommitted(Result<(), Refusal>),
    /// Outcome of [`Effect::BeginCycle`]: the ranges of the cycle already durable.
    CycleOpened(Result<RangeSet, Refusal>),
    /// Outcome of [`Effect::CommitCycle`]: the cycles pruned by retention.
    CycleCommitted(Result<Vec<u64>, Refusal>),
    /// Outcome of [`Effect::Hashes`].
    Hashes(Result<Vec<u64>, Refusal>),
    /// Outcome of [`Effect::Root`].
    Root(Result<[u8; 32], Refusal>),
    /// Outcome of [`Effect::RecordJob`].
    JobRecorded(Result<(), Refusal>),
    /// Outcome of [`Effect::QueryCapacity`]: free bytes, `None` when the store does not say.
    Capacity(Result<Option<u64>, Refusal>),
    /// Outcome of [`Effect::ClaimGroup`]: the newest group cycle the store holds (0: none).
    GroupClaimed(Result<u64, Refusal>),
    /// Outcome of [`Effect::CommitPoint`]: the VM points pruned by retention.
    PointCommitted(Result<usize, Refusal>),
}

/// Something worth a log line or a metric, as the session saw it happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A control stream negotiated `version`.
    Hello {
        /// The sender's software, for logs.
        software: String,
        /// The version both speak.
        version: u16,
    },
    /// The sender asked for a VM it is not authorised for.
    Unauthorized {
        /// The VM.
        vm: String,
    },
    /// A disk was opened under `handle`: the driver keeps its IO state under that handle.
    DiskOpened {
        /// The new handle.
        handle: u32,
        /// VM name.
        vm: String,
        /// Disk name.
        disk: String,
        /// Copy generation.
        generation: u64,
        /// Bytes already durable (resumed, not sent again).
        resumed_bytes: u64,
    },
    /// The initial copy of `handle` is committed.
    InitialCommitted {
        /// The disk.
        handle: u32,
    },
    /// Cycle `cycle` of `handle` is committed as a recovery point.
    CycleCommitted {
        /// The disk.
        handle: u32,
        /// The cycle.
        cycle: u64,
        /// Bytes it changed.
        bytes: u64,
        /// Cycles pruned by retention.
        pruned: usize,
    },
    /// A capacity question was answered.
    CapacityChecked {
        /// The VM.
        vm: String,
        /// Bytes it expects to write.
        needed: u64,
        /// Free bytes (`u64::MAX`: unknown).
        available: u64,
    },
    /// A consistency group was claimed by this connection.
    GroupClaimed {
        /// The group.
        group: String,
        /// Its member VMs.
        vms: Vec<String>,
    },
    /// VM cycle `vm_cycle` of `vm` is recorded as the VM's recovery point.
    PointCommitted {
        /// The VM.
        vm: String,
        /// The VM cycle.
        vm_cycle: u64,
        /// Disks in the point.
        disks: usize,
        /// VM points pruned by retention.
        pruned: usize,
    },
    /// A job report was recorded.
    JobRecorded {
        /// The VM.
        vm: String,
        /// The job's id.
        id: String,
    },
}

/// What the driver does next on a control stream.
#[must_use = "a control step carries an answer to send or store work to perform"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlStep {
    /// Send `answer`; when `close`, finish the stream after it and read nothing more.
    Answer {
        /// The frame to send.
        answer: Control,
        /// The stream ends after this answer.
        close: bool,
        /// What to log or count.
        report: Option<Report>,
    },
    /// Perform this store work, then pass its outcome to `handle_done`.
    Perform(Effect),
}

//! Control-stream messages: the request/answer conversation of a sender with the receiver.

pub use super::fields::{MAX_HASHES, MAX_HASH_PARENTS, MAX_RANGES, PROGRESS_PAGE};
use super::ErrorClass;
use crate::ranges::RangeSet;
use crate::Guid;

mod codec;
#[cfg(test)]
pub(super) use codec::K_HELLO;

/// Messages on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Sender → receiver, first frame: the versions the sender speaks.
    Hello {
        /// Oldest version.
        min_version: u16,
        /// Newest version.
        max_version: u16,
        /// Software version, for logs.
        software: String,
    },
    /// Receiver → sender: the chosen version.
    HelloAck {
        /// Negotiated version.
        version: u16,
    },
    /// Sender → receiver: open (creating if needed) the replica of one disk.
    OpenDisk {
        /// Request id echoed in the answer.
        req: u32,
        /// VM name.
        vm: String,
        /// Disk name inside the VM.
        disk: String,
        /// Virtual size of the source disk.
        virtual_size: u64,
        /// Identity of the source disk.
        source_id: Guid,
        /// Start a new full copy even if one is committed.
        full_copy: bool,
        /// The VM's disk set (version 5, [`crate::wire::DISK_SET_VERSION`]): the name of every
        /// disk the sender protects of this VM, this one included, at most
        /// [`MAX_POINT_DISKS`]. The receiver refuses the open (`DiskSetChanged`) when the
        /// store holds a disk of the VM that is not in it. Trailing, sent only when not
        /// empty; empty: the sender does not say (an older sender), and is not checked.
        vm_disks: Vec<String>,
    },
    /// Receiver → sender: the replica's durable state.
    DiskOpened {
        /// The request.
        req: u32,
        /// Handle for data streams.
        handle: u32,
        /// Initial replication already committed.
        initial_committed: bool,
        /// Last committed cycle.
        committed_cycle: u64,
        /// Copy generation; data streams carry it so stale batches are refused.
        generation: u64,
        /// The replica is known to hold only zeros outside `progress` (a fresh copy), so
        /// zero ranges need no clear.
        known_empty: bool,
        /// Ranges already durable in this generation: the sender skips them. From version 4
        /// at most [`PROGRESS_PAGE`] of them; the rest follow in [`Control::ProgressPage`]s.
        progress: RangeSet,
        /// Version 4: more progress follows (ask with [`Control::ProgressRequest`]). A
        /// trailing byte sent only when set, so a version-3 peer never sees it.
        more_progress: bool,
    },
    /// Sender → receiver: every extent of the initial copy was accepted; commit it.
    CommitInitial {
        /// Request id.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// Generation being committed.
        generation: u64,
    },
    /// Receiver → sender: the commit is durable.
    Committed {
        /// The request.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// Committed cycle (0 for the initial replication).
        cycle: u64,
    },
    /// Sender → receiver: open delta cycle `cycle` of a committed replica (the committed
    /// cycle + 1, or the open one again after an interruption).
    BeginCycle {
        /// Request id.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// The cycle.
        cycle: u64,
    },
    /// Receiver → sender: the cycle is open; `progress` is what is already durable of it.
    CycleOpened {
        /// The request.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// The cycle.
        cycle: u64,
        /// Ranges of this cycle already durable: the sender skips them (paged from version
        /// 4, as in [`Control::DiskOpened`]).
        progress: RangeSet,
        /// Version 4: more progress follows (see [`Control::DiskOpened`]).
        more_progress: bool,
    },
    /// Sender → receiver: every extent of the cycle was accepted; commit it as a recovery
    /// point and prune points older than the retention.
    CommitCycle {
        /// Request id.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// The cycle.
        cycle: u64,
        /// Bytes the cycle changed.
        bytes: u64,
        /// BLAKE3 digest of the disk at the cycle's switch (all zero: none).
        digest: [u8; 32],
        /// Recovery-point retention in seconds (0..=86400).
        retention_secs: u32,
    },
    /// Sender → receiver (resync): the truncated tree hashes of the replica's working image
    /// at `level` (geometry in [`super::RESYNC_NODE_SIZES`]): of every top node when
    /// `parents` is empty, else of the children of each listed node of level `level - 1`.
    HashRequest {
        /// Request id.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// Tree level of the hashes asked for (0 = top).
        level: u8,
        /// Parent node indices at `level - 1`, ascending, at most [`MAX_HASH_PARENTS`].
        parents: Vec<u64>,
        /// At level 0 (the start of a comparison): rehash the whole working image instead of
        /// trusting the receiver's durable index, and repair the index (`send --verify`).
        /// A trailing byte, absent in frames of senders that predate it (read as false).
        verify: bool,
    },
    /// Receiver → sender: the hashes asked for, in order ([`super::RESYNC_FANOUT`] per parent,
    /// fewer at the disk's end).
    Hashes {
        /// The request.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// Their level.
        level: u8,
        /// First 8 bytes (LE) of each node's BLAKE3.
        hashes: Vec<u64>,
    },
    /// Sender → receiver (resync): the full-strength root hash of the working image now.
    RootRequest {
        /// Request id.
        req: u32,
        /// Disk handle.
        handle: u32,
    },
    /// Receiver → sender: the root.
    Root {
        /// The request.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// BLAKE3 root of the tree over the whole disk.
        root: [u8; 32],
    },
    /// Receiver → sender: a request failed.
    Error {
        /// The request (0 when none).
        req: u32,
        /// Classification.
        class: ErrorClass,
        /// Human-readable reason.
        message: String,
    },
    /// Sender → receiver: record this job (replacing an earlier report with its id) in the
    /// store beside the VM's replicas. See [`super::job`].
    ReportJob {
        /// Request id.
        req: u32,
        /// The whole job.
        job: crate::job::Job,
    },
    /// Receiver → sender: the job report is durable in the store.
    JobRecorded {
        /// The request.
        req: u32,
    },
    /// Sender → receiver (enable protection's capacity check): how many bytes the store
    /// has left for a VM that needs about `needed` more.
    QueryCapacity {
        /// Request id.
        req: u32,
        /// The VM (authorised like its disks).
        vm: String,
        /// Bytes the sender expects to write (allocated bytes of its disks).
        needed: u64,
    },
    /// Receiver → sender: free bytes of the store (`u64::MAX`: the store does not say).
    Capacity {
        /// The request.
        req: u32,
        /// Free bytes.
        available: u64,
    },
    /// Sender → receiver, before its members' disks are opened: this connection protects
    /// consistency group `group` with the member VMs `vms` (each authorised like its disks;
    /// at most [`MAX_GROUP_VMS`]). A group is protected by one sender: the receiver refuses
    /// the claim while another sender's connection holds the group.
    ClaimGroup {
        /// Request id.
        req: u32,
        /// The group's name.
        group: String,
        /// Its member VMs on this sender.
        vms: Vec<String>,
        /// The members' switch interval in seconds (for the receiver's log).
        interval_secs: u32,
    },
    /// Receiver → sender: the group is this connection's.
    GroupClaimed {
        /// The request.
        req: u32,
        /// The newest group cycle the store holds of the group (0: none known); the sender
        /// numbers its next switches above it.
        group_cycle: u64,
    },
    /// Sender → receiver (version 4): the next page of the progress the last `DiskOpened`
    /// or `CycleOpened` of `handle` announced, starting at the first range at or after
    /// `after` (the end of the last range received).
    ProgressRequest {
        /// Request id.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// Offset the page starts from.
        after: u64,
    },
    /// Receiver → sender (version 4): one page of progress, at most [`PROGRESS_PAGE`] ranges,
    /// all at or after the `after` asked for.
    ProgressPage {
        /// The request.
        req: u32,
        /// Disk handle.
        handle: u32,
        /// The ranges of this page.
        progress: RangeSet,
        /// Another page follows.
        more: bool,
    },
    /// Sender → receiver (version 5): every disk's part of VM cycle `vm_cycle` is
    /// committed (each by its `CommitCycle`); record them together as the VM's recovery
    /// point, written last, so a point never holds some disks of a switch but not others
    /// (WIRE.md §4.5). Resending it after a lost answer is harmless.
    CommitPoint {
        /// Request id.
        req: u32,
        /// The VM cycle: the switch's number, the point's id.
        vm_cycle: u64,
        /// The sender's switch instant, Unix milliseconds (the point's source time).
        switch_unix_ms: u64,
        /// The consistency group the switch was made for (`None` outside a group).
        group: Option<String>,
        /// The group's switch number (`None` outside a group).
        group_cycle: Option<u64>,
        /// Recovery-point retention in seconds (0..=86400): older VM points are pruned.
        retention_secs: u32,
        /// Every disk of the switch, at most [`MAX_POINT_DISKS`].
        disks: Vec<PointPart>,
        /// Every part holds the VM at the switch's one instant, initial copies included
        /// (a qemu switch: all the VM's views come from one transaction), so the point is
        /// consistent even with parts at cycle 0. A trailing flag sent only when set:
        /// without it (senders that predate it; [MS-HRL] switches, whose initial copies run
        /// disk after disk) a point is consistent only when every part is past cycle 0.
        one_instant: bool,
    },
    /// Receiver → sender (version 5): the VM point is durable.
    PointCommitted {
        /// The request.
        req: u32,
        /// The VM cycle recorded.
        vm_cycle: u64,
    },
}

/// Most disks one [`Control::CommitPoint`] may name (a VM has far fewer).
pub const MAX_POINT_DISKS: usize = 256;

/// One disk's part of a VM point: the disk (by its handle on this connection) at its own
/// committed cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointPart {
    /// Disk handle (open on this connection).
    pub handle: u32,
    /// The disk's cycle that belongs to the point (committed before the point).
    pub cycle: u64,
    /// Bytes that cycle changed.
    pub bytes: u64,
    /// BLAKE3 digest of the disk at the switch (all zero: none).
    pub digest: [u8; 32],
}

/// Most VMs in one consistency group (ASR's limit), and in one [`Control::ClaimGroup`].
pub const MAX_GROUP_VMS: usize = 16;

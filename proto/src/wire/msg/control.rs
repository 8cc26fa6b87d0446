//! Control-stream messages: the request/answer conversation of a sender with the receiver.

use super::super::codec::{Reader, Writer};
use super::super::{MAX_CONTROL_BODY, MAX_STRING};
use super::fields::{ranges_r, ranges_w, u64s_r, u64s_w};
pub use super::fields::{MAX_HASHES, MAX_HASH_PARENTS, MAX_RANGES, PROGRESS_PAGE};
use super::ErrorClass;
use crate::{FormatError, Guid};

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
        progress: Vec<(u64, u64)>,
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
        progress: Vec<(u64, u64)>,
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
        progress: Vec<(u64, u64)>,
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

pub(super) const K_HELLO: u8 = 1;
const K_HELLO_ACK: u8 = 2;
const K_OPEN_DISK: u8 = 3;
const K_DISK_OPENED: u8 = 4;
const K_COMMIT_INITIAL: u8 = 5;
const K_COMMITTED: u8 = 6;
const K_ERROR: u8 = 7;
const K_BEGIN_CYCLE: u8 = 8;
const K_CYCLE_OPENED: u8 = 9;
const K_COMMIT_CYCLE: u8 = 10;
const K_HASH_REQUEST: u8 = 11;
const K_HASHES: u8 = 12;
const K_ROOT_REQUEST: u8 = 13;
const K_ROOT: u8 = 14;

const K_REPORT_JOB: u8 = 15;
const K_JOB_RECORDED: u8 = 16;
const K_QUERY_CAPACITY: u8 = 17;
const K_CAPACITY: u8 = 18;
// Consistency groups: numbered apart from the others so that messages added beside them
// at the same time cannot take the same numbers.
const K_CLAIM_GROUP: u8 = 40;
const K_GROUP_CLAIMED: u8 = 41;
const K_PROGRESS_REQUEST: u8 = 19;
const K_PROGRESS_PAGE: u8 = 20;
const K_COMMIT_POINT: u8 = 21;
const K_POINT_COMMITTED: u8 = 22;

/// `OpenDisk.vm_disks`: absent reads as empty; present, 1 ..= [`MAX_POINT_DISKS`] names (an
/// empty list would give one message two encodings).
fn vm_disks_r(r: &mut Reader<'_>) -> Result<Vec<String>, FormatError> {
    if r.at_end() {
        return Ok(Vec::new());
    }
    let n = r.u32()? as usize;
    if n == 0 || n > MAX_POINT_DISKS {
        return Err(FormatError::new(
            "control frame",
            0,
            format!("OpenDisk names {n} disks of its VM: 1 to {MAX_POINT_DISKS} expected"),
        ));
    }
    (0..n).map(|_| r.str(MAX_STRING)).collect()
}

/// A trailing flag sent only when set (WIRE.md §2): absent reads as false, present must be 1
/// (a 0 would give one message two encodings).
fn optional_flag(r: &mut Reader<'_>) -> Result<bool, FormatError> {
    if r.at_end() {
        return Ok(false);
    }
    match r.u8()? {
        1 => Ok(true),
        v => Err(FormatError::new(
            "control frame",
            0,
            format!("trailing flag {v}: only 1 may be sent"),
        )),
    }
}

impl Control {
    /// Encodes the message as a whole frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let kind = match self {
            Control::Hello {
                min_version,
                max_version,
                software,
            } => {
                w.u16(*min_version).u16(*max_version).str(software);
                K_HELLO
            }
            Control::HelloAck { version } => {
                w.u16(*version);
                K_HELLO_ACK
            }
            Control::OpenDisk {
                req,
                vm,
                disk,
                virtual_size,
                source_id,
                full_copy,
                vm_disks,
            } => {
                w.u32(*req)
                    .str(vm)
                    .str(disk)
                    .u64(*virtual_size)
                    .raw(&source_id.0)
                    .u8(*full_copy as u8);
                if !vm_disks.is_empty() {
                    w.u32(vm_disks.len() as u32);
                    for d in vm_disks {
                        w.str(d);
                    }
                }
                K_OPEN_DISK
            }
            Control::DiskOpened {
                req,
                handle,
                initial_committed,
                committed_cycle,
                generation,
                known_empty,
                progress,
                more_progress,
            } => {
                w.u32(*req)
                    .u32(*handle)
                    .u8(*initial_committed as u8)
                    .u64(*committed_cycle)
                    .u64(*generation)
                    .u8(*known_empty as u8);
                ranges_w(&mut w, progress);
                if *more_progress {
                    w.u8(1);
                }
                K_DISK_OPENED
            }
            Control::CommitInitial {
                req,
                handle,
                generation,
            } => {
                w.u32(*req).u32(*handle).u64(*generation);
                K_COMMIT_INITIAL
            }
            Control::Committed { req, handle, cycle } => {
                w.u32(*req).u32(*handle).u64(*cycle);
                K_COMMITTED
            }
            Control::Error {
                req,
                class,
                message,
            } => {
                w.u32(*req).u16(class.code()).str(message);
                K_ERROR
            }
            Control::BeginCycle { req, handle, cycle } => {
                w.u32(*req).u32(*handle).u64(*cycle);
                K_BEGIN_CYCLE
            }
            Control::CycleOpened {
                req,
                handle,
                cycle,
                progress,
                more_progress,
            } => {
                w.u32(*req).u32(*handle).u64(*cycle);
                ranges_w(&mut w, progress);
                if *more_progress {
                    w.u8(1);
                }
                K_CYCLE_OPENED
            }
            Control::CommitCycle {
                req,
                handle,
                cycle,
                bytes,
                digest,
                retention_secs,
            } => {
                w.u32(*req)
                    .u32(*handle)
                    .u64(*cycle)
                    .u64(*bytes)
                    .raw(digest)
                    .u32(*retention_secs);
                K_COMMIT_CYCLE
            }
            Control::HashRequest {
                req,
                handle,
                level,
                parents,
                verify,
            } => {
                w.u32(*req).u32(*handle).u8(*level);
                u64s_w(&mut w, parents);
                w.u8(*verify as u8);
                K_HASH_REQUEST
            }
            Control::Hashes {
                req,
                handle,
                level,
                hashes,
            } => {
                w.u32(*req).u32(*handle).u8(*level);
                u64s_w(&mut w, hashes);
                K_HASHES
            }
            Control::RootRequest { req, handle } => {
                w.u32(*req).u32(*handle);
                K_ROOT_REQUEST
            }
            Control::Root { req, handle, root } => {
                w.u32(*req).u32(*handle).raw(root);
                K_ROOT
            }
            Control::ReportJob { req, job } => {
                w.u32(*req);
                super::super::job::write(job, &mut w);
                K_REPORT_JOB
            }
            Control::JobRecorded { req } => {
                w.u32(*req);
                K_JOB_RECORDED
            }
            Control::QueryCapacity { req, vm, needed } => {
                w.u32(*req).str(vm).u64(*needed);
                K_QUERY_CAPACITY
            }
            Control::Capacity { req, available } => {
                w.u32(*req).u64(*available);
                K_CAPACITY
            }
            Control::ClaimGroup {
                req,
                group,
                vms,
                interval_secs,
            } => {
                w.u32(*req).str(group).u32(vms.len() as u32);
                for vm in vms {
                    w.str(vm);
                }
                w.u32(*interval_secs);
                K_CLAIM_GROUP
            }
            Control::GroupClaimed { req, group_cycle } => {
                w.u32(*req).u64(*group_cycle);
                K_GROUP_CLAIMED
            }
            Control::ProgressRequest { req, handle, after } => {
                w.u32(*req).u32(*handle).u64(*after);
                K_PROGRESS_REQUEST
            }
            Control::ProgressPage {
                req,
                handle,
                progress,
                more,
            } => {
                w.u32(*req).u32(*handle);
                ranges_w(&mut w, progress);
                w.u8(*more as u8);
                K_PROGRESS_PAGE
            }
            Control::CommitPoint {
                req,
                vm_cycle,
                switch_unix_ms,
                group,
                group_cycle,
                retention_secs,
                disks,
                one_instant,
            } => {
                w.u32(*req).u64(*vm_cycle).u64(*switch_unix_ms);
                match group {
                    Some(g) => w.u8(1).str(g),
                    None => w.u8(0),
                };
                match group_cycle {
                    Some(c) => w.u8(1).u64(*c),
                    None => w.u8(0),
                };
                w.u32(*retention_secs).u32(disks.len() as u32);
                for d in disks {
                    w.u32(d.handle).u64(d.cycle).u64(d.bytes).raw(&d.digest);
                }
                if *one_instant {
                    w.u8(1);
                }
                K_COMMIT_POINT
            }
            Control::PointCommitted { req, vm_cycle } => {
                w.u32(*req).u64(*vm_cycle);
                K_POINT_COMMITTED
            }
        };
        let mut out = Vec::with_capacity(w.buf.len() + 5);
        super::super::encode_frame(kind, &w.buf, &mut out);
        out
    }

    /// Decodes a control frame body of type `kind`.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Control, FormatError> {
        if body.len() > MAX_CONTROL_BODY as usize {
            return Err(FormatError::new("control frame", 0, "body too large"));
        }
        let what = "control frame";
        let mut r = Reader::new(body, what);
        let m = match kind {
            K_HELLO => Control::Hello {
                min_version: r.u16()?,
                max_version: r.u16()?,
                software: r.str(MAX_STRING)?,
            },
            K_HELLO_ACK => Control::HelloAck { version: r.u16()? },
            K_OPEN_DISK => Control::OpenDisk {
                req: r.u32()?,
                vm: r.str(MAX_STRING)?,
                disk: r.str(MAX_STRING)?,
                virtual_size: r.u64()?,
                source_id: Guid(r.array()?),
                full_copy: r.bool()?,
                vm_disks: vm_disks_r(&mut r)?,
            },
            K_DISK_OPENED => Control::DiskOpened {
                req: r.u32()?,
                handle: r.u32()?,
                initial_committed: r.bool()?,
                committed_cycle: r.u64()?,
                generation: r.u64()?,
                known_empty: r.bool()?,
                progress: ranges_r(&mut r, what)?,
                more_progress: optional_flag(&mut r)?,
            },
            K_COMMIT_INITIAL => Control::CommitInitial {
                req: r.u32()?,
                handle: r.u32()?,
                generation: r.u64()?,
            },
            K_COMMITTED => Control::Committed {
                req: r.u32()?,
                handle: r.u32()?,
                cycle: r.u64()?,
            },
            K_ERROR => {
                let req = r.u32()?;
                let code = r.u16()?;
                let class = ErrorClass::from_code(code).ok_or_else(|| {
                    FormatError::new(what, 4, format!("unknown error class {code}"))
                })?;
                Control::Error {
                    req,
                    class,
                    message: r.str(MAX_STRING)?,
                }
            }
            K_BEGIN_CYCLE => Control::BeginCycle {
                req: r.u32()?,
                handle: r.u32()?,
                cycle: r.u64()?,
            },
            K_CYCLE_OPENED => Control::CycleOpened {
                req: r.u32()?,
                handle: r.u32()?,
                cycle: r.u64()?,
                progress: ranges_r(&mut r, what)?,
                more_progress: optional_flag(&mut r)?,
            },
            K_COMMIT_CYCLE => Control::CommitCycle {
                req: r.u32()?,
                handle: r.u32()?,
                cycle: r.u64()?,
                bytes: r.u64()?,
                digest: r.array()?,
                retention_secs: r.u32()?,
            },
            K_HASH_REQUEST => Control::HashRequest {
                req: r.u32()?,
                handle: r.u32()?,
                level: r.u8()?,
                parents: u64s_r(&mut r, MAX_HASH_PARENTS, what)?,
                verify: if r.at_end() { false } else { r.bool()? },
            },
            K_HASHES => Control::Hashes {
                req: r.u32()?,
                handle: r.u32()?,
                level: r.u8()?,
                hashes: u64s_r(&mut r, MAX_HASHES, what)?,
            },
            K_ROOT_REQUEST => Control::RootRequest {
                req: r.u32()?,
                handle: r.u32()?,
            },
            K_ROOT => Control::Root {
                req: r.u32()?,
                handle: r.u32()?,
                root: r.array()?,
            },
            K_REPORT_JOB => Control::ReportJob {
                req: r.u32()?,
                job: super::super::job::read(&mut r, what)?,
            },
            K_JOB_RECORDED => Control::JobRecorded { req: r.u32()? },
            K_QUERY_CAPACITY => Control::QueryCapacity {
                req: r.u32()?,
                vm: r.str(MAX_STRING)?,
                needed: r.u64()?,
            },
            K_CAPACITY => Control::Capacity {
                req: r.u32()?,
                available: r.u64()?,
            },
            K_CLAIM_GROUP => {
                let req = r.u32()?;
                let group = r.str(MAX_STRING)?;
                let n = r.u32()? as usize;
                if n > MAX_GROUP_VMS {
                    return Err(FormatError::new(
                        what,
                        0,
                        format!("a group of {n} VMs; a group has at most {MAX_GROUP_VMS}"),
                    ));
                }
                let mut vms = Vec::with_capacity(n);
                for _ in 0..n {
                    vms.push(r.str(MAX_STRING)?);
                }
                Control::ClaimGroup {
                    req,
                    group,
                    vms,
                    interval_secs: r.u32()?,
                }
            }
            K_GROUP_CLAIMED => Control::GroupClaimed {
                req: r.u32()?,
                group_cycle: r.u64()?,
            },
            K_PROGRESS_REQUEST => Control::ProgressRequest {
                req: r.u32()?,
                handle: r.u32()?,
                after: r.u64()?,
            },
            K_PROGRESS_PAGE => Control::ProgressPage {
                req: r.u32()?,
                handle: r.u32()?,
                progress: ranges_r(&mut r, what)?,
                more: r.bool()?,
            },
            K_COMMIT_POINT => {
                let req = r.u32()?;
                let vm_cycle = r.u64()?;
                let switch_unix_ms = r.u64()?;
                let group = if r.bool()? {
                    Some(r.str(MAX_STRING)?)
                } else {
                    None
                };
                let group_cycle = if r.bool()? { Some(r.u64()?) } else { None };
                let retention_secs = r.u32()?;
                let n = r.u32()? as usize;
                if n > MAX_POINT_DISKS {
                    return Err(FormatError::new(
                        what,
                        0,
                        format!("{n} disks in a point exceed the limit of {MAX_POINT_DISKS}"),
                    ));
                }
                let mut disks = Vec::with_capacity(n);
                for _ in 0..n {
                    disks.push(PointPart {
                        handle: r.u32()?,
                        cycle: r.u64()?,
                        bytes: r.u64()?,
                        digest: r.array()?,
                    });
                }
                Control::CommitPoint {
                    req,
                    vm_cycle,
                    switch_unix_ms,
                    group,
                    group_cycle,
                    retention_secs,
                    disks,
                    one_instant: optional_flag(&mut r)?,
                }
            }
            K_POINT_COMMITTED => Control::PointCommitted {
                req: r.u32()?,
                vm_cycle: r.u64()?,
            },
            k => {
                return Err(FormatError::new(
                    what,
                    0,
                    format!("unknown control frame type {k}"),
                ))
            }
        };
        r.finish()?;
        Ok(m)
    }
}

//! The bytes of the control messages (WIRE.md §4): each message's type code, and its body
//! as a sequence of field groups. Messages that carry the same fields share one arm (and
//! the field encodings in [`super::super::fields`]), so equal fields cannot drift apart.

use super::super::super::codec::{Reader, Writer};
use super::super::super::{MAX_CONTROL_BODY, MAX_STRING};
use super::super::fields::{
    count_r, items_r, list_r, list_w, opt_r, opt_w, optional_flag, progress_r, progress_w,
    ranges_r, ranges_w, u64s_r, u64s_w,
};
use super::{Control, PointPart, MAX_GROUP_VMS, MAX_HASHES, MAX_HASH_PARENTS, MAX_POINT_DISKS};
use crate::wire::ErrorClass;
use crate::{FormatError, Guid};

pub(in crate::wire::msg) const K_HELLO: u8 = 1;
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

const WHAT: &str = "control frame";

/// A counted list of names, each at most [`MAX_STRING`] bytes.
fn names_w(w: &mut Writer, names: &[String]) {
    list_w(w, names, |w, n| {
        w.str(n);
    });
}

/// `OpenDisk.vm_disks`: absent reads as empty; present, 1 ..= [`MAX_POINT_DISKS`] names (an
/// empty list would give one message two encodings).
fn vm_disks_r(r: &mut Reader<'_>) -> Result<Vec<String>, FormatError> {
    if r.at_end() {
        return Ok(Vec::new());
    }
    let too_many =
        |n| format!("OpenDisk names {n} disks of its VM: 1 to {MAX_POINT_DISKS} expected");
    let n = count_r(r, MAX_POINT_DISKS, WHAT, too_many)?;
    if n == 0 {
        return Err(FormatError::new(WHAT, 0, too_many(0)));
    }
    items_r(r, n, |r| r.str(MAX_STRING))
}

impl Control {
    /// The message's type code (the frame's first byte).
    fn kind(&self) -> u8 {
        match self {
            Control::Hello { .. } => K_HELLO,
            Control::HelloAck { .. } => K_HELLO_ACK,
            Control::OpenDisk { .. } => K_OPEN_DISK,
            Control::DiskOpened { .. } => K_DISK_OPENED,
            Control::CommitInitial { .. } => K_COMMIT_INITIAL,
            Control::Committed { .. } => K_COMMITTED,
            Control::Error { .. } => K_ERROR,
            Control::BeginCycle { .. } => K_BEGIN_CYCLE,
            Control::CycleOpened { .. } => K_CYCLE_OPENED,
            Control::CommitCycle { .. } => K_COMMIT_CYCLE,
            Control::HashRequest { .. } => K_HASH_REQUEST,
            Control::Hashes { .. } => K_HASHES,
            Control::RootRequest { .. } => K_ROOT_REQUEST,
            Control::Root { .. } => K_ROOT,
            Control::ReportJob { .. } => K_REPORT_JOB,
            Control::JobRecorded { .. } => K_JOB_RECORDED,
            Control::QueryCapacity { .. } => K_QUERY_CAPACITY,
            Control::Capacity { .. } => K_CAPACITY,
            Control::ClaimGroup { .. } => K_CLAIM_GROUP,
            Control::GroupClaimed { .. } => K_GROUP_CLAIMED,
            Control::ProgressRequest { .. } => K_PROGRESS_REQUEST,
            Control::ProgressPage { .. } => K_PROGRESS_PAGE,
            Control::CommitPoint { .. } => K_COMMIT_POINT,
            Control::PointCommitted { .. } => K_POINT_COMMITTED,
        }
    }

    /// Encodes the message as a whole frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Control::Hello {
                min_version,
                max_version,
                software,
            } => {
                w.u16(*min_version).u16(*max_version).str(software);
            }
            Control::HelloAck { version } => {
                w.u16(*version);
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
                    names_w(&mut w, vm_disks);
                }
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
                progress_w(&mut w, progress, *more_progress);
            }
            // Request id, disk handle and one u64.
            Control::CommitInitial {
                req,
                handle,
                generation: x,
            }
            | Control::Committed {
                req,
                handle,
                cycle: x,
            }
            | Control::BeginCycle {
                req,
                handle,
                cycle: x,
            }
            | Control::ProgressRequest {
                req,
                handle,
                after: x,
            } => {
                w.u32(*req).u32(*handle).u64(*x);
            }
            Control::Error {
                req,
                class,
                message,
            } => {
                w.u32(*req).u16(class.code()).str(message);
            }
            Control::CycleOpened {
                req,
                handle,
                cycle,
                progress,
                more_progress,
            } => {
                w.u32(*req).u32(*handle).u64(*cycle);
                progress_w(&mut w, progress, *more_progress);
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
            }
            Control::HashRequest {
                req,
                handle,
                level,
                parents: list,
                ..
            }
            | Control::Hashes {
                req,
                handle,
                level,
                hashes: list,
            } => {
                w.u32(*req).u32(*handle).u8(*level);
                u64s_w(&mut w, list);
                if let Control::HashRequest { verify, .. } = self {
                    w.u8(*verify as u8);
                }
            }
            Control::RootRequest { req, handle } => {
                w.u32(*req).u32(*handle);
            }
            Control::Root { req, handle, root } => {
                w.u32(*req).u32(*handle).raw(root);
            }
            Control::ReportJob { req, job } => {
                w.u32(*req);
                super::super::super::job::write(job, &mut w);
            }
            Control::JobRecorded { req } => {
                w.u32(*req);
            }
            Control::QueryCapacity { req, vm, needed } => {
                w.u32(*req).str(vm).u64(*needed);
            }
            // Request id and one u64.
            Control::Capacity { req, available: x }
            | Control::GroupClaimed {
                req,
                group_cycle: x,
            }
            | Control::PointCommitted { req, vm_cycle: x } => {
                w.u32(*req).u64(*x);
            }
            Control::ClaimGroup {
                req,
                group,
                vms,
                interval_secs,
            } => {
                w.u32(*req).str(group);
                names_w(&mut w, vms);
                w.u32(*interval_secs);
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
                opt_w(&mut w, group.as_ref(), |w, g| {
                    w.str(g);
                });
                opt_w(&mut w, group_cycle.as_ref(), |w, c| {
                    w.u64(*c);
                });
                w.u32(*retention_secs);
                list_w(&mut w, disks, |w, d| {
                    w.u32(d.handle).u64(d.cycle).u64(d.bytes).raw(&d.digest);
                });
                if *one_instant {
                    w.u8(1);
                }
            }
        }
        let mut out = Vec::with_capacity(w.buf.len() + 5);
        super::super::super::encode_frame(self.kind(), &w.buf, &mut out);
        out
    }

    /// Decodes a control frame body of type `kind`.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Control, FormatError> {
        if body.len() > MAX_CONTROL_BODY as usize {
            return Err(FormatError::new(WHAT, 0, "body too large"));
        }
        let what = WHAT;
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
            K_DISK_OPENED => {
                let (req, handle) = (r.u32()?, r.u32()?);
                let initial_committed = r.bool()?;
                let (committed_cycle, generation) = (r.u64()?, r.u64()?);
                let known_empty = r.bool()?;
                let (progress, more_progress) = progress_r(&mut r, what)?;
                Control::DiskOpened {
                    req,
                    handle,
                    initial_committed,
                    committed_cycle,
                    generation,
                    known_empty,
                    progress,
                    more_progress,
                }
            }
            K_COMMIT_INITIAL | K_COMMITTED | K_BEGIN_CYCLE | K_PROGRESS_REQUEST => {
                let (req, handle, x) = (r.u32()?, r.u32()?, r.u64()?);
                match kind {
                    K_COMMIT_INITIAL => Control::CommitInitial {
                        req,
                        handle,
                        generation: x,
                    },
                    K_COMMITTED => Control::Committed {
                        req,
                        handle,
                        cycle: x,
                    },
                    K_BEGIN_CYCLE => Control::BeginCycle {
                        req,
                        handle,
                        cycle: x,
                    },
                    _ => Control::ProgressRequest {
                        req,
                        handle,
                        after: x,
                    },
                }
            }
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
            K_CYCLE_OPENED => {
                let (req, handle, cycle) = (r.u32()?, r.u32()?, r.u64()?);
                let (progress, more_progress) = progress_r(&mut r, what)?;
                Control::CycleOpened {
                    req,
                    handle,
                    cycle,
                    progress,
                    more_progress,
                }
            }
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
                // Absent in frames of senders that predate it.
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
                job: super::super::super::job::read(&mut r, what)?,
            },
            K_JOB_RECORDED => Control::JobRecorded { req: r.u32()? },
            K_QUERY_CAPACITY => Control::QueryCapacity {
                req: r.u32()?,
                vm: r.str(MAX_STRING)?,
                needed: r.u64()?,
            },
            K_CAPACITY | K_GROUP_CLAIMED | K_POINT_COMMITTED => {
                let (req, x) = (r.u32()?, r.u64()?);
                match kind {
                    K_CAPACITY => Control::Capacity { req, available: x },
                    K_GROUP_CLAIMED => Control::GroupClaimed {
                        req,
                        group_cycle: x,
                    },
                    _ => Control::PointCommitted { req, vm_cycle: x },
                }
            }
            K_CLAIM_GROUP => Control::ClaimGroup {
                req: r.u32()?,
                group: r.str(MAX_STRING)?,
                vms: list_r(
                    &mut r,
                    MAX_GROUP_VMS,
                    what,
                    |n| format!("a group of {n} VMs; a group has at most {MAX_GROUP_VMS}"),
                    |r| r.str(MAX_STRING),
                )?,
                interval_secs: r.u32()?,
            },
            K_PROGRESS_PAGE => Control::ProgressPage {
                req: r.u32()?,
                handle: r.u32()?,
                progress: ranges_r(&mut r, what)?,
                more: r.bool()?,
            },
            K_COMMIT_POINT => Control::CommitPoint {
                req: r.u32()?,
                vm_cycle: r.u64()?,
                switch_unix_ms: r.u64()?,
                group: opt_r(&mut r, |r| r.str(MAX_STRING))?,
                group_cycle: opt_r(&mut r, |r| r.u64())?,
                retention_secs: r.u32()?,
                disks: list_r(
                    &mut r,
                    MAX_POINT_DISKS,
                    what,
                    |n| format!("{n} disks in a point exceed the limit of {MAX_POINT_DISKS}"),
                    |r| {
                        Ok(PointPart {
                            handle: r.u32()?,
                            cycle: r.u64()?,
                            bytes: r.u64()?,
                            digest: r.array()?,
                        })
                    },
                )?,
                one_instant: optional_flag(&mut r)?,
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

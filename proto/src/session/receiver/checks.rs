//! Checks of request contents that need no store: the resync tree's geometry and a job's
//! size, plus the limits they enforce.

use crate::session::Refusal;
use crate::wire::{
    Control, ErrorClass, Job, MAX_HASHES, MAX_HASH_PARENTS, RESYNC_FANOUT, RESYNC_NODE_SIZES,
    VM_POINTS_VERSION,
};

/// Most text one recorded job may hold (ids, names, details, error): a VM keeps 100 jobs,
/// and bounding each keeps its job file small whatever a sender sends (a frame alone may
/// hold 1 MiB).
pub const MAX_JOB_BYTES: usize = 64 << 10;

/// Largest disk a replica can hold: an Azure page blob is at most 8 TiB, and a replica is
/// the disk rounded up to 1 MiB plus a 512-byte footer.
pub const MAX_DISK_SIZE: u64 = (8 << 40) - (1 << 20);

/// Longest retention a cycle commit may ask for: one day.
pub const MAX_RETENTION_SECS: u32 = 86_400;

/// Nodes of the resync tree at `level` over a disk of `size` bytes.
pub fn tree_nodes(size: u64, level: usize) -> u64 {
    RESYNC_NODE_SIZES
        .get(level)
        .map_or(0, |n| size.div_ceil(*n))
}

/// A hash request names a level of the tree and, below the top, parents that exist on this
/// disk; a top-level answer must fit one frame (the codec bounds the parents, and with them
/// every lower answer). Checked before anything is hashed.
pub(super) fn check_hash_request(size: u64, level: u8, parents: &[u64]) -> Result<(), Refusal> {
    let l = level as usize;
    if l >= RESYNC_NODE_SIZES.len() {
        return Err(Refusal::new(
            ErrorClass::Protocol,
            format!(
                "hash request for level {level}; the tree has {} levels",
                RESYNC_NODE_SIZES.len()
            ),
        ));
    }
    if l == 0 {
        if !parents.is_empty() {
            return Err(Refusal::new(
                ErrorClass::Protocol,
                "a level-0 hash request lists no parents",
            ));
        }
        if tree_nodes(size, 0) > MAX_HASHES as u64 {
            return Err(Refusal::new(
                ErrorClass::Protocol,
                "too many hashes asked for at once",
            ));
        }
        return Ok(());
    }
    let above = tree_nodes(size, l - 1);
    if let Some(p) = parents.iter().find(|&&p| p >= above) {
        return Err(Refusal::new(
            ErrorClass::Protocol,
            format!(
                "hash request names node {p} of level {}, which has {above}",
                l - 1
            ),
        ));
    }
    Ok(())
}

// The number of parents is the codec's to bound (what a frame can hold): its bound keeps
// every answer within one `Hashes` frame, so the session need not count them again.
const _: () = assert!(MAX_HASH_PARENTS as u64 * RESYNC_FANOUT <= MAX_HASHES as u64);

/// A request that protocol 5 added (VM points, consistency groups) on a stream that
/// negotiated an older version: refused, and the stream closed.
pub(super) fn check_points_version(frame: &str, version: u16) -> Result<(), Refusal> {
    if version < VM_POINTS_VERSION {
        return Err(Refusal::new(
            ErrorClass::Protocol,
            format!(
                "{frame} needs protocol version {VM_POINTS_VERSION}, this stream speaks {version}"
            ),
        ));
    }
    Ok(())
}

/// A disk holds at least one byte and fits a page blob: checked before the store computes
/// anything from the size (rounding it up could overflow).
pub(super) fn check_disk_size(virtual_size: u64) -> Result<(), Refusal> {
    if virtual_size == 0 || virtual_size > MAX_DISK_SIZE {
        return Err(Refusal::new(
            ErrorClass::InvalidState,
            format!(
                "disk size {virtual_size} bytes: replicas hold 1 byte up to {MAX_DISK_SIZE} \
                 bytes (the 8 TiB page blob limit, footer included)"
            ),
        ));
    }
    Ok(())
}

/// An `OpenDisk`'s disk set, when given, names the disk opened and no name twice (names are
/// the store's to validate, like the disk's own).
pub(super) fn check_vm_disks(disk: &str, vm_disks: &[String]) -> Result<(), Refusal> {
    if vm_disks.is_empty() {
        return Ok(());
    }
    if !vm_disks.iter().any(|d| d == disk) {
        return Err(Refusal::new(
            ErrorClass::InvalidState,
            format!("OpenDisk of disk {disk:?}: the VM's disk set it names leaves it out"),
        ));
    }
    if let Some((_, d)) = vm_disks
        .iter()
        .enumerate()
        .find(|(i, d)| vm_disks[..*i].contains(d))
    {
        return Err(Refusal::new(
            ErrorClass::InvalidState,
            format!("OpenDisk of disk {disk:?}: the VM's disk set names {d:?} twice"),
        ));
    }
    Ok(())
}

/// A job's text is bounded (see [`MAX_JOB_BYTES`]).
pub(super) fn check_job(job: &Job) -> Result<(), Refusal> {
    let bytes: usize = job.id.len()
        + job.error.as_ref().map_or(0, |e| e.message.len())
        + job
            .steps
            .iter()
            .map(|s| s.name.len() + s.detail.len() + 32)
            .sum::<usize>();
    if bytes > MAX_JOB_BYTES {
        return Err(Refusal::new(
            ErrorClass::InvalidState,
            format!(
                "job {} of VM {} holds {bytes} bytes of text, more than the {MAX_JOB_BYTES} a job may",
                job.id, job.vm
            ),
        ));
    }
    Ok(())
}

/// A group claim names the group and its member VMs once each (the wire already bounds
/// their number).
pub(super) fn check_group(group: &str, vms: &[String]) -> Result<(), Refusal> {
    let bad = |m: String| Refusal::new(ErrorClass::Protocol, m);
    if group.is_empty() || group.len() > 64 {
        return Err(bad(format!(
            "a group name has 1 to 64 characters, not {}",
            group.len()
        )));
    }
    if vms.is_empty() {
        return Err(bad(format!("group {group}: a claim names its member VMs")));
    }
    for (i, vm) in vms.iter().enumerate() {
        if vms[..i].contains(vm) {
            return Err(bad(format!("group {group}: VM {vm} is named twice")));
        }
    }
    Ok(())
}

/// The frame's name for messages (never its contents: they may be large or hostile).
pub(crate) fn name(m: &Control) -> &'static str {
    match m {
        Control::Hello { .. } => "Hello",
        Control::HelloAck { .. } => "HelloAck",
        Control::OpenDisk { .. } => "OpenDisk",
        Control::DiskOpened { .. } => "DiskOpened",
        Control::CommitInitial { .. } => "CommitInitial",
        Control::Committed { .. } => "Committed",
        Control::BeginCycle { .. } => "BeginCycle",
        Control::CycleOpened { .. } => "CycleOpened",
        Control::CommitCycle { .. } => "CommitCycle",
        Control::HashRequest { .. } => "HashRequest",
        Control::Hashes { .. } => "Hashes",
        Control::RootRequest { .. } => "RootRequest",
        Control::Root { .. } => "Root",
        Control::Error { .. } => "Error",
        Control::ReportJob { .. } => "ReportJob",
        Control::JobRecorded { .. } => "JobRecorded",
        Control::QueryCapacity { .. } => "QueryCapacity",
        Control::Capacity { .. } => "Capacity",
        Control::ClaimGroup { .. } => "ClaimGroup",
        Control::GroupClaimed { .. } => "GroupClaimed",
        Control::ProgressRequest { .. } => "ProgressRequest",
        Control::ProgressPage { .. } => "ProgressPage",
        Control::CommitPoint { .. } => "CommitPoint",
        Control::PointCommitted { .. } => "PointCommitted",
    }
}

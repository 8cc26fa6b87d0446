//! [`FaultStore`]: wraps any [`ReplicaStore`] and fails the first N calls of chosen
//! operations with a chosen OS error (ENOSPC, EIO, EACCES, …), so retry paths and error
//! classification are tested on purpose. Injected errors are ordinary [`SinkError::Io`]
//! values naming the disk's real path, exactly as the backend would report them.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use vdrep_proto::{Guid, RangeSet};

use crate::sink::{
    DiskKey, DiskState, PointReader, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError,
};

/// The operations faults can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`ReplicaStore::open_disk`].
    OpenDisk,
    /// [`ReplicaStore::list_disks`].
    ListDisks,
    /// [`ReplicaDisk::write`].
    Write,
    /// [`ReplicaDisk::clear`].
    Clear,
    /// [`ReplicaDisk::checkpoint`] and [`ReplicaDisk::checkpoint_acknowledged`].
    Checkpoint,
    /// [`ReplicaDisk::commit_initial`].
    CommitInitial,
    /// [`ReplicaDisk::read`] and [`ReplicaDisk::read_committed`].
    Read,
    /// [`ReplicaDisk::begin_initial`].
    BeginInitial,
    /// [`ReplicaDisk::commit_cycle`].
    CommitCycle,
    /// [`ReplicaDisk::begin_cycle`].
    BeginCycle,
    /// [`ReplicaDisk::points`].
    Points,
    /// [`ReplicaDisk::prune_points`].
    PrunePoints,
    /// [`ReplicaDisk::read_point`].
    ReadPoint,
    /// [`ReplicaStore::update_vm_points`]: the VM point manifest's write.
    UpdateVmPoints,
}

#[derive(Debug, Default)]
struct Plan {
    /// Remaining failures and the errno to fail with, per operation.
    faults: HashMap<Op, (u32, i32)>,
    /// Calls seen per operation (failed ones included).
    calls: HashMap<Op, u64>,
}

/// Which calls fail; shared by a store and all disks it opened.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    plan: Arc<Mutex<Plan>>,
}

impl FaultPlan {
    /// No faults.
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// Fails the next `n` calls of `op` with OS error `errno` (e.g. `libc::ENOSPC`).
    pub fn fail_first(&self, op: Op, n: u32, errno: i32) -> &Self {
        self.lock().faults.insert(op, (n, errno));
        self
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a call and says whether it must fail, and with which errno.
    fn check(&self, op: Op) -> Option<i32> {
        let mut p = self.lock();
        *p.calls.entry(op).or_default() += 1;
        match p.faults.get_mut(&op) {
            Some((n, errno)) if *n > 0 => {
                *n -= 1;
                Some(*errno)
            }
            _ => None,
        }
    }

    fn fail(&self, op: Op, path: &str, what: &'static str, offset: u64) -> Result<(), SinkError> {
        match self.check(op) {
            Some(errno) => Err(SinkError::io(
                path,
                what,
                offset,
                io::Error::from_raw_os_error(errno),
            )),
            None => Ok(()),
        }
    }
}

/// A store whose calls fail according to a [`FaultPlan`]. Every trait method is forwarded,
/// defaults included (`forward_tests.rs` checks each one).
pub struct FaultStore {
    inner: Arc<dyn ReplicaStore>,
    plan: FaultPlan,
}

impl FaultStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ReplicaStore>, plan: FaultPlan) -> FaultStore {
        FaultStore { inner, plan }
    }
}

impl ReplicaStore for FaultStore {
    fn open_disk(
        &self,
        key: &DiskKey,
        virtual_size: u64,
        source_id: Guid,
    ) -> Result<Arc<dyn ReplicaDisk>, SinkError> {
        self.plan.fail(
            Op::OpenDisk,
            &format!("{} {key}", self.inner.describe()),
            "open disk",
            0,
        )?;
        let inner = self.inner.open_disk(key, virtual_size, source_id)?;
        Ok(Arc::new(FaultDisk {
            inner,
            plan: self.plan.clone(),
        }))
    }
    fn list_disks(&self, vm: Option<&str>) -> Result<Vec<DiskKey>, SinkError> {
        self.plan
            .fail(Op::ListDisks, &self.inner.describe(), "list disks", 0)?;
        self.inner.list_disks(vm)
    }
    fn describe(&self) -> String {
        format!("fault-injecting {}", self.inner.describe())
    }
    fn point_reader(&self, key: &DiskKey) -> Result<Box<dyn PointReader>, SinkError> {
        self.inner.point_reader(key)
    }
    fn remove_disk(&self, key: &DiskKey) -> Result<(), SinkError> {
        self.inner.remove_disk(key)
    }
    fn record_job(&self, job: &crate::jobs::Job) -> Result<(), SinkError> {
        self.inner.record_job(job)
    }
    fn jobs(&self, vm: Option<&str>) -> Result<Vec<crate::jobs::Job>, SinkError> {
        self.inner.jobs(vm)
    }
    fn remove_jobs(&self, vm: &str) -> Result<(), SinkError> {
        self.inner.remove_jobs(vm)
    }
    fn available_bytes(&self) -> Result<Option<u64>, SinkError> {
        self.inner.available_bytes()
    }
    fn upgrade(&self) -> Result<Option<String>, SinkError> {
        self.inner.upgrade()
    }
    fn vm_points(&self, vm: &str) -> Result<Option<crate::sink::vm_points::VmPoints>, SinkError> {
        self.inner.vm_points(vm)
    }
    fn update_vm_points(
        &self,
        vm: &str,
        f: &mut dyn FnMut(&mut crate::sink::vm_points::VmPoints, bool) -> Result<bool, SinkError>,
    ) -> Result<(), SinkError> {
        self.plan.fail(
            Op::UpdateVmPoints,
            &format!("{} {vm}/points", self.inner.describe()),
            "write VM points",
            0,
        )?;
        self.inner.update_vm_points(vm, f)
    }
}

/// A disk whose calls fail according to a [`FaultPlan`]. Failed calls do nothing. Every
/// trait method is forwarded, defaults included (`forward_tests.rs` checks each one).
pub struct FaultDisk {
    inner: Arc<dyn ReplicaDisk>,
    plan: FaultPlan,
}

impl FaultDisk {
    fn fail(&self, op: Op, what: &'static str, offset: u64) -> Result<(), SinkError> {
        self.plan.fail(op, &self.inner.path_hint(), what, offset)
    }
}

impl ReplicaDisk for FaultDisk {
    fn key(&self) -> &DiskKey {
        self.inner.key()
    }
    fn state(&self) -> DiskState {
        self.inner.state()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.fail(Op::Write, "write", offset)?;
        self.inner.write(offset, data)
    }
    fn room(&self, len: usize) -> crate::sink::Room<'_> {
        self.inner.room(len)
    }
    fn clear(&self, offset: u64, len: u64) -> Result<(), SinkError> {
        self.fail(Op::Clear, "clear", offset)?;
        self.inner.clear(offset, len)
    }
    fn checkpoint(&self, durable: &RangeSet) -> Result<(), SinkError> {
        self.fail(Op::Checkpoint, "fdatasync", 0)?;
        self.inner.checkpoint(durable)
    }
    fn checkpoint_acknowledged(&self, written: &RangeSet) -> Result<bool, SinkError> {
        // Forwarded, never left to the trait's default: that would turn the Azure sink's
        // periodic checkpoint (which does not wait for Put Pages) into a full flush.
        self.fail(Op::Checkpoint, "checkpoint", 0)?;
        self.inner.checkpoint_acknowledged(written)
    }
    fn commit_initial(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        self.fail(Op::CommitInitial, "commit", 0)?;
        self.inner.commit_initial(point)
    }
    fn read(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        self.fail(Op::Read, "read", offset)?;
        self.inner.read(offset, len)
    }
    fn read_committed(&self, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        self.fail(Op::Read, "read", offset)?;
        self.inner.read_committed(offset, len)
    }
    fn begin_initial(&self) -> Result<(), SinkError> {
        self.fail(Op::BeginInitial, "begin initial copy", 0)?;
        self.inner.begin_initial()
    }
    fn begin_cycle(&self, cycle: u64) -> Result<RangeSet, SinkError> {
        self.fail(Op::BeginCycle, "begin cycle", 0)?;
        self.inner.begin_cycle(cycle)
    }
    fn commit_cycle(&self, point: &RecoveryPoint) -> Result<(), SinkError> {
        self.fail(Op::CommitCycle, "commit cycle", 0)?;
        self.inner.commit_cycle(point)
    }
    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError> {
        self.fail(Op::Points, "list recovery points", 0)?;
        self.inner.points()
    }
    fn prune_points(&self, older_than_unix: u64) -> Result<Vec<u64>, SinkError> {
        self.fail(Op::PrunePoints, "prune recovery points", 0)?;
        self.inner.prune_points(older_than_unix)
    }
    fn read_point(&self, cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError> {
        self.fail(Op::ReadPoint, "read recovery point", offset)?;
        self.inner.read_point(cycle, offset, len)
    }
    fn path_hint(&self) -> String {
        self.inner.path_hint()
    }
    fn resync_index(&self) -> Result<Box<dyn crate::resync::index::IndexFile>, String> {
        self.inner.resync_index()
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod forward_tests;

//! An in-memory store that performs a receiver session's effects, the way `vdrep`'s
//! driver does over a real sink: a replica per disk with its generation, durable progress,
//! committed and open cycle, and its bytes. Payload "verification" uses a toy hash and
//! "decompression" is the identity (hashing and zstd are the driver's effects; the protocol
//! only decides what reaches them).

use std::collections::BTreeMap;

use crate::session::receiver::{Done, Effect, ExtentWrite, OpenedReplica, WriteOutcome};
use crate::session::Refusal;
use crate::wire::{ErrorClass, ExtentOp, Rejection, RESYNC_FANOUT};
use crate::RangeSet;

/// The toy content hash of the model (FNV-1a, spread over 32 bytes).
pub fn toy_hash(data: &[u8]) -> [u8; 32] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    let mut out = [0u8; 32];
    for (i, c) in out.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(h.rotate_left(i as u32 * 8)).to_le_bytes());
    }
    out
}

#[derive(Debug, Clone, Default)]
pub struct Replica {
    pub size: u64,
    pub generation: u64,
    pub initial_committed: bool,
    pub initial_in_progress: bool,
    pub committed_cycle: u64,
    pub open_cycle: Option<u64>,
    /// Durable progress of the current copy or open cycle.
    pub durable: RangeSet,
    /// Written, not yet durable (a checkpoint makes it durable).
    pub written: RangeSet,
    pub data: Vec<u8>,
    pub points: Vec<u64>,
}

/// A VM point as the model records it: the VM cycle and its parts as (disk, cycle).
pub type VmPointModel = (u64, Vec<(String, u64)>);

/// The model store, shared by successive connections (sessions) of a test.
#[derive(Debug, Default)]
pub struct Model {
    pub disks: BTreeMap<String, Replica>,
    /// Handle → disk key, for the connection in progress.
    pub handles: BTreeMap<u32, String>,
    /// Effects performed, in order (for "nothing was hashed or written" checks).
    pub effects: Vec<Effect>,
    /// Extents applied (verified or not).
    pub applied: usize,
    pub jobs: Vec<String>,
    /// Fail the next write with this refusal.
    pub fail_next_write: Option<Refusal>,
    /// Free bytes the store reports.
    pub available: Option<u64>,
    /// VM points recorded, per VM.
    pub vm_points: BTreeMap<String, Vec<VmPointModel>>,
}

impl Model {
    /// Ends a connection: written ranges become durable (the driver's final checkpoint).
    pub fn connection_closed(&mut self) {
        for d in self.disks.values_mut() {
            let w = std::mem::take(&mut d.written);
            for r in w.iter() {
                d.durable.insert(r.start, r.end);
            }
        }
        self.handles.clear();
    }

    /// Remembers which disk a new handle names (the driver's `register`).
    pub fn opened(&mut self, handle: u32, vm: &str, disk: &str) {
        self.handles.insert(handle, format!("{vm}/{disk}"));
    }

    fn disk(&mut self, handle: u32) -> Result<&mut Replica, Refusal> {
        let k = self
            .handles
            .get(&handle)
            .ok_or_else(|| Refusal::new(ErrorClass::Internal, "no replica"))?;
        self.disks
            .get_mut(k)
            .ok_or_else(|| Refusal::new(ErrorClass::Internal, "no replica"))
    }

    pub fn perform(&mut self, e: Effect) -> Done {
        self.effects.push(e.clone());
        match e {
            Effect::OpenReplica {
                vm,
                disk,
                virtual_size,
                full_copy,
                ..
            } => {
                let r = self.disks.entry(format!("{vm}/{disk}")).or_default();
                if r.size != 0 && r.size != virtual_size {
                    return Done::Opened(Err(Refusal::new(
                        ErrorClass::SizeChanged,
                        format!("replica is {} bytes, source {virtual_size}", r.size),
                    )));
                }
                if r.size == 0 {
                    r.size = virtual_size;
                    r.data = vec![0; virtual_size.div_ceil(512) as usize * 512];
                }
                if !r.initial_in_progress && (!r.initial_committed || full_copy) {
                    r.generation += 1;
                    r.initial_in_progress = true;
                    r.durable = RangeSet::new();
                    r.written = RangeSet::new();
                }
                Done::Opened(Ok(OpenedReplica {
                    generation: r.generation,
                    initial_committed: r.initial_committed,
                    committed_cycle: r.committed_cycle,
                    initial_in_progress: r.initial_in_progress,
                    progress: if r.initial_in_progress {
                        r.durable.clone()
                    } else {
                        RangeSet::new()
                    },
                }))
            }
            Effect::CommitInitial { handle } => {
                Done::InitialCommitted(self.disk(handle).map(|d| {
                    d.initial_in_progress = false;
                    d.initial_committed = true;
                    d.committed_cycle = 0;
                    d.durable = RangeSet::new();
                    d.written = RangeSet::new();
                    d.points = vec![0];
                }))
            }
            Effect::BeginCycle { handle, cycle } => {
                Done::CycleOpened(self.disk(handle).and_then(|d| {
                    if d.open_cycle == Some(cycle) {
                        return Ok(d.durable.clone());
                    }
                    if d.initial_in_progress
                        || d.open_cycle.is_some()
                        || cycle != d.committed_cycle + 1
                    {
                        return Err(Refusal::new(
                            ErrorClass::InvalidState,
                            format!("cycle {cycle} cannot begin"),
                        ));
                    }
                    d.open_cycle = Some(cycle);
                    d.durable = RangeSet::new();
                    Ok(RangeSet::new())
                }))
            }
            Effect::CommitCycle {
                handle,
                cycle,
                retention_secs,
                ..
            } => Done::CycleCommitted(self.disk(handle).and_then(|d| {
                if cycle <= d.committed_cycle && cycle > 0 {
                    return Ok(Vec::new()); // a resent commit
                }
                if d.open_cycle != Some(cycle) {
                    return Err(Refusal::new(
                        ErrorClass::InvalidState,
                        format!("commit of cycle {cycle} but no such cycle is open"),
                    ));
                }
                d.open_cycle = None;
                d.committed_cycle = cycle;
                d.durable = RangeSet::new();
                d.points.push(cycle);
                // Retention 0 keeps the newest point only.
                if retention_secs == 0 && d.points.len() > 1 {
                    let pruned: Vec<u64> = d.points.drain(..d.points.len() - 1).collect();
                    return Ok(pruned);
                }
                Ok(Vec::new())
            })),
            Effect::Hashes {
                handle,
                level,
                parents,
                ..
            } => Done::Hashes(self.disk(handle).map(|d| {
                let n = crate::session::receiver::tree_nodes(d.size, level as usize);
                let count = if level == 0 {
                    n
                } else {
                    parents
                        .iter()
                        .map(|p| (n - (p * RESYNC_FANOUT).min(n)).min(RESYNC_FANOUT))
                        .sum()
                };
                (0..count).map(|i| i ^ 0x5a5a).collect()
            })),
            Effect::Root { handle } => Done::Root(self.disk(handle).map(|d| toy_hash(&d.data))),
            Effect::RecordJob { job } => {
                self.jobs.push(job.id);
                Done::JobRecorded(Ok(()))
            }
            Effect::QueryCapacity { .. } => Done::Capacity(Ok(self.available)),
            Effect::ClaimGroup { .. } => Done::GroupClaimed(Ok(0)),
            Effect::CommitPoint {
                vm,
                vm_cycle,
                disks,
                ..
            } => {
                let parts: Vec<(String, u64)> =
                    disks.iter().map(|d| (d.disk.clone(), d.cycle)).collect();
                for (disk, cycle) in &parts {
                    let has = self
                        .disks
                        .get(&format!("{vm}/{disk}"))
                        .is_some_and(|r| r.points.contains(cycle));
                    if !has {
                        return Done::PointCommitted(Err(Refusal::new(
                            ErrorClass::InvalidState,
                            format!("{vm}/{disk} has no point {cycle}"),
                        )));
                    }
                }
                let list = self.vm_points.entry(vm).or_default();
                match list.iter().find(|(c, _)| *c == vm_cycle) {
                    Some((_, p)) if *p == parts => {}
                    Some(_) => {
                        return Done::PointCommitted(Err(Refusal::new(
                            ErrorClass::InvalidState,
                            format!("VM point {vm_cycle} was recorded with other parts"),
                        )))
                    }
                    None if list.last().is_some_and(|(c, _)| *c > vm_cycle) => {
                        return Done::PointCommitted(Err(Refusal::new(
                            ErrorClass::InvalidState,
                            format!("VM point {vm_cycle} is older than the newest"),
                        )))
                    }
                    None => list.push((vm_cycle, parts)),
                }
                Done::PointCommitted(Ok(0))
            }
        }
    }

    /// Verifies and writes one extent of `handle` (the driver's `apply`).
    pub fn apply(&mut self, handle: u32, w: ExtentWrite) -> WriteOutcome {
        self.applied += 1;
        if let Some(r) = self.fail_next_write.take() {
            return WriteOutcome::Failed(r);
        }
        let d = match self.disk(handle) {
            Ok(d) => d,
            Err(r) => return WriteOutcome::Failed(r),
        };
        let h = w.header;
        let (o, n) = (h.offset as usize, h.length as usize);
        match h.op {
            ExtentOp::Clear => {
                if h.hash != toy_hash(&vec![0; n]) {
                    return WriteOutcome::Rejected(Rejection::HashMismatch);
                }
                d.data[o..o + n].fill(0);
                d.written.insert(h.offset, h.offset + n as u64);
                WriteOutcome::Written { bytes: n as u64 }
            }
            ExtentOp::Write | ExtentOp::WriteSparse => {
                if w.payload.len() != n {
                    return WriteOutcome::Rejected(Rejection::BadPayload);
                }
                if toy_hash(&w.payload.to_bytes()) != h.hash {
                    return WriteOutcome::Rejected(Rejection::HashMismatch);
                }
                d.data[o..o + n].copy_from_slice(&w.payload.to_bytes());
                d.written.insert(h.offset, h.offset + n as u64);
                WriteOutcome::Written { bytes: n as u64 }
            }
            ExtentOp::WritePacked => {
                let Some(map) = w.packed else {
                    return WriteOutcome::Rejected(Rejection::BadPayload);
                };
                if w.payload.len() != map.carried_len() as usize {
                    return WriteOutcome::Rejected(Rejection::BadPayload);
                }
                if toy_hash(&w.payload.to_bytes()) != h.hash {
                    return WriteOutcome::Rejected(Rejection::HashMismatch);
                }
                let mut at = 0;
                for (a, b) in map.runs() {
                    let (a, b) = (a as usize, b as usize);
                    d.data[o + a..o + b].copy_from_slice(&w.payload.to_bytes()[at..at + (b - a)]);
                    d.written.insert((o + a) as u64, (o + b) as u64);
                    at += b - a;
                }
                WriteOutcome::Written {
                    bytes: map.carried_len() as u64,
                }
            }
        }
    }
}

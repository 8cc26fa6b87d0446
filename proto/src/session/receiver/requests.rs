//! The receiver's checks of each request, made before any store work: what passes becomes
//! an [`Effect`] and leaves the stream busy until [`ReceiverSession::handle_done`].

use super::checks::{
    check_disk_size, check_group, check_hash_request, check_job, check_points_version,
    check_vm_disks, name, MAX_RETENTION_SECS,
};
use super::{ControlStep, Effect, Pending, PointDisk, ReceiverSession, Stream};
use crate::session::{Refusal, StreamId};
use crate::wire::{Control, ErrorClass, PointPart};

impl ReceiverSession {
    pub(super) fn request(&mut self, stream: StreamId, version: u16, msg: Control) -> ControlStep {
        let (pending, effect) = match msg {
            Control::OpenDisk {
                req,
                vm,
                disk,
                virtual_size,
                source_id,
                full_copy,
                vm_disks,
            } => {
                if let Some(step) = self.refuse_vm(stream, req, &vm) {
                    return step;
                }
                if let Err(r) = check_disk_size(virtual_size) {
                    return self.refuse(stream, req, r);
                }
                if let Err(r) = check_vm_disks(&disk, &vm_disks) {
                    return self.refuse(stream, req, r);
                }
                if let Err(r) = self.check_disk_limit(&vm, &disk) {
                    return self.refuse(stream, req, r);
                }
                (
                    Pending::Open {
                        req,
                        vm: vm.clone(),
                        disk: disk.clone(),
                        virtual_size,
                    },
                    Effect::OpenReplica {
                        vm,
                        disk,
                        virtual_size,
                        source_id,
                        full_copy,
                        vm_disks,
                    },
                )
            }
            Control::CommitInitial {
                req,
                handle,
                generation,
            } => {
                let Some(d) = self.disks.get(&handle).cloned() else {
                    return self.unknown_handle(stream, req, handle);
                };
                if d.generation != generation {
                    let open = d.generation;
                    return self.refuse(
                        stream,
                        req,
                        Refusal::new(
                            ErrorClass::InvalidState,
                            format!(
                                "commit of copy generation {generation}, but generation {open} is open"
                            ),
                        ),
                    );
                }
                if let Some(step) = self.refuse_while_writing(stream, req, handle) {
                    return step;
                }
                (
                    Pending::CommitInitial { req, handle },
                    Effect::CommitInitial { handle },
                )
            }
            Control::BeginCycle { req, handle, cycle } => {
                if !self.disks.contains_key(&handle) {
                    return self.unknown_handle(stream, req, handle);
                }
                (
                    Pending::BeginCycle { req, handle, cycle },
                    Effect::BeginCycle { handle, cycle },
                )
            }
            Control::CommitCycle {
                req,
                handle,
                cycle,
                bytes,
                digest,
                retention_secs,
            } => {
                if !self.disks.contains_key(&handle) {
                    return self.unknown_handle(stream, req, handle);
                }
                if let Some(step) = self.refuse_while_writing(stream, req, handle) {
                    return step;
                }
                (
                    Pending::CommitCycle {
                        req,
                        handle,
                        cycle,
                        bytes,
                    },
                    Effect::CommitCycle {
                        handle,
                        cycle,
                        bytes,
                        digest,
                        retention_secs: retention_secs.min(MAX_RETENTION_SECS) as u64,
                    },
                )
            }
            Control::HashRequest {
                req,
                handle,
                level,
                parents,
                verify,
            } => {
                let Some(d) = self.disks.get(&handle).cloned() else {
                    return self.unknown_handle(stream, req, handle);
                };
                if d.initial_in_progress {
                    return self.refuse(
                        stream,
                        req,
                        Refusal::new(
                            ErrorClass::InvalidState,
                            "resync needs a committed replica, but an initial copy is in progress",
                        ),
                    );
                }
                if let Err(r) = check_hash_request(d.virtual_size, level, &parents) {
                    return self.refuse(stream, req, r);
                }
                (
                    Pending::Hashes { req, handle, level },
                    Effect::Hashes {
                        handle,
                        level,
                        parents,
                        verify,
                    },
                )
            }
            Control::RootRequest { req, handle } => {
                if !self.disks.contains_key(&handle) {
                    return self.unknown_handle(stream, req, handle);
                }
                (Pending::Root { req, handle }, Effect::Root { handle })
            }
            Control::ReportJob { req, job } => {
                if let Some(step) = self.refuse_vm(stream, req, &job.vm) {
                    return step;
                }
                if let Err(r) = check_job(&job) {
                    return self.refuse(stream, req, r);
                }
                (
                    Pending::RecordJob {
                        req,
                        vm: job.vm.clone(),
                        id: job.id.clone(),
                    },
                    Effect::RecordJob { job },
                )
            }
            Control::QueryCapacity { req, vm, needed } => {
                if let Some(step) = self.refuse_vm(stream, req, &vm) {
                    return step;
                }
                (
                    Pending::Capacity {
                        req,
                        vm: vm.clone(),
                        needed,
                    },
                    Effect::QueryCapacity { vm, needed },
                )
            }
            Control::ClaimGroup {
                req,
                group,
                vms,
                interval_secs,
            } => {
                if let Err(r) = check_points_version("ClaimGroup", version) {
                    return self.close(stream, req, r);
                }
                if let Err(r) = check_group(&group, &vms) {
                    return self.refuse(stream, req, r);
                }
                for vm in &vms {
                    if let Some(step) = self.refuse_vm(stream, req, vm) {
                        return step;
                    }
                }
                (
                    Pending::ClaimGroup {
                        req,
                        group: group.clone(),
                        vms: vms.clone(),
                    },
                    Effect::ClaimGroup {
                        group,
                        vms,
                        interval_secs,
                    },
                )
            }
            Control::ProgressRequest { req, handle, after } => {
                return self.progress_page(stream, version, req, handle, after)
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
                if let Err(r) = check_points_version("CommitPoint", version) {
                    return self.close(stream, req, r);
                }
                let (vm, parts) = match self.point_parts(&disks) {
                    Ok(v) => v,
                    Err(r) => return self.refuse(stream, req, r),
                };
                if let Some(step) = disks
                    .iter()
                    .find_map(|d| self.refuse_while_writing(stream, req, d.handle))
                {
                    return step;
                }
                (
                    Pending::CommitPoint {
                        req,
                        vm: vm.clone(),
                        vm_cycle,
                        disks: parts.len(),
                    },
                    Effect::CommitPoint {
                        vm,
                        vm_cycle,
                        switch_unix_ms,
                        group,
                        group_cycle,
                        retention_secs: retention_secs.min(MAX_RETENTION_SECS) as u64,
                        disks: parts,
                        one_instant,
                    },
                )
            }
            other => {
                return self.close(
                    stream,
                    0,
                    Refusal::new(
                        ErrorClass::Protocol,
                        format!("unexpected control message from a sender: {}", name(&other)),
                    ),
                )
            }
        };
        self.streams
            .insert(stream, Stream::Busy { version, pending });
        ControlStep::Perform(effect)
    }

    /// The disks of a VM point by name: every handle open on this connection, all of one
    /// VM, no disk twice, each part a cycle the disk has committed. An unknown handle is a
    /// protocol violation (closes); the rest are `InvalidState`.
    fn point_parts(&self, parts: &[PointPart]) -> Result<(String, Vec<PointDisk>), Refusal> {
        let invalid = |m: String| Refusal::new(ErrorClass::InvalidState, m);
        if parts.is_empty() {
            return Err(invalid("a VM point needs at least one disk".into()));
        }
        let mut vm: Option<&str> = None;
        let mut out: Vec<PointDisk> = Vec::with_capacity(parts.len());
        for p in parts {
            let Some(d) = self.disks.get(&p.handle) else {
                return Err(Refusal::new(
                    ErrorClass::Protocol,
                    format!("unknown disk handle {}", p.handle),
                ));
            };
            match vm {
                None => vm = Some(&d.vm),
                Some(v) if v != d.vm => {
                    return Err(invalid(format!(
                        "a VM point names disks of VMs {v} and {}",
                        d.vm
                    )))
                }
                Some(_) => {}
            }
            if out.iter().any(|o| o.disk == d.disk) {
                return Err(invalid(format!("a VM point names disk {} twice", d.disk)));
            }
            if d.initial_in_progress || p.cycle > d.committed_cycle {
                return Err(invalid(format!(
                    "disk {}/{}: cycle {} is not committed (newest committed: {})",
                    d.vm, d.disk, p.cycle, d.committed_cycle
                )));
            }
            out.push(PointDisk {
                disk: d.disk.clone(),
                cycle: p.cycle,
                bytes: p.bytes,
                digest: p.digest,
            });
        }
        out.sort_by(|a, b| a.disk.cmp(&b.disk));
        Ok((vm.unwrap_or_default().to_string(), out))
    }

    /// A commit while batches of its disk are still writing would record (or miss) bytes
    /// still moving: the sender commits only after every batch result, so this is a peer
    /// out of order or a batch it abandoned; it may retry once they end.
    fn refuse_while_writing(
        &mut self,
        stream: StreamId,
        req: u32,
        handle: u32,
    ) -> Option<ControlStep> {
        let n = self.batches_running(handle);
        (n > 0).then(|| {
            self.refuse(
                stream,
                req,
                Refusal::new(
                    ErrorClass::TargetBusy,
                    format!(
                        "{n} batches of disk handle {handle} are still being written; commit after their results"
                    ),
                ),
            )
        })
    }
}

//! The receiver's checks of each request, made before any store work: what passes becomes
//! an [`Effect`] and leaves the stream busy until [`ReceiverSession::handle_done`].

use super::checks::{
    check_disk_size, check_group, check_hash_request, check_job, name, MAX_RETENTION_SECS,
};
use super::{ControlStep, Effect, Pending, ReceiverSession, Stream};
use crate::session::{Refusal, StreamId};
use crate::wire::{Control, ErrorClass};

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
            } => {
                if let Some(step) = self.refuse_vm(stream, req, &vm) {
                    return step;
                }
                if let Err(r) = check_disk_size(virtual_size) {
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

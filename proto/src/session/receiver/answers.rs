//! The receiver's answers: the outcome of a request's store work becomes its answer frame,
//! and the session's view of the disk follows the store (handles, generations, cycles).

use super::{ControlStep, Done, OpenDisk, Pending, ReceiverSession, Report, Stream};
use crate::session::{Refusal, StreamId};
use crate::wire::{Control, ErrorClass, MAX_HASHES};

impl ReceiverSession {
    /// Feeds the outcome of the effect that control stream `stream` asked for.
    pub fn handle_done(&mut self, stream: StreamId, done: Done) -> ControlStep {
        let Some(Stream::Busy { version, pending }) = self.streams.get(&stream).cloned() else {
            return self.close(
                stream,
                0,
                Refusal::new(
                    ErrorClass::Internal,
                    "store work finished for a stream that asked for none",
                ),
            );
        };
        self.streams.insert(stream, Stream::Ready { version });
        let req = pending.req();
        let (answer, report) = match (pending, done) {
            (
                Pending::Open {
                    req,
                    vm,
                    disk,
                    virtual_size,
                },
                Done::Opened(Ok(r)),
            ) => {
                let handle = self.next_handle;
                self.next_handle = self.next_handle.wrapping_add(1).max(1);
                // Another handle on the same replica sees the same store state.
                for d in self.disks.values_mut() {
                    if d.vm == vm && d.disk == disk {
                        d.generation = r.generation;
                        d.initial_in_progress = r.initial_in_progress;
                    }
                }
                self.disks.insert(
                    handle,
                    OpenDisk {
                        vm: vm.clone(),
                        disk: disk.clone(),
                        virtual_size,
                        generation: r.generation,
                        version,
                        initial_in_progress: r.initial_in_progress,
                        committed_cycle: r.committed_cycle,
                        open_cycle: None,
                    },
                );
                let resumed_bytes = r.progress.covered_len();
                let (progress, more_progress) = self.first_page(version, handle, r.progress);
                (
                    Control::DiskOpened {
                        req,
                        handle,
                        initial_committed: r.initial_committed,
                        committed_cycle: r.committed_cycle,
                        generation: r.generation,
                        known_empty: r.initial_in_progress,
                        progress,
                        more_progress,
                    },
                    Some(Report::DiskOpened {
                        handle,
                        vm,
                        disk,
                        generation: r.generation,
                        resumed_bytes,
                    }),
                )
            }
            (Pending::CommitInitial { req, handle }, Done::InitialCommitted(Ok(()))) => {
                if let Some(d) = self.disks.get_mut(&handle) {
                    d.initial_in_progress = false;
                    d.committed_cycle = 0;
                }
                (
                    Control::Committed {
                        req,
                        handle,
                        cycle: 0,
                    },
                    Some(Report::InitialCommitted { handle }),
                )
            }
            (Pending::BeginCycle { req, handle, cycle }, Done::CycleOpened(Ok(progress))) => {
                if let Some(d) = self.disks.get_mut(&handle) {
                    d.open_cycle = Some(cycle);
                }
                let (progress, more_progress) = self.first_page(version, handle, progress);
                (
                    Control::CycleOpened {
                        req,
                        handle,
                        cycle,
                        progress,
                        more_progress,
                    },
                    None,
                )
            }
            (
                Pending::CommitCycle {
                    req,
                    handle,
                    cycle,
                    bytes,
                },
                Done::CycleCommitted(Ok(pruned)),
            ) => {
                if let Some(d) = self.disks.get_mut(&handle) {
                    d.open_cycle = None;
                    d.committed_cycle = d.committed_cycle.max(cycle);
                }
                (
                    Control::Committed { req, handle, cycle },
                    Some(Report::CycleCommitted {
                        handle,
                        cycle,
                        bytes,
                        pruned: pruned.len(),
                    }),
                )
            }
            (Pending::Hashes { req, handle, level }, Done::Hashes(Ok(hashes))) => {
                if hashes.len() > MAX_HASHES {
                    return self.close(
                        stream,
                        req,
                        Refusal::new(ErrorClass::Protocol, "too many hashes asked for at once"),
                    );
                }
                (
                    Control::Hashes {
                        req,
                        handle,
                        level,
                        hashes,
                    },
                    None,
                )
            }
            (Pending::Root { req, handle }, Done::Root(Ok(root))) => {
                (Control::Root { req, handle, root }, None)
            }
            (Pending::RecordJob { req, vm, id }, Done::JobRecorded(Ok(()))) => (
                Control::JobRecorded { req },
                Some(Report::JobRecorded { vm, id }),
            ),
            (Pending::Capacity { req, vm, needed }, Done::Capacity(Ok(a))) => {
                let available = a.unwrap_or(u64::MAX);
                (
                    Control::Capacity { req, available },
                    Some(Report::CapacityChecked {
                        vm,
                        needed,
                        available,
                    }),
                )
            }
            (Pending::ClaimGroup { req, group, vms }, Done::GroupClaimed(Ok(group_cycle))) => (
                Control::GroupClaimed { req, group_cycle },
                Some(Report::GroupClaimed { group, vms }),
            ),
            (
                Pending::CommitPoint {
                    req,
                    vm,
                    vm_cycle,
                    disks,
                },
                Done::PointCommitted(Ok(pruned)),
            ) => (
                Control::PointCommitted { req, vm_cycle },
                Some(Report::PointCommitted {
                    vm,
                    vm_cycle,
                    disks,
                    pruned,
                }),
            ),
            (_, done) => match done.refusal() {
                Some(r) => return self.refuse(stream, req, r),
                None => {
                    return self.close(
                        stream,
                        req,
                        Refusal::new(
                            ErrorClass::Internal,
                            "the store answered a different request than the one pending",
                        ),
                    )
                }
            },
        };
        ControlStep::Answer {
            answer,
            close: false,
            report,
        }
    }
}

impl Pending {
    pub(super) fn req(&self) -> u32 {
        match self {
            Pending::Open { req, .. }
            | Pending::CommitInitial { req, .. }
            | Pending::BeginCycle { req, .. }
            | Pending::CommitCycle { req, .. }
            | Pending::Hashes { req, .. }
            | Pending::Root { req, .. }
            | Pending::RecordJob { req, .. }
            | Pending::Capacity { req, .. }
            | Pending::ClaimGroup { req, .. }
            | Pending::CommitPoint { req, .. } => *req,
        }
    }
}

impl Done {
    /// The refusal this outcome carries, if it is one.
    pub(super) fn refusal(self) -> Option<Refusal> {
        match self {
            Done::Opened(Err(r))
            | Done::InitialCommitted(Err(r))
            | Done::CycleOpened(Err(r))
            | Done::CycleCommitted(Err(r))
            | Done::Hashes(Err(r))
            | Done::Root(Err(r))
            | Done::JobRecorded(Err(r))
            | Done::Capacity(Err(r))
            | Done::GroupClaimed(Err(r))
            | Done::PointCommitted(Err(r)) => Some(r),
            _ => None,
        }
    }
}

//! The receiver's side of the protocol: one [`ReceiverSession`] per connection and one
//! [`BatchReceiver`] per data stream.
//!
//! A control stream goes through these states (WIRE.md, "Receiver control stream"):
//!
//! ```text
//!   AwaitingHello --Hello, versions overlap--> Ready --request--> Busy(effect) --done--> Ready
//!        |                                       |                                 |
//!        +--anything else / no overlap--+        +--malformed, unexpected frame,---+--> Closed
//!                                       +--> Closed  unknown handle, bad level...
//! ```
//!
//! Every refusal is an [`Control::Error`] answer; refusals of class `Protocol` or
//! `VersionMismatch` also close the stream ([`Refusal::is_fatal`]). Checks that need no store
//! — authorisation, handles, generations, sizes, tree geometry — happen here, before any
//! store work is asked for.

mod batch;
mod effects;

pub use batch::{BatchEnd, BatchReceiver, BatchReport, BatchStep, ExtentWrite, WriteOutcome};
pub use effects::{ControlStep, Done, Effect, OpenedReplica, Report};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Refusal, StreamId};
use crate::wire::{
    self, BatchStart, Control, ErrorClass, JobReport, MAX_HASHES, RESYNC_FANOUT, RESYNC_NODE_SIZES,
};

/// Most text one recorded job may hold (ids, names, details, error): a VM keeps 100 jobs,
/// and bounding each keeps its job file small whatever a sender sends (a frame alone may
/// hold 1 MiB).
pub const MAX_JOB_BYTES: usize = 64 << 10;

/// Longest retention a cycle commit may ask for: one day.
pub const MAX_RETENTION_SECS: u32 = 86_400;

/// Where a control stream is, as [`ReceiverSession::control_state`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlState {
    /// Nothing received yet: the first frame must be `Hello`.
    AwaitingHello,
    /// A version is negotiated; requests are answered one at a time.
    Ready {
        /// The negotiated version.
        version: u16,
    },
    /// A request's store work is under way; its outcome is due ([`ReceiverSession::handle_done`]).
    Busy {
        /// The negotiated version.
        version: u16,
    },
    /// The stream ended on a fatal refusal; nothing more is read.
    Closed,
}

/// The request whose store work is under way, with what its answer needs.
#[derive(Debug, Clone)]
enum Pending {
    Open {
        req: u32,
        vm: String,
        disk: String,
        virtual_size: u64,
    },
    CommitInitial {
        req: u32,
        handle: u32,
    },
    BeginCycle {
        req: u32,
        handle: u32,
        cycle: u64,
    },
    CommitCycle {
        req: u32,
        handle: u32,
        cycle: u64,
        bytes: u64,
    },
    Hashes {
        req: u32,
        handle: u32,
        level: u8,
    },
    Root {
        req: u32,
        handle: u32,
    },
    RecordJob {
        req: u32,
        vm: String,
        id: String,
    },
    Capacity {
        req: u32,
        vm: String,
        needed: u64,
    },
}

#[derive(Debug, Clone)]
enum Stream {
    AwaitingHello,
    Ready { version: u16 },
    Busy { version: u16, pending: Pending },
    Closed,
}

/// What the session knows of a disk open on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDisk {
    /// VM name.
    pub vm: String,
    /// Disk name.
    pub disk: String,
    /// Virtual size of the source.
    pub virtual_size: u64,
    /// Copy generation data streams must name.
    pub generation: u64,
    /// An initial copy is in progress (a resync needs a committed replica).
    pub initial_in_progress: bool,
    /// Newest committed cycle.
    pub committed_cycle: u64,
    /// The cycle opened on this connection and not yet committed.
    pub open_cycle: Option<u64>,
}

/// The receiver's protocol state for one connection of one authenticated sender.
#[derive(Debug)]
pub struct ReceiverSession {
    sender: String,
    vms: BTreeSet<String>,
    streams: HashMap<StreamId, Stream>,
    disks: BTreeMap<u32, OpenDisk>,
    next_handle: u32,
}

impl ReceiverSession {
    /// A session for `sender` (its certificate name, authenticated by TLS), allowed the VMs
    /// `allow` gives it.
    pub fn new(sender: &str, allow: &super::Authorizations) -> Self {
        ReceiverSession {
            sender: sender.to_string(),
            vms: allow.vms_of(sender),
            streams: HashMap::new(),
            disks: BTreeMap::new(),
            next_handle: 1,
        }
    }

    /// The sender's name.
    pub fn sender(&self) -> &str {
        &self.sender
    }

    /// Where control stream `stream` is (a stream not seen yet awaits its hello).
    pub fn control_state(&self, stream: StreamId) -> ControlState {
        match self.streams.get(&stream) {
            None | Some(Stream::AwaitingHello) => ControlState::AwaitingHello,
            Some(Stream::Ready { version }) => ControlState::Ready { version: *version },
            Some(Stream::Busy { version, .. }) => ControlState::Busy { version: *version },
            Some(Stream::Closed) => ControlState::Closed,
        }
    }

    /// A disk open on this connection.
    pub fn disk(&self, handle: u32) -> Option<&OpenDisk> {
        self.disks.get(&handle)
    }

    /// Forgets a control stream that ended (a busy stream's outcome is then dropped).
    pub fn stream_ended(&mut self, stream: StreamId) {
        self.streams.remove(&stream);
    }

    /// Feeds one frame (`kind`, `body`) received on control stream `stream`.
    pub fn handle_control(&mut self, stream: StreamId, kind: u8, body: &[u8]) -> ControlStep {
        match Control::decode(kind, body) {
            Ok(msg) => self.handle_message(stream, msg),
            Err(e) => self.close(
                stream,
                0,
                Refusal::new(
                    ErrorClass::Protocol,
                    format!("malformed control frame: {e}"),
                ),
            ),
        }
    }

    /// Feeds one decoded control message received on `stream`.
    pub fn handle_message(&mut self, stream: StreamId, msg: Control) -> ControlStep {
        let state = self
            .streams
            .get(&stream)
            .cloned()
            .unwrap_or(Stream::AwaitingHello);
        match state {
            Stream::Closed => self.close(
                stream,
                0,
                Refusal::new(
                    ErrorClass::Protocol,
                    "frame after the control stream closed",
                ),
            ),
            Stream::Busy { pending, .. } => self.close(
                stream,
                0,
                Refusal::new(
                    ErrorClass::Protocol,
                    format!(
                        "a request arrived while request {} is being answered",
                        pending.req()
                    ),
                ),
            ),
            Stream::AwaitingHello => self.hello(stream, msg),
            Stream::Ready { version } => self.request(stream, version, msg),
        }
    }

    fn hello(&mut self, stream: StreamId, msg: Control) -> ControlStep {
        let Control::Hello {
            min_version,
            max_version,
            software,
        } = msg
        else {
            return self.close(
                stream,
                0,
                Refusal::new(
                    ErrorClass::Protocol,
                    format!("the first control frame must be Hello, not {}", name(&msg)),
                ),
            );
        };
        match wire::negotiate(min_version, max_version) {
            Some(version) => {
                self.streams.insert(stream, Stream::Ready { version });
                ControlStep::Answer {
                    answer: Control::HelloAck { version },
                    close: false,
                    report: Some(Report::Hello { software, version }),
                }
            }
            None => self.close(
                stream,
                0,
                Refusal::new(
                    ErrorClass::VersionMismatch,
                    format!(
                        "sender speaks protocol versions {min_version}..={max_version}, this \
                         receiver {}..={}",
                        wire::MIN_PROTOCOL_VERSION,
                        wire::PROTOCOL_VERSION
                    ),
                ),
            ),
        }
    }

    fn request(&mut self, stream: StreamId, version: u16, msg: Control) -> ControlStep {
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
                        initial_in_progress: r.initial_in_progress,
                        committed_cycle: r.committed_cycle,
                        open_cycle: None,
                    },
                );
                let resumed_bytes = r.progress.iter().map(|(a, b)| b.saturating_sub(*a)).sum();
                (
                    Control::DiskOpened {
                        req,
                        handle,
                        initial_committed: r.initial_committed,
                        committed_cycle: r.committed_cycle,
                        generation: r.generation,
                        known_empty: r.initial_in_progress,
                        progress: r.progress,
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
                (
                    Control::CycleOpened {
                        req,
                        handle,
                        cycle,
                        progress,
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

    /// Checks the first frame of a data stream: the batch's disk must be open on this
    /// connection in the generation it names. The refusal is the stream's whole answer.
    pub fn start_batch(&self, body: &[u8]) -> Result<BatchReceiver, BatchEnd> {
        let start = BatchStart::decode(body).map_err(|e| {
            BatchEnd::failed(Refusal::new(
                ErrorClass::Protocol,
                format!("malformed batch start: {e}"),
            ))
        })?;
        match self.disks.get(&start.handle) {
            Some(d) if d.generation == start.generation => Ok(BatchReceiver::new(
                start.handle,
                start.generation,
                d.virtual_size,
            )),
            Some(d) => Err(BatchEnd::failed(Refusal::new(
                ErrorClass::InvalidState,
                format!(
                    "batch for copy generation {}, but generation {} is open",
                    start.generation, d.generation
                ),
            ))),
            None => Err(BatchEnd::failed(Refusal::new(
                ErrorClass::Protocol,
                format!("unknown disk handle {}", start.handle),
            ))),
        }
    }

    /// The fatal refusal of a handle not open on this connection.
    fn unknown_handle(&mut self, stream: StreamId, req: u32, handle: u32) -> ControlStep {
        self.close(
            stream,
            req,
            Refusal::new(
                ErrorClass::Protocol,
                format!("unknown disk handle {handle}"),
            ),
        )
    }

    fn refuse_vm(&mut self, stream: StreamId, req: u32, vm: &str) -> Option<ControlStep> {
        if self.vms.contains(vm) {
            return None;
        }
        let step = self.refuse(
            stream,
            req,
            Refusal::new(
                ErrorClass::Unauthorized,
                format!(
                    "sender {} is not authorised for VM {vm} on this receiver",
                    self.sender
                ),
            ),
        );
        Some(match step {
            ControlStep::Answer { answer, close, .. } => ControlStep::Answer {
                answer,
                close,
                report: Some(Report::Unauthorized { vm: vm.to_string() }),
            },
            other => other,
        })
    }

    /// Answers `req` with a refusal; a fatal one closes the stream.
    fn refuse(&mut self, stream: StreamId, req: u32, r: Refusal) -> ControlStep {
        if r.is_fatal() {
            return self.close(stream, req, r);
        }
        ControlStep::Answer {
            answer: Control::Error {
                req,
                class: r.class,
                message: r.message,
            },
            close: false,
            report: None,
        }
    }

    /// Answers with a refusal and closes the stream.
    fn close(&mut self, stream: StreamId, req: u32, r: Refusal) -> ControlStep {
        self.streams.insert(stream, Stream::Closed);
        ControlStep::Answer {
            answer: Control::Error {
                req,
                class: r.class,
                message: r.message,
            },
            close: true,
            report: None,
        }
    }
}

impl Pending {
    fn req(&self) -> u32 {
        match self {
            Pending::Open { req, .. }
            | Pending::CommitInitial { req, .. }
            | Pending::BeginCycle { req, .. }
            | Pending::CommitCycle { req, .. }
            | Pending::Hashes { req, .. }
            | Pending::Root { req, .. }
            | Pending::RecordJob { req, .. }
            | Pending::Capacity { req, .. } => *req,
        }
    }
}

impl Done {
    /// The refusal this outcome carries, if it is one.
    fn refusal(self) -> Option<Refusal> {
        match self {
            Done::Opened(Err(r))
            | Done::InitialCommitted(Err(r))
            | Done::CycleOpened(Err(r))
            | Done::CycleCommitted(Err(r))
            | Done::Hashes(Err(r))
            | Done::Root(Err(r))
            | Done::JobRecorded(Err(r))
            | Done::Capacity(Err(r)) => Some(r),
            _ => None,
        }
    }
}

/// Nodes of the resync tree at `level` over a disk of `size` bytes.
pub fn tree_nodes(size: u64, level: usize) -> u64 {
    RESYNC_NODE_SIZES
        .get(level)
        .map_or(0, |n| size.div_ceil(*n))
}

/// A hash request names a level of the tree and, below the top, parents that exist on this
/// disk; the answer must fit one frame. Checked before anything is hashed.
fn check_hash_request(size: u64, level: u8, parents: &[u64]) -> Result<(), Refusal> {
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
    if parents.len() as u64 * RESYNC_FANOUT > MAX_HASHES as u64 {
        return Err(Refusal::new(
            ErrorClass::Protocol,
            "too many hashes asked for at once",
        ));
    }
    Ok(())
}

/// A job's text is bounded (see [`MAX_JOB_BYTES`]).
fn check_job(job: &JobReport) -> Result<(), Refusal> {
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
    }
}

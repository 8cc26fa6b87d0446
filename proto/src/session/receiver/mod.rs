//! The receiver's side of the protocol: one [`ReceiverSession`] per connection and one
//! [`BatchReceiver`] per data stream.
//!
//! A control stream (WIRE.md §4.2) starts `AwaitingHello`; a `Hello` whose versions overlap
//! makes it `Ready`; a request that passes the checks makes it `Busy` until its store work
//! is done ([`ReceiverSession::handle_done`]), then `Ready` again. A fatal refusal — no
//! common version, a malformed or unexpected frame, an unknown handle, a hash request
//! outside the tree — makes it `Closed`.
//!
//! Every refusal is an [`Control::Error`] answer; refusals of class `Protocol` or
//! `VersionMismatch` also close the stream ([`Refusal::is_fatal`]). Checks that need no store
//! — authorisation, handles, generations, sizes, tree geometry — happen here, before any
//! store work is asked for.
//!
//! Time comes in as a value: the session's checkpoint timer (`timer.rs`) says when it next
//! needs the time ([`ReceiverSession::poll_timeout`]) and which disks to checkpoint then
//! ([`ReceiverSession::handle_timeout`]).

mod answers;
mod batch;
mod body;
mod checks;
mod effects;
mod limits;
mod progress;
mod requests;
mod timer;

pub use batch::{BatchEnd, BatchReceiver, BatchReport, BatchStep, ExtentWrite, WriteOutcome};
pub use body::Body;
pub(crate) use checks::name;
pub use checks::{tree_nodes, MAX_DISK_SIZE, MAX_JOB_BYTES, MAX_RETENTION_SECS};
pub use effects::{ControlStep, Done, Effect, OpenedReplica, PointDisk, Report};
pub use limits::DEFAULT_MAX_DISKS_PER_CONNECTION;
pub use timer::{CheckpointRound, CHECKPOINT_INTERVAL};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Refusal, StreamId};
use crate::ranges::RangeSet;
use crate::wire::{self, BatchStart, Control, ErrorClass, K_BATCH_START};

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

/// What a new stream turned out to be, from its first frame.
#[must_use = "a first step carries a batch to run or an answer to send"]
#[derive(Debug)]
pub enum FirstStep {
    /// A data stream: run the batch.
    Batch(BatchReceiver),
    /// A data stream whose batch is refused: send this result and stop the stream.
    BatchRefused(BatchEnd),
    /// A control stream: the step for its first frame.
    Control(ControlStep),
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
    ClaimGroup {
        req: u32,
        group: String,
        vms: Vec<String>,
    },
    CommitPoint {
        req: u32,
        vm: String,
        vm_cycle: u64,
        disks: usize,
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
    /// The version of the control stream that opened the handle: its batches' extent
    /// hashes follow it ([`wire::ExtentHashing::of_version`]).
    pub version: u16,
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
    /// Batches running per disk handle: commits wait for them.
    running: BTreeMap<u32, u32>,
    /// Distinct disks this connection may hold open ([`ReceiverSession::with_max_disks`]).
    max_disks: usize,
    /// Per handle, the progress snapshot of its last `DiskOpened`/`CycleOpened` while pages
    /// of it are still to be asked for (version 4, [`progress`]).
    progress: BTreeMap<u32, RangeSet>,
    /// When open disks are next checkpointed (`timer.rs`).
    timer: timer::CheckpointTimer,
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
            running: BTreeMap::new(),
            max_disks: DEFAULT_MAX_DISKS_PER_CONNECTION,
            progress: BTreeMap::new(),
            timer: Default::default(),
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

    /// Feeds the first frame of a new stream, which says what the stream is: a `BatchStart`
    /// opens a data stream (WIRE.md §5), anything else is the first frame of a control
    /// stream (§4).
    pub fn handle_first_frame(&mut self, stream: StreamId, kind: u8, body: &[u8]) -> FirstStep {
        if kind == K_BATCH_START {
            return match self.start_batch(body) {
                Ok(b) => FirstStep::Batch(b),
                Err(end) => FirstStep::BatchRefused(end),
            };
        }
        FirstStep::Control(self.handle_control(stream, kind, body))
    }

    /// Checks the first frame of a data stream: the batch's disk must be open on this
    /// connection in the generation it names. The refusal is the stream's whole answer.
    /// A running batch counts against its disk until [`ReceiverSession::batch_ended`].
    pub fn start_batch(&mut self, body: &[u8]) -> Result<BatchReceiver, BatchEnd> {
        let start = BatchStart::decode(body).map_err(|e| {
            BatchEnd::failed(Refusal::new(
                ErrorClass::Protocol,
                format!("malformed batch start: {e}"),
            ))
        })?;
        match self.disks.get(&start.handle) {
            Some(d) if d.generation == start.generation => {
                *self.running.entry(start.handle).or_default() += 1;
                Ok(BatchReceiver::new(
                    start.handle,
                    start.generation,
                    d.virtual_size,
                    wire::ExtentHashing::of_version(d.version),
                ))
            }
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

    /// A batch of disk `handle` wrote its last extent: the driver says so before it sends
    /// the batch's result, so a commit the sender makes after reading every result never
    /// finds a batch still writing.
    pub fn batch_ended(&mut self, handle: u32) {
        if let Some(n) = self.running.get_mut(&handle) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(&handle);
            }
        }
    }

    /// Batches of disk `handle` still writing.
    pub fn batches_running(&self, handle: u32) -> u32 {
        self.running.get(&handle).copied().unwrap_or(0)
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

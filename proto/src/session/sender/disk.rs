//! One disk at the sender, over one connection: the order of its requests and what each
//! answer means for the disk. The [`super::SenderControl`] under it matches an answer to its
//! request id; this session checks the answer against where the *disk* is — a commit only
//! after an open copy, a cycle only after a committed one, hashes only inside an open cycle
//! and as many as the tree's geometry says — and turns the opened reply's progress into
//! what remains to send ([`Resume`]).
//!
//! States (see `proto/WIRE.md` §7):
//! `Closed` --OpenDisk--> `Opening` --DiskOpened--> `Copying` (initial copy not committed,
//! resumed from its progress) or `Ready` (committed); `Copying` --CommitInitial-->
//! `CommittingInitial` --Committed{0}--> `Ready`; `Ready` --BeginCycle{n}--> `CycleOpening`
//! --CycleOpened{n}--> `Shipping{n}` (extents; resync: `HashRequest` → `Hashes`,
//! `RootRequest` → `Root`, back to `Shipping`) --CommitCycle{n}--> `CycleCommitting`
//! --Committed{n}--> `Ready`. A refusal of a recoverable class returns to the state before
//! the request; any other refusal, and any answer the state does not expect, → `Failed`.

use super::{Resume, SessionError};
use crate::session::receiver::{name, tree_nodes};
use crate::wire::{Control, ErrorClass, DISK_SET_VERSION, RESYNC_FANOUT, RESYNC_NODE_SIZES};
use crate::Guid;

/// Where a disk is at the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskState {
    /// Not opened on this connection.
    Closed,
    /// `OpenDisk` sent.
    Opening,
    /// The initial copy is under way (resumed from the receiver's progress).
    Copying,
    /// `CommitInitial` sent.
    CommittingInitial,
    /// A committed replica: a cycle may begin.
    Ready,
    /// `BeginCycle{cycle}` sent.
    CycleOpening {
        /// The cycle.
        cycle: u64,
    },
    /// Cycle `cycle` is open: extents ship, a resync compares trees.
    Shipping {
        /// The cycle.
        cycle: u64,
    },
    /// A `HashRequest` is out inside the open cycle.
    Hashing {
        /// The cycle.
        cycle: u64,
        /// The level asked for.
        level: u8,
        /// Hashes the answer must hold.
        expect: u64,
    },
    /// A `RootRequest` is out inside the open cycle.
    Rooting {
        /// The cycle.
        cycle: u64,
    },
    /// `CommitCycle{cycle}` sent.
    CycleCommitting {
        /// The cycle.
        cycle: u64,
    },
    /// The disk cannot go on over this connection.
    Failed,
}

/// What the receiver said about a disk when it opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedDisk {
    /// Handle for data streams and requests.
    pub handle: u32,
    /// Copy generation (data streams carry it).
    pub generation: u64,
    /// The working image holds zeros wherever nothing was written.
    pub known_empty: bool,
    /// An initial copy is committed.
    pub initial_committed: bool,
    /// The newest committed cycle.
    pub committed_cycle: u64,
    /// The protocol version negotiated on the connection.
    pub protocol: u16,
}

impl OpenedDisk {
    /// Whether the disk needs its initial copy (resumed): none is committed, or one is
    /// under way again (`known_empty` is only set while a copy is in progress).
    pub fn needs_copy(&self) -> bool {
        !self.initial_committed || self.known_empty
    }

    /// How zero blocks travel into this replica; see [`ZeroBlocks`].
    pub fn zero_blocks(&self) -> ZeroBlocks {
        ZeroBlocks::choose(self.known_empty, self.protocol)
    }
}

/// How the zero blocks of a read travel, which depends on what the replica holds and on
/// which extent ops the receiver's protocol version takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroBlocks {
    /// The replica may hold older data there: zero runs become clears.
    Clear,
    /// The replica holds zeros there: zero runs need nothing on the wire.
    Skip,
    /// As `Skip`, and one `WriteSparse` frame spans a read's zero gaps (protocol 2).
    Span,
    /// Protocol ≥ 3: a read's blocks go as one `WritePacked`; zero runs as clears unless
    /// `known_empty`.
    Pack {
        /// The replica holds zeros where nothing is written.
        known_empty: bool,
    },
}

impl ZeroBlocks {
    /// The encoding for a replica that is (or not) `known_empty`, under `protocol`.
    pub fn choose(known_empty: bool, protocol: u16) -> Self {
        match (known_empty, protocol) {
            (known_empty, 3..) => ZeroBlocks::Pack { known_empty },
            (false, _) => ZeroBlocks::Clear,
            (true, 2) => ZeroBlocks::Span,
            (true, _) => ZeroBlocks::Skip,
        }
    }
}

/// An answer the disk's state expected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an answer moves the disk on"]
pub enum DiskEvent {
    /// The disk is open; copy what `resume` leaves when [`OpenedDisk::needs_copy`].
    Opened {
        /// The receiver's view of the disk.
        disk: OpenedDisk,
        /// The initial copy's durable progress.
        resume: Resume,
    },
    /// The initial copy is committed (recovery point 0).
    InitialCommitted,
    /// The cycle is open; send its ranges less `resume`.
    CycleOpened {
        /// The cycle.
        cycle: u64,
        /// The cycle's durable progress (a resumed cycle).
        resume: Resume,
    },
    /// The hashes asked for, as many as asked.
    Hashes(Vec<u64>),
    /// The replica's root.
    Root([u8; 32]),
    /// The cycle is committed.
    CycleCommitted {
        /// The cycle.
        cycle: u64,
    },
}

/// The sender's protocol state for one disk on one connection.
#[derive(Debug, Clone)]
pub struct SenderDisk {
    vm: String,
    disk: String,
    virtual_size: u64,
    source_id: Guid,
    protocol: u16,
    /// The VM's disk set, sent with `OpenDisk` from [`DISK_SET_VERSION`] on.
    vm_disks: Vec<String>,
    state: DiskState,
    /// The state to return to when a request is refused with a recoverable class.
    before: DiskState,
    opened: Option<OpenedDisk>,
}

impl SenderDisk {
    /// Disk `disk` of `vm`, of `virtual_size` bytes, on a connection that negotiated
    /// `protocol`.
    pub fn new(vm: &str, disk: &str, virtual_size: u64, source_id: Guid, protocol: u16) -> Self {
        SenderDisk {
            vm: vm.to_string(),
            disk: disk.to_string(),
            virtual_size,
            source_id,
            protocol,
            vm_disks: Vec::new(),
            state: DiskState::Closed,
            before: DiskState::Closed,
            opened: None,
        }
    }

    /// Names every disk the sender protects of this VM (this one included): `OpenDisk`
    /// carries them on a connection of [`DISK_SET_VERSION`] or later, and the receiver
    /// refuses the open when its store holds a disk of the VM that is not among them (a
    /// disk dropped from the VM would keep stale points). Not set: not said.
    pub fn with_vm_disks(mut self, names: Vec<String>) -> Self {
        self.vm_disks = names;
        self
    }

    /// Where the disk is.
    pub fn state(&self) -> DiskState {
        self.state
    }

    /// The receiver's view of the disk once opened; `committed_cycle` follows the commits
    /// made since.
    pub fn opened(&self) -> Option<&OpenedDisk> {
        self.opened.as_ref()
    }

    /// `OpenDisk` with request id `req`; `full_copy` starts a new copy of a committed disk.
    pub fn open(&mut self, req: u32, full_copy: bool) -> Result<Control, SessionError> {
        self.expect_state(DiskState::Closed, "OpenDisk")?;
        self.send(DiskState::Opening);
        Ok(Control::OpenDisk {
            req,
            vm: self.vm.clone(),
            disk: self.disk.clone(),
            virtual_size: self.virtual_size,
            source_id: self.source_id,
            full_copy,
            vm_disks: if self.protocol >= DISK_SET_VERSION {
                self.vm_disks.clone()
            } else {
                Vec::new()
            },
        })
    }

    /// `CommitInitial`, once every extent of the copy was acknowledged.
    pub fn commit_initial(&mut self, req: u32) -> Result<Control, SessionError> {
        self.expect_state(DiskState::Copying, "CommitInitial")?;
        let o = self.opened_or_misuse()?;
        let msg = Control::CommitInitial {
            req,
            handle: o.handle,
            generation: o.generation,
        };
        self.send(DiskState::CommittingInitial);
        Ok(msg)
    }

    /// `BeginCycle{cycle}`: a delta cycle, or a resync as the next cycle. Also from an open
    /// cycle that was abandoned uncommitted (a damaged change log): the resync that follows
    /// reopens it.
    pub fn begin_cycle(&mut self, req: u32, cycle: u64) -> Result<Control, SessionError> {
        if !matches!(self.state, DiskState::Ready | DiskState::Shipping { .. }) {
            return Err(self.misuse("BeginCycle"));
        }
        let o = self.opened_or_misuse()?;
        if cycle <= o.committed_cycle {
            return Err(SessionError::Misuse(format!(
                "cycle {cycle} begun after cycle {} was committed",
                o.committed_cycle
            )));
        }
        let msg = Control::BeginCycle {
            req,
            handle: o.handle,
            cycle,
        };
        self.send(DiskState::CycleOpening { cycle });
        Ok(msg)
    }

    /// `HashRequest` for `level` under `parents` (nodes of `level - 1`; none at level 0),
    /// inside the open cycle; the answer must hold as many hashes as the tree has there.
    pub fn hash_request(
        &mut self,
        req: u32,
        level: u8,
        parents: Vec<u64>,
        verify: bool,
    ) -> Result<Control, SessionError> {
        let DiskState::Shipping { cycle } = self.state else {
            return Err(self.misuse("HashRequest"));
        };
        let expect = expected_hashes(self.virtual_size, level, &parents)?;
        let o = self.opened_or_misuse()?;
        let msg = Control::HashRequest {
            req,
            handle: o.handle,
            level,
            parents,
            verify,
        };
        self.send(DiskState::Hashing {
            cycle,
            level,
            expect,
        });
        Ok(msg)
    }

    /// `RootRequest` inside the open cycle.
    pub fn root_request(&mut self, req: u32) -> Result<Control, SessionError> {
        let DiskState::Shipping { cycle } = self.state else {
            return Err(self.misuse("RootRequest"));
        };
        let handle = self.opened_or_misuse()?.handle;
        self.send(DiskState::Rooting { cycle });
        Ok(Control::RootRequest { req, handle })
    }

    /// `CommitCycle` of the open cycle, once its extents were acknowledged.
    pub fn commit_cycle(
        &mut self,
        req: u32,
        bytes: u64,
        digest: [u8; 32],
        retention_secs: u32,
    ) -> Result<Control, SessionError> {
        let DiskState::Shipping { cycle } = self.state else {
            return Err(self.misuse("CommitCycle"));
        };
        let handle = self.opened_or_misuse()?.handle;
        self.send(DiskState::CycleCommitting { cycle });
        Ok(Control::CommitCycle {
            req,
            handle,
            cycle,
            bytes,
            digest,
            retention_secs,
        })
    }

    /// Feeds the answer to the disk's pending request (already matched to its request id
    /// by the control session); returns what it means for the disk.
    pub fn handle_answer(&mut self, msg: Control) -> Result<DiskEvent, SessionError> {
        if let Control::Error { class, message, .. } = msg {
            return Err(self.refused(class, message));
        }
        let handle = self.opened.as_ref().map(|o| o.handle);
        let event = match (self.state, msg) {
            (
                DiskState::Opening,
                Control::DiskOpened {
                    handle,
                    generation,
                    known_empty,
                    progress,
                    initial_committed,
                    committed_cycle,
                    ..
                },
            ) => {
                let disk = OpenedDisk {
                    handle,
                    generation,
                    known_empty,
                    initial_committed,
                    committed_cycle,
                    protocol: self.protocol,
                };
                self.state = if disk.needs_copy() {
                    DiskState::Copying
                } else {
                    DiskState::Ready
                };
                self.opened = Some(disk.clone());
                DiskEvent::Opened {
                    disk,
                    resume: Resume::from_progress(progress),
                }
            }
            (
                DiskState::CommittingInitial,
                Control::Committed {
                    handle: h,
                    cycle: 0,
                    ..
                },
            ) if Some(h) == handle => {
                self.committed(0);
                DiskEvent::InitialCommitted
            }
            (
                DiskState::CycleOpening { cycle },
                Control::CycleOpened {
                    handle: h,
                    cycle: c,
                    progress,
                    ..
                },
            ) if Some(h) == handle && c == cycle => {
                self.state = DiskState::Shipping { cycle };
                DiskEvent::CycleOpened {
                    cycle,
                    resume: Resume::from_progress(progress),
                }
            }
            (
                DiskState::Hashing {
                    cycle,
                    level,
                    expect,
                },
                Control::Hashes {
                    handle: h,
                    level: l,
                    hashes,
                    ..
                },
            ) if Some(h) == handle && l == level => {
                if hashes.len() as u64 != expect {
                    return Err(self.broken(format!(
                        "wrong number of level-{level} hashes in a resync answer: {} where the tree has {expect}",
                        hashes.len()
                    )));
                }
                self.state = DiskState::Shipping { cycle };
                DiskEvent::Hashes(hashes)
            }
            (
                DiskState::Rooting { cycle },
                Control::Root {
                    handle: h, root, ..
                },
            ) if Some(h) == handle => {
                self.state = DiskState::Shipping { cycle };
                DiskEvent::Root(root)
            }
            (
                DiskState::CycleCommitting { cycle },
                Control::Committed {
                    handle: h,
                    cycle: c,
                    ..
                },
            ) if Some(h) == handle && c == cycle => {
                self.committed(cycle);
                DiskEvent::CycleCommitted { cycle }
            }
            (state, other) => {
                return Err(self.broken(format!(
                    "unexpected answer {} for disk {}/{} while it is {state:?}",
                    name(&other),
                    self.vm,
                    self.disk
                )))
            }
        };
        Ok(event)
    }

    fn committed(&mut self, cycle: u64) {
        if let Some(o) = self.opened.as_mut() {
            o.committed_cycle = cycle;
            o.initial_committed = true;
            o.known_empty = false;
        }
        self.state = DiskState::Ready;
    }

    fn send(&mut self, next: DiskState) {
        self.before = self.state;
        self.state = next;
    }

    fn expect_state(&self, want: DiskState, what: &str) -> Result<(), SessionError> {
        if self.state == want {
            Ok(())
        } else {
            Err(self.misuse(what))
        }
    }

    fn misuse(&self, what: &str) -> SessionError {
        SessionError::Misuse(format!(
            "{what} for disk {}/{} while it is {:?}",
            self.vm, self.disk, self.state
        ))
    }

    fn opened_or_misuse(&self) -> Result<&OpenedDisk, SessionError> {
        self.opened
            .as_ref()
            .ok_or_else(|| SessionError::Misuse("the disk is not open".into()))
    }

    /// A refusal: a recoverable class leaves the disk where it was before the request (the
    /// request may be made again); any other ends the disk on this connection.
    fn refused(&mut self, class: ErrorClass, message: String) -> SessionError {
        let pending = matches!(
            self.state,
            DiskState::Opening
                | DiskState::CommittingInitial
                | DiskState::CycleOpening { .. }
                | DiskState::Hashing { .. }
                | DiskState::Rooting { .. }
                | DiskState::CycleCommitting { .. }
        );
        self.state = if pending && class.recovery().is_transient() {
            self.before
        } else {
            DiskState::Failed
        };
        SessionError::Refused { class, message }
    }

    fn broken(&mut self, why: String) -> SessionError {
        self.state = DiskState::Failed;
        SessionError::Protocol(why)
    }
}

/// Hashes a `HashRequest` for `level` under `parents` is answered with on a disk of `size`
/// bytes: every top node at level 0, else each parent's children (64, fewer at the end).
pub fn expected_hashes(size: u64, level: u8, parents: &[u64]) -> Result<u64, SessionError> {
    let l = level as usize;
    if l >= RESYNC_NODE_SIZES.len() || (l == 0 && !parents.is_empty()) {
        return Err(SessionError::Misuse(format!(
            "a hash request for level {level} with {} parents",
            parents.len()
        )));
    }
    if l == 0 {
        return Ok(tree_nodes(size, 0));
    }
    let n = tree_nodes(size, l);
    let mut total = 0u64;
    for &p in parents {
        let first = p.saturating_mul(RESYNC_FANOUT);
        if first >= n {
            return Err(SessionError::Misuse(format!(
                "hash request names node {p} of level {}, which has {}",
                l - 1,
                tree_nodes(size, l - 1)
            )));
        }
        total += (n - first).min(RESYNC_FANOUT);
    }
    Ok(total)
}

//! Receiver sinks: where replicated disks land.
//!
//! One trait per IO boundary (the neon `remote_storage` model): [`ReplicaStore`] opens and
//! lists disks, [`ReplicaDisk`] writes, clears, checkpoints and commits one disk. The
//! lifecycle below is written once, in [`lifecycle`] (pure: which call is allowed in which
//! state, the next state, one message per refusal); the backends keep only storage. Backends:
//! [`local`] (a sparse fixed-VHD file per disk plus durable state, the embedded default) and
//! [`azure`] (page blobs, recovery points as snapshots); [`fault`] wraps any backend to fail chosen calls on purpose, and
//! holds the in-memory filesystem that models durability for crash tests.
//!
//! The traits are synchronous: the receiver calls them from `tokio::task::spawn_blocking`,
//! so a slow fsync never stalls the runtime.
//!
//! ## Lifecycle of a disk
//! 1. [`ReplicaStore::open_disk`] creates the replica on first use: an *initial copy* of
//!    generation 1 is then in progress ([`DiskState::initial_in_progress`]).
//! 2. The sender writes and clears extents ([`ReplicaDisk::write`], [`ReplicaDisk::clear`]);
//!    every write is absolute, so resending converges (DESIGN §5, idempotence).
//! 3. Now and then the receiver calls [`ReplicaDisk::checkpoint`] with the ranges that are
//!    done: data first made durable, then the progress record. A reconnecting sender asks
//!    [`ReplicaDisk::state`] and resumes from the gaps of `progress`, not from zero.
//! 4. [`ReplicaDisk::commit_initial`] requires the whole disk to be done, writes the VHD
//!    footer and publishes the copy as the committed replica (cycle 0, the first recovery
//!    point).
//! 5. Delta cycle N opens with [`ReplicaDisk::begin_cycle`]; its writes are held aside (the
//!    local store logs them) and reach the replica only in [`ReplicaDisk::commit_cycle`],
//!    atomically, which makes the cycle the next recovery point. Older points stay readable
//!    ([`ReplicaDisk::read_point`]) until [`ReplicaDisk::prune_points`] drops them
//!    (retention [`DEFAULT_RETENTION`] unless the policy says otherwise).
//! 6. A resynchronisation or a fresh full copy starts with [`ReplicaDisk::begin_initial`]:
//!    a new generation is written beside the committed replica, which stays readable until
//!    the new copy commits.

pub mod azure;
pub mod error;
pub mod fault;
pub mod job_file;
pub mod lifecycle;
pub mod local;
pub mod retention;
pub mod vm_points;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
pub use error::SinkError;
pub use job_file::{JobFile, JobFileError};
use vdrep_proto::{Guid, RangeSet};

/// How long recovery points are kept unless a policy says otherwise (DESIGN §6: 0..24 h).
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Sector size of replicas: writes and clears are aligned to it (Azure pages are 512 bytes).
pub const SECTOR: u64 = 512;

/// Identifies a replicated disk: its VM and its name within the VM.
///
/// Both parts become file or blob names, so they are validated: 1..=64 characters of
/// `[A-Za-z0-9._-]`, not starting with a dot (no hidden files, no `.`/`..`, no path tricks).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskKey {
    /// The VM the disk belongs to.
    pub vm: String,
    /// The disk's name inside the VM (without extension).
    pub disk: String,
}

impl DiskKey {
    /// A validated key; a bad name is a non-recoverable [`SinkError::InvalidName`].
    pub fn new(vm: &str, disk: &str) -> Result<DiskKey, SinkError> {
        validate_name("VM name", vm)?;
        validate_name("disk name", disk)?;
        Ok(DiskKey {
            vm: vm.to_string(),
            disk: disk.to_string(),
        })
    }

    /// Re-checks a key built with the public fields.
    pub fn validate(&self) -> Result<(), SinkError> {
        validate_name("VM name", &self.vm)?;
        validate_name("disk name", &self.disk)
    }
}

impl fmt::Display for DiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vm, self.disk)
    }
}

/// Checks one component of a [`DiskKey`].
pub fn validate_name(what: &'static str, name: &str) -> Result<(), SinkError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 64 {
        Some("is longer than 64 characters")
    } else if name.starts_with('.') {
        Some("starts with a dot")
    } else if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        Some("has characters outside [A-Za-z0-9._-]")
    } else {
        None
    };
    match problem {
        Some(p) => Err(SinkError::InvalidName {
            what,
            name: name.to_string(),
            problem: p,
        }),
        None => Ok(()),
    }
}

/// The durable state of one replica, as last persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskState {
    /// Version of the state record this was read from (or will be written as).
    pub format_version: u32,
    /// Size of the source disk in bytes (the replica is rounded up to 1 MiB).
    pub virtual_size: u64,
    /// Identity of the source disk (e.g. its VHD/VHDX unique id); a different one is refused.
    pub source_id: Guid,
    /// True once an initial copy has been committed: a readable replica exists.
    pub initial_committed: bool,
    /// The newest committed cycle (0 = the initial copy). Meaningful when
    /// `initial_committed`.
    pub committed_cycle: u64,
    /// Durable, done ranges of the ongoing initial copy or of the open delta cycle (empty
    /// when neither is in progress).
    pub progress: RangeSet,
    /// Number of the current full copy; bumps when a new one starts.
    pub generation: u64,
    /// True while a full copy (generation `generation`) is being written and not committed.
    pub initial_in_progress: bool,
    /// Unique id in the footer of the committed replica ([`Guid::NIL`] if none).
    pub replica_id: Guid,
    /// Unique id the in-progress copy's footer will carry ([`Guid::NIL`] if none); lets
    /// recovery recognise a copy whose commit was interrupted after it was published.
    pub copy_id: Guid,
    /// The delta cycle being written (its writes are not part of any recovery point yet),
    /// if one is open; it is always `committed_cycle + 1`.
    pub open_cycle: Option<u64>,
}

impl DiskState {
    /// Sector-rounded end of the addressable range: writes must lie below it.
    pub fn writable_end(&self) -> u64 {
        self.virtual_size.div_ceil(SECTOR) * SECTOR
    }

    /// Bytes of the ongoing initial copy still missing.
    pub fn remaining(&self) -> u64 {
        self.writable_end()
            .saturating_sub(self.progress.clipped(0, self.writable_end()).covered_len())
    }
}

/// A recovery point: a committed state of a replica that failover can materialise.
///
/// The committed initial replication is point 0; every committed delta cycle (empty ones
/// too) is the next. Points are listed oldest first and pruned by age, never the newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// 0 for the initial replication, then the delta cycle number.
    pub cycle: u64,
    /// When the point was committed, Unix seconds (receiver clock, never before the
    /// previous point's: [`retention`]).
    pub created_unix: u64,
    /// Bytes the cycle changed (the virtual size for the initial copy).
    pub bytes: u64,
    /// BLAKE3 digest of the disk at this point as the sender computed it (all zero when the
    /// sender sent none); failover output is checked against it.
    pub digest: [u8; 32],
}

/// A store of replicas (one backend: a local directory, an Azure container, …).
pub trait ReplicaStore: Send + Sync {
    /// Opens (creating if absent) the replica of a disk. A different virtual size (resize is
    /// unsupported) or source identity than recorded is a non-recoverable error; so is a disk
    /// already open elsewhere, until that holder closes it (recoverable: it will).
    fn open_disk(
        &self,
        key: &DiskKey,
        virtual_size: u64,
        source_id: Guid,
    ) -> Result<Arc<dyn ReplicaDisk>, SinkError>;
    /// The disks of the store (of one VM if given), sorted.
    fn list_disks(&self, vm: Option<&str>) -> Result<Vec<DiskKey>, SinkError>;
    /// Where the store is, for logs and summaries, e.g. `local store /srv/vdrep`.
    fn describe(&self) -> String;
    /// Read-only access to a disk's recovery points that takes no lock or lease, so
    /// `points` and test failover never pause replication (DESIGN §1). An unknown disk is
    /// [`SinkError::NotFound`].
    fn point_reader(&self, key: &DiskKey) -> Result<Box<dyn PointReader>, SinkError>;
    /// Removes a disk entirely: replica, in-progress copy, recovery points, state (the
    /// state last, so a removal cut short still lists the disk and can be run again).
    /// Refused with [`SinkError::Locked`] while a receiver has the disk open: unprotecting
    /// is an operator action with replication stopped. An absent disk is not an error.
    fn remove_disk(&self, key: &DiskKey) -> Result<(), SinkError>;
    /// Records a job of `job.vm` beside its replicas, replacing the job with the same id
    /// (DESIGN §1: jobs live where the protection lives). At most
    /// [`crate::jobs::MAX_JOBS_PER_VM`] jobs are kept per VM, the newest.
    fn record_job(&self, job: &crate::jobs::Job) -> Result<(), SinkError> {
        let _ = job;
        Err(SinkError::NotSupported {
            store: self.describe(),
            what: "recording jobs",
        })
    }
    /// The jobs of one VM, or of every VM, oldest first within a VM.
    fn jobs(&self, vm: Option<&str>) -> Result<Vec<crate::jobs::Job>, SinkError> {
        let _ = vm;
        Err(SinkError::NotSupported {
            store: self.describe(),
            what: "listing jobs",
        })
    }
    /// Removes the jobs of a VM (unprotect). Absent is not an error.
    fn remove_jobs(&self, vm: &str) -> Result<(), SinkError> {
        let _ = vm;
        Ok(())
    }
    /// Free bytes for replicas, if the store can tell (enable protection's capacity check).
    fn available_bytes(&self) -> Result<Option<u64>, SinkError> {
        Ok(None)
    }
    /// Brings a store written by an earlier build to this build's format; the receiver
    /// calls it at start, before any disk is opened. Stores from before VM points get each
    /// VM's manifest with its [`vm_points::legacy_points`] (listed `"consistent": false`);
    /// the local store's `FORMAT` then moves on. Returns what was done, for the log (`None`:
    /// nothing to do). Readers (`points`, failover) need no upgrade: they list the same.
    fn upgrade(&self) -> Result<Option<String>, SinkError> {
        Ok(None)
    }
    /// The VM's recovery-point manifest ([`vm_points`]), `None` when none was written yet
    /// (a VM whose first VM-wide switch has not committed, or a store from before VM
    /// points). Read without any lock: the manifest is replaced whole. Use
    /// [`vm_points::list`], which also gives the points of stores without a manifest.
    fn vm_points(&self, vm: &str) -> Result<Option<vm_points::VmPoints>, SinkError> {
        let _ = vm;
        Err(SinkError::NotSupported {
            store: self.describe(),
            what: "VM recovery points",
        })
    }
    /// Changes the VM's manifest: `f` gets it (empty and `false` when none exists yet) and
    /// says whether it changed it; only then is it written, replacing the old one whole
    /// (local: `VM/points.tmp`, fsync, rename over `VM/points`, fsync `VM/`; Azure: the blob
    /// `VM/points` with `If-Match`), under the backend's exclusion of other writers. Callers
    /// use [`vm_points::commit`] and [`vm_points::remove_disk`].
    fn update_vm_points(
        &self,
        vm: &str,
        f: &mut dyn FnMut(&mut vm_points::VmPoints, bool) -> Result<bool, SinkError>,
    ) -> Result<(), SinkError> {
        let _ = (vm, f);
        Err(SinkError::NotSupported {
            store: self.describe(),
            what: "VM recovery points",
        })
    }
}

/// A read-only view of one disk's recovery points, consistent while a receiver commits and
/// prunes concurrently: every successful [`PointReader::read_point`] returns exactly the
/// bytes of that point (never a mix of two), or an error if the point was pruned meanwhile.
///
/// The view is pinned to the committed replica it was opened on: once a new full copy
/// (resynchronisation) replaces it, its points are gone and reads fail with
/// [`SinkError::NotFound`].
pub trait PointReader: Send + Sync {
    /// The disk.
    fn key(&self) -> &DiskKey;
    /// Size of the source disk in bytes (reads may reach its sector-rounded end).
    fn virtual_size(&self) -> u64;
    /// The current recovery points, oldest first (empty while nothing is committed).
    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError>;
    /// Reads `len` bytes at `offset` of the disk as it was at point `cycle`.
    fn read_point(&self, cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError>;
    /// Ranges of point `cycle` that may hold non-zero bytes, if the backend knows them
    /// cheaply (Azure's page ranges); `None` means "read everything". Outside them the
    /// point reads as zeros.
    fn allocated(&self, cycle: u64) -> Result<Option<RangeSet>, SinkError> {
        let _ = cycle;
        Ok(None)
    }
    /// Where the replica is, for messages.
    fn describe(&self) -> String;
}

/// Room a replica keeps for a write on its way ([`ReplicaDisk::room`]), given back when
/// dropped.
#[must_use = "the room is given back when dropped"]
pub struct Room<'a> {
    held: Option<(&'a dyn GiveRoom, usize)>,
}

/// What keeps [`Room`] for writes, and takes it back.
pub trait GiveRoom: Sync {
    /// `len` bytes of room are no longer needed.
    fn give_room(&self, len: usize);
}

impl<'a> Room<'a> {
    /// No room kept (a sink that writes through).
    pub fn none() -> Room<'static> {
        Room { held: None }
    }

    /// `len` bytes kept by `by`, given back to it on drop.
    pub fn held(by: &'a dyn GiveRoom, len: usize) -> Room<'a> {
        Room {
            held: Some((by, len)),
        }
    }

    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.held.map_or(0, |(_, n)| n)
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if let Some((by, len)) = self.held.take() {
            by.give_room(len);
        }
    }
}

/// One open replica. Dropping the last handle releases the disk for other receivers.
///
/// Reads and writes address the *working image*: the in-progress copy while an initial copy
/// runs, else the committed replica. [`ReplicaDisk::read_committed`] reads the committed one.
pub trait ReplicaDisk: Send + Sync {
    /// The disk's key.
    fn key(&self) -> &DiskKey;
    /// The durable state (a copy). A resuming sender trusts only `progress`: ranges outside
    /// it hold unspecified content (zeros, or data written since the last checkpoint), so it
    /// must write or clear them, never skip them as known-zero.
    fn state(&self) -> DiskState;
    /// Writes `data` at `offset` of the working image. Offset and length must be multiples of
    /// 512 and lie inside the disk, else [`SinkError::OutOfRange`] and nothing is written. On
    /// a committed replica with neither a copy in progress nor a cycle open it is an
    /// invalid-state error: it would change a recovery point ([`lifecycle::write_target`]).
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), SinkError>;
    /// [`ReplicaDisk::write`] of bytes held in several slices (a received frame's chunks).
    /// The default joins them; the local store writes them with one `pwritev`.
    fn write_parts(&self, offset: u64, data: crate::parts::Parts<'_>) -> Result<(), SinkError> {
        match data.slices() {
            [one] => self.write(offset, one),
            _ => self.write(offset, &data.to_vec()),
        }
    }
    /// Waits until the replica can take a write of `len` bytes without holding its writer
    /// back, and keeps that room until the [`Room`] is dropped. The receiver asks before it
    /// decompresses an extent: a sink that buffers writes and sends them on in the
    /// background (Azure) then has it wait with the compressed frame, not with the
    /// decompressed bytes as well. Sinks that write through (the local store) keep no room
    /// and return at once.
    fn room(&self, len: usize) -> Room<'_> {
        let _ = len;
        Room::none()
    }
    /// Zeroes `[offset, offset+len)` (punching a hole where the filesystem can); same checks
    /// as [`ReplicaDisk::write`].
    fn clear(&self, offset: u64, len: u64) -> Result<(), SinkError>;
    /// Makes every completed write durable (fdatasync), *then* atomically records `durable`
    /// as the progress of the ongoing initial copy or open cycle. Without either only the
    /// data is synced, and a non-empty `durable` is an invalid-state error.
    fn checkpoint(&self, durable: &RangeSet) -> Result<(), SinkError>;
    /// The periodic checkpoint: records as progress the part of `written` (completed
    /// writes) that is durable already, without waiting for writes still on their way, and
    /// returns true when that was all of it. Never claims a byte whose write is not
    /// durable. Sinks that make writes durable only by a sync (the local store) do a whole
    /// [`ReplicaDisk::checkpoint`]; the Azure sink keeps its Put Pages flowing.
    fn checkpoint_acknowledged(&self, written: &RangeSet) -> Result<bool, SinkError> {
        self.checkpoint(written).map(|()| true)
    }
    /// Publishes the ongoing initial copy as the committed replica (cycle 0): requires the
    /// recorded progress to cover the whole disk, syncs the data, writes the fixed-VHD
    /// footer, and durably switches the state. Afterwards the replica is a valid fixed VHD
    /// and `point` (cycle 0) is its first recovery point; older points are dropped.
    fn commit_initial(&self, point: &RecoveryPoint) -> Result<(), SinkError>;
    /// Reads `len` bytes of the working image at `offset` (same range checks as writes,
    /// except that any alignment is allowed).
    fn read(&self, offset: u64, len: usize) -> Result<Bytes, SinkError>;
    /// Reads the committed replica (for failover and verification), even while a new copy
    /// is in progress; an error if nothing is committed.
    fn read_committed(&self, offset: u64, len: usize) -> Result<Bytes, SinkError>;
    /// Starts a new full copy (generation + 1) with empty progress, beside the committed
    /// replica, which stays readable and unchanged until [`ReplicaDisk::commit_initial`].
    /// Any uncommitted copy is discarded.
    fn begin_initial(&self) -> Result<(), SinkError>;
    /// Opens delta cycle `cycle` (the committed cycle + 1, or the open one again after a
    /// restart): from now on `write`/`clear` belong to it, and `checkpoint` records its
    /// progress. Returns the ranges of this cycle already durable (a resent cycle skips
    /// them). The latest recovery point stays intact whatever happens until the commit.
    fn begin_cycle(&self, cycle: u64) -> Result<RangeSet, SinkError>;
    /// Commits the open cycle atomically as recovery point `point` (its `cycle` is the open
    /// one): after a crash the replica shows either the previous point or this one, never a
    /// mix. Committing an already committed cycle again (`0 < cycle <= committed`) is a
    /// no-op; a cycle that is not open is refused ([`lifecycle::commit_cycle`]).
    fn commit_cycle(&self, point: &RecoveryPoint) -> Result<(), SinkError>;
    /// The recovery points, oldest first.
    fn points(&self) -> Result<Vec<RecoveryPoint>, SinkError>;
    /// Drops the points committed before `older_than_unix`, never the newest; returns the
    /// cycles dropped.
    fn prune_points(&self, older_than_unix: u64) -> Result<Vec<u64>, SinkError>;
    /// Reads `len` bytes at `offset` of the disk as it was at recovery point `cycle`.
    fn read_point(&self, cycle: u64, offset: u64, len: usize) -> Result<Bytes, SinkError>;
    /// Where the replica is (file path, blob URL), for summaries.
    fn path_hint(&self) -> String;
    /// Where the receiver keeps this replica's durable resync index
    /// ([`crate::resync::index`]), or why the sink keeps none (the receiver then rehashes
    /// the working image at every resync).
    fn resync_index(&self) -> Result<Box<dyn crate::resync::index::IndexFile>, String> {
        Err("this sink keeps no resync index".into())
    }
}

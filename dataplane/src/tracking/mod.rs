//! Change tracking beside each disk, in [MS-HRL] logs.
//!
//! Files next to a disk `D` (so any writer on the host finds them):
//!
//! | file | what |
//! |---|---|
//! | `D.hrl` | the **active** log: writers append here (open, `EOLLocation` 0) |
//! | `D.NNNNNNNN.hrl` | a **closed** log of cycle N, waiting to be shipped; deleted once the receiver has committed cycle N |
//! | `D.hrl.lock` | the lock that makes an append atomic with respect to a log switch |
//! | `D.hrl.shipped` | the `UniqueId` of the last log whose cycle is committed (chain check) |
//! | `D.hrl.resync` | present when the disk needs a resync; holds the reason |
//! | `D.hrl.hashes` | block hashes of the disk, for the per-cycle digests ([`HashTable`]) |
//! | `D.NNNNNNNN.hrl.digest` | the disk digest at the switch that closed cycle N (hex) |
//! | `D.hrl.next.N` | the next log, prepared by the switch closing cycle N; present only while a switch runs or after one was killed |
//! | `D.hrl.switch` | the intent of a switch of a set of disks (the VM's): the VM, its cycle and all its disks; present from before the first rename until the old logs are closed ([`SwitchIntent`]) |
//!
//! The writer (a host agent, `vdrep log-write`, or a test) takes the lock
//! ([`Tracker::lock_for_write`]), writes the disk (where vdrep writes it), appends the same
//! bytes to the active log, and releases. The sender switches all disks of a VM at one
//! instant ([`switch_set`]): it prepares each next log chained by `PreviousUniqueId` and
//! writes the intents, takes every disk's lock in a fixed order, renames each active log to
//! its cycle's name and each prepared one to `D.hrl`, and releases; the old logs are closed
//! afterwards. A switch killed half-way is completed for all the set's disks by the next
//! tracked write or the next start ([`complete_interrupted`]). A switch therefore sees every
//! write either wholly before it or wholly after it, on every disk of the VM, and the disks
//! under the locks equal the replica's next recovery point. The locks are held for renames
//! and folder syncs only (milliseconds): the cycle's digest is computed after they are
//! released, from the closed log and the disk ([`switch_digest`]), so writers never wait
//! for hashing.

mod error;
mod hashes;
mod intent;
mod lock;
mod locked;
mod paths;
mod refresh;
mod switch;
pub mod test_hook;

use std::path::{Path, PathBuf};

use vdrep_proto::Guid;

use crate::hrl::{HrlLog, ReadOptions};

pub use error::TrackingError;
pub use hashes::{HashTable, HashTableError};
pub use intent::{IntentDisk, IntentVm, SwitchIntent};
pub use lock::LockGuard;
pub use locked::Locked;
pub use paths::LogPaths;
pub use refresh::{catch_up, switch_digest, SwitchDigest};
pub use switch::{
    complete_interrupted, switch_set, switch_set_with, SetSwitch, SwitchDisk, Switched,
};

/// The change logs of one disk.
#[derive(Debug, Clone)]
pub struct Tracker {
    paths: LogPaths,
    disk_size: u64,
}

impl Tracker {
    /// Tracking of the disk at `disk` with `disk_size` virtual bytes.
    pub fn new(disk: &Path, disk_size: u64) -> Self {
        Tracker {
            paths: LogPaths::new(disk),
            disk_size,
        }
    }

    /// The file names.
    pub fn paths(&self) -> &LogPaths {
        &self.paths
    }

    /// Takes the lock (blocking until the holder lets go).
    pub fn lock(&self) -> Result<Locked<'_>, TrackingError> {
        let guard = LockGuard::acquire(&self.paths.lock).map_err(|e| TrackingError::Io {
            path: self.paths.lock.clone(),
            op: "lock",
            source: e,
        })?;
        Ok(Locked {
            tracker: self,
            _guard: guard,
        })
    }

    /// Closed logs waiting to be shipped, oldest cycle first.
    pub fn pending(&self) -> Result<Vec<(u64, PathBuf)>, TrackingError> {
        self.paths.closed_logs().map_err(|e| TrackingError::Io {
            path: self.paths.active.clone(),
            op: "list closed logs",
            source: e,
        })
    }

    /// Whether tracking has started (an active log exists).
    pub fn is_active(&self) -> bool {
        self.paths.active.is_file()
    }

    /// Opens a closed log for shipping, checked against the disk size, its data checksums
    /// verified.
    pub fn open_closed(&self, path: &Path) -> Result<HrlLog, TrackingError> {
        self.open_closed_with(path, true)
    }

    /// Opens a closed log; `verify_data` reads all its data to check the `DataChecksum`s
    /// (the structure is always checked).
    pub fn open_closed_with(
        &self,
        path: &Path,
        verify_data: bool,
    ) -> Result<HrlLog, TrackingError> {
        Ok(HrlLog::open(
            path,
            &ReadOptions {
                disk_size: Some(self.disk_size),
                verify_data,
            },
        )?)
    }

    /// Records the digest of the disk at the switch that closed `cycle` (write, fsync,
    /// rename).
    pub fn record_digest(&self, cycle: u64, digest: [u8; 32]) -> Result<(), TrackingError> {
        write_small(
            &self.paths.digest(cycle),
            &format!("{}\n", hex::encode(digest)),
        )
    }

    /// Bytes held in logs (active and closed): DESIGN.md §1 marks a disk for resync when
    /// this reaches half the disk's size.
    pub fn log_bytes(&self) -> u64 {
        let mut n = std::fs::metadata(&self.paths.active)
            .map(|m| m.len())
            .unwrap_or(0);
        if let Ok(v) = self.pending() {
            for (_, p) in v {
                n += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            }
        }
        n
    }

    /// The id of the last log whose cycle the receiver committed (`None`: not recorded).
    pub fn shipped_id(&self) -> Option<Guid> {
        std::fs::read_to_string(&self.paths.shipped)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Records the last committed log's id durably (write, fsync, rename).
    pub fn set_shipped_id(&self, id: Guid) -> Result<(), TrackingError> {
        write_small(&self.paths.shipped, &format!("{id}\n"))
    }

    /// Marks the disk "resync required" with a reason; delta replication stops for it.
    pub fn mark_resync(&self, reason: &str) -> Result<(), TrackingError> {
        write_small(&self.paths.resync, &format!("{reason}\n"))
    }

    /// Clears the "resync required" mark (after the resync committed).
    pub fn clear_resync(&self) -> Result<(), TrackingError> {
        match std::fs::remove_file(&self.paths.resync) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TrackingError::Io {
                path: self.paths.resync.clone(),
                op: "remove resync mark",
                source: e,
            }),
        }
    }

    /// The reason a resync is required, if one is.
    pub fn resync_reason(&self) -> Option<String> {
        std::fs::read_to_string(&self.paths.resync)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The digest recorded at the switch that closed `cycle`, if any.
    pub fn cycle_digest(&self, cycle: u64) -> Option<[u8; 32]> {
        let s = std::fs::read_to_string(self.paths.digest(cycle)).ok()?;
        let v = hex::decode(s.trim()).ok()?;
        v.try_into().ok()
    }

    /// Deletes the closed log of a committed cycle.
    pub fn remove_shipped(&self, path: &Path) -> Result<(), TrackingError> {
        if let Some((c, _)) = self
            .pending()
            .ok()
            .and_then(|v| v.into_iter().find(|(_, p)| p == path))
        {
            let _ = std::fs::remove_file(self.paths.digest(c));
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TrackingError::Io {
                path: path.to_path_buf(),
                op: "remove shipped log",
                source: e,
            }),
        }
    }
}

fn write_small(path: &Path, text: &str) -> Result<(), TrackingError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |op, e| TrackingError::Io {
        path: path.to_path_buf(),
        op,
        source: e,
    };
    std::fs::write(&tmp, text).map_err(|e| io("write", e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
    Ok(())
}

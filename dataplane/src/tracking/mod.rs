//! Change tracking beside each disk, in [MS-HRL] logs.
//!
//! Files next to a disk `D` (so any writer on the host finds them):
//!
//! | file | what |
//! |---|---|
//! | `D.hrl` | the **active** log: writers append here (open, `EOLLocation` 0) |
//! | `D.NNNNNNNN.hrl` | a **closed** log of cycle N, waiting to be shipped; deleted once the receiver has committed cycle N |
//! | `D.hrl.lock` | the lock that makes an append atomic with respect to a log switch |
//!
//! The writer (a host agent, `vdrep log-write`, or a test) takes the lock, writes the disk
//! (where vdrep writes it), appends the same bytes to the active log, and releases. The sender
//! takes the same lock to switch: it closes the active log, renames it to its cycle's name and
//! starts the next one chained by `PreviousUniqueId`. A switch therefore sees every write
//! either wholly before it or wholly after it, and the disk under the lock equals the
//! replica's next recovery point.

mod lock;
mod paths;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use vdrep_proto::Guid;

use crate::hrl::{HrlError, HrlLog, HrlWriter, ReadOptions, WriterOptions};

pub use lock::LockGuard;
pub use paths::LogPaths;

/// Why tracking cannot go on; every variant says whether a resync is needed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackingError {
    /// A log is corrupt, torn or unreadable.
    #[error(transparent)]
    Log(#[from] HrlError),
    /// The lock or a rename failed.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The active log is missing while protection is on: writes may have gone unrecorded.
    #[error("{}: the active change log is missing: writes since the last switch are unknown; the disk needs a resync", path.display())]
    ActiveMissing {
        /// The expected active log.
        path: PathBuf,
    },
}

impl TrackingError {
    /// Whether the change history has a gap that only a resync can close.
    pub fn needs_resync(&self) -> bool {
        match self {
            TrackingError::Log(e) => !e.is_recoverable(),
            TrackingError::ActiveMissing { .. } => true,
            TrackingError::Io { .. } => false,
        }
    }
}

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

    /// Opens a closed log for shipping, checked against the disk size.
    pub fn open_closed(&self, path: &Path) -> Result<HrlLog, TrackingError> {
        Ok(HrlLog::open(
            path,
            &ReadOptions {
                disk_size: Some(self.disk_size),
                ..Default::default()
            },
        )?)
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

    /// Deletes the closed log of a committed cycle.
    pub fn remove_shipped(&self, path: &Path) -> Result<(), TrackingError> {
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

/// The tracker with its lock held: appends and switches.
pub struct Locked<'a> {
    tracker: &'a Tracker,
    _guard: LockGuard,
}

impl Locked<'_> {
    fn writer_options(&self, previous: Guid, now: SystemTime) -> WriterOptions {
        WriterOptions::new(
            crate::layout::random_guid(),
            previous,
            self.tracker.disk_size,
            now,
        )
    }

    /// Starts tracking if it has not started: an empty active log chained to `previous`
    /// (NIL for a new protection). Returns the active log's id.
    pub fn start(&self, previous: Guid, now: SystemTime) -> Result<Guid, TrackingError> {
        let p = &self.tracker.paths.active;
        if p.is_file() {
            let w = HrlWriter::reopen(p, Some(self.tracker.disk_size))?;
            return Ok(w.unique_id());
        }
        let w = HrlWriter::create(p, &self.writer_options(previous, now))?;
        Ok(w.unique_id())
    }

    /// Appends writes (disk offset, data), oldest first, to the active log.
    pub fn append(&self, writes: &[(u64, Bytes)], now: SystemTime) -> Result<(), TrackingError> {
        let p = &self.tracker.paths.active;
        if !p.is_file() {
            return Err(TrackingError::ActiveMissing { path: p.clone() });
        }
        let mut w = HrlWriter::reopen(p, Some(self.tracker.disk_size))?;
        w.append(writes, now)?;
        Ok(())
    }

    /// Closes the active log as cycle `cycle` and starts the next one chained to it.
    /// Returns the closed log's path and id.
    pub fn switch(&self, cycle: u64, now: SystemTime) -> Result<(PathBuf, Guid), TrackingError> {
        let paths = &self.tracker.paths;
        if !paths.active.is_file() {
            return Err(TrackingError::ActiveMissing {
                path: paths.active.clone(),
            });
        }
        let w = HrlWriter::reopen(&paths.active, Some(self.tracker.disk_size))?;
        let id = w.unique_id();
        w.close(now)?;
        let closed = paths.closed(cycle);
        let io = |op, e| TrackingError::Io {
            path: closed.clone(),
            op,
            source: e,
        };
        std::fs::rename(&paths.active, &closed).map_err(|e| io("rename closed log", e))?;
        // The next log exists before the lock is released: no write can go unrecorded.
        HrlWriter::create(&paths.active, &self.writer_options(id, now))?;
        paths.sync_dir().map_err(|e| io("sync folder", e))?;
        Ok((closed, id))
    }
}

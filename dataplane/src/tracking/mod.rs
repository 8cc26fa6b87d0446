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

mod hashes;
mod intent;
mod lock;
mod paths;
mod refresh;
mod switch;
pub mod test_hook;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use vdrep_proto::Guid;

use crate::error::{Classify, Recovery};
use crate::hrl::{HrlError, HrlLog, HrlWriter, ReadOptions, WriterOptions};

pub use hashes::{HashTable, HashTableError};
pub use intent::{IntentDisk, IntentVm, SwitchIntent};
pub use lock::LockGuard;
pub use paths::LogPaths;
pub use refresh::{catch_up, switch_digest, SwitchDigest};
pub use switch::{
    complete_interrupted, switch_set, switch_set_with, SetSwitch, SwitchDisk, Switched,
};

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
    /// The block-hash table failed (reading the disk or the table file).
    #[error(transparent)]
    Hashes(#[from] HashTableError),
    /// The block-hash table does not fit the logs beside the disk.
    #[error("{}: {problem}", path.display())]
    Table {
        /// The table or log concerned.
        path: PathBuf,
        /// What does not fit.
        problem: String,
    },
    /// A switch intent (`D.hrl.switch`) cannot be read: torn or corrupt. Its disks' logs
    /// are left as they are; writes to the disk are refused until an operator looks.
    #[error("{}: switch intent unusable: {problem}; a log switch of this disk's VM was interrupted and this file cannot say which disks it concerned: remove it and resynchronise the VM's disks (`vdrep send --resync`)", path.display())]
    Intent {
        /// The intent file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A set switch was asked for something it cannot do.
    #[error("log switch: {problem}")]
    Switch {
        /// What is wrong.
        problem: String,
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
            TrackingError::Log(e) => !e.is_transient(),
            TrackingError::ActiveMissing { .. } => true,
            TrackingError::Io { .. }
            | TrackingError::Hashes(_)
            | TrackingError::Table { .. }
            | TrackingError::Intent { .. }
            | TrackingError::Switch { .. } => false,
        }
    }
}

impl Classify for TrackingError {
    /// A log or table that failed transiently may be read again; a gap in the history, a
    /// table that does not fit, an unusable switch intent and a failed lock or rename need
    /// the resync or an operator.
    fn recovery(&self) -> Recovery {
        match self {
            TrackingError::Log(e) => e.recovery(),
            TrackingError::Hashes(e) => e.recovery(),
            TrackingError::Io { .. }
            | TrackingError::Table { .. }
            | TrackingError::Intent { .. }
            | TrackingError::Switch { .. }
            | TrackingError::ActiveMissing { .. } => Recovery::Permanent,
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

    /// The active log opened for appends; fails unless it exists and takes appends (not
    /// closed by a switch that was killed half-way, not damaged), so a writer can refuse
    /// before it touches the disk and then append through the same writer.
    pub fn active_writer(&self) -> Result<HrlWriter, TrackingError> {
        let p = &self.tracker.paths.active;
        if !p.is_file() {
            return Err(TrackingError::ActiveMissing { path: p.clone() });
        }
        Ok(HrlWriter::reopen(p, Some(self.tracker.disk_size))?)
    }

    /// Appends writes (disk offset, data), oldest first, to the active log.
    pub fn append(&self, writes: &[(u64, Bytes)], now: SystemTime) -> Result<(), TrackingError> {
        self.active_writer()?.append(writes, now)?;
        Ok(())
    }

    /// Starts a fresh chain for a resync: drops every closed log and the active one (the
    /// resync reads the disk as it is, which holds all they recorded) and starts an empty
    /// active log chained to nothing. Under the lock, so writes after it are all in the new
    /// log, and the cycles after the resync carry them.
    pub fn restart_chain(&self, now: SystemTime) -> Result<Guid, TrackingError> {
        let paths = &self.tracker.paths;
        for (_, p) in self.tracker.pending()? {
            self.tracker.remove_shipped(&p)?;
        }
        // The block-hash table was kept current by the dropped logs: recompute it later.
        let _ = std::fs::remove_file(&paths.hashes);
        match std::fs::remove_file(&paths.active) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(TrackingError::Io {
                    path: paths.active.clone(),
                    op: "remove active log",
                    source: e,
                })
            }
        }
        let w = HrlWriter::create(&paths.active, &self.writer_options(Guid::NIL, now))?;
        paths.sync_dir().map_err(|e| TrackingError::Io {
            path: paths.active.clone(),
            op: "sync folder",
            source: e,
        })?;
        Ok(w.unique_id())
    }

    /// Closes the active log as cycle `cycle` and starts the next one chained to it, for
    /// this one disk under a lock already held (tests and tools; the sender switches all
    /// of a VM's disks at one instant with [`switch_set`]). Returns the closed log's path
    /// and id.
    pub fn switch(&self, cycle: u64, now: SystemTime) -> Result<(PathBuf, Guid), TrackingError> {
        let paths = &self.tracker.paths;
        if !paths.active.is_file() {
            return Err(TrackingError::ActiveMissing {
                path: paths.active.clone(),
            });
        }
        let w = HrlWriter::reopen(&paths.active, Some(self.tracker.disk_size))?;
        let id = w.unique_id();
        let closed = paths.closed(cycle);
        let io = |op, e| TrackingError::Io {
            path: closed.clone(),
            op,
            source: e,
        };
        // The next log is complete before the active one is closed and moved, and takes its
        // place by a rename: killed anywhere here, `finish_switch` at the next start
        // completes the switch, and a writer in between finds no appendable log and fails
        // rather than write unrecorded.
        let next = paths.next(cycle);
        HrlWriter::create(&next, &self.writer_options(id, now))?;
        w.close(now)?;
        std::fs::rename(&paths.active, &closed).map_err(|e| io("rename closed log", e))?;
        std::fs::rename(&next, &paths.active).map_err(|e| io("rename next log", e))?;
        paths.sync_dir().map_err(|e| io("sync folder", e))?;
        Ok((closed, id))
    }

    /// Completes a single-disk switch that was killed half-way (the prepared `D.hrl.next.N`
    /// exists and the active log was closed or moved): the active log, if still in place,
    /// is moved as cycle N and the prepared log takes its place. A prepared log whose
    /// active log still takes appends was never switched to and is removed (a set switch
    /// renames nothing before its intent exists; completing one disk alone would split
    /// the set). Returns the cycle whose switch was completed. Call after
    /// [`complete_interrupted`] and before deciding whether tracking is active.
    pub fn finish_switch(&self, now: SystemTime) -> Result<Option<u64>, TrackingError> {
        let paths = &self.tracker.paths;
        if switch::drop_unstarted(self.tracker)? {
            return Ok(None);
        }
        let listed = paths.find_next().map_err(|e| TrackingError::Io {
            path: paths.active.clone(),
            op: "list prepared logs",
            source: e,
        })?;
        let Some((cycle, next)) = listed else {
            return Ok(None);
        };
        let closed = paths.closed(cycle);
        let io = |op, e| TrackingError::Io {
            path: next.clone(),
            op,
            source: e,
        };
        if paths.active.is_file() {
            // Killed before the active log moved: close it unless it already is (a log
            // that cannot be reopened is moved as it is; shipping judges it) and move it.
            if let Ok(w) = HrlWriter::reopen(&paths.active, Some(self.tracker.disk_size)) {
                w.close(now)?;
            }
            std::fs::rename(&paths.active, &closed).map_err(|e| io("rename closed log", e))?;
        }
        std::fs::rename(&next, &paths.active).map_err(|e| io("rename next log", e))?;
        paths.sync_dir().map_err(|e| io("sync folder", e))?;
        Ok(Some(cycle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 8 << 20;

    fn tracker(dir: &Path) -> Tracker {
        let disk = dir.join("d.raw");
        std::fs::write(&disk, vec![0u8; SIZE as usize]).unwrap();
        let t = Tracker::new(&disk, SIZE);
        t.lock()
            .unwrap()
            .start(Guid::NIL, crate::clock::system_time())
            .unwrap();
        t
    }

    fn write(t: &Tracker, off: u64) {
        t.lock()
            .unwrap()
            .append(
                &[(off, Bytes::from(vec![7u8; 512]))],
                crate::clock::system_time(),
            )
            .unwrap();
    }

    /// The states a single-disk switch passes through, as a kill -9 would leave them
    /// (a switch of a set also writes intents: `switch_tests.rs`). Killed after the next
    /// log was prepared but before the active one was closed (step 0), nothing was
    /// switched: the prepared log is dropped and the write stays in the active log (until
    /// issue 17 that disk alone was switched, which would split a VM's switch).
    #[test]
    fn a_switch_killed_at_any_step_is_completed_at_the_next_start_without_losing_a_write() {
        for step in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let t = tracker(dir.path());
            write(&t, 0);
            let p = t.paths().clone();
            let w = HrlWriter::reopen(&p.active, Some(SIZE)).unwrap();
            let id = w.unique_id();
            let l = t.lock().unwrap();
            HrlWriter::create(
                &p.next(5),
                &l.writer_options(id, crate::clock::system_time()),
            )
            .unwrap();
            if step >= 1 {
                w.close(crate::clock::system_time()).unwrap();
                // A writer now finds no appendable log and refuses before touching the disk.
                assert!(l.active_writer().is_err(), "step {step}");
            } else {
                drop(w);
            }
            if step >= 2 {
                std::fs::rename(&p.active, p.closed(5)).unwrap();
                assert!(!t.is_active());
            }
            drop(l);

            let l = t.lock().unwrap();
            if step == 0 {
                assert_eq!(l.finish_switch(crate::clock::system_time()).unwrap(), None);
                assert!(p.find_next().unwrap().is_none(), "prepared log dropped");
                drop(l);
                assert!(t.pending().unwrap().is_empty());
                let active =
                    crate::hrl::scan_valid_prefix(&p.active, &ReadOptions::default()).unwrap();
                assert_eq!(active.log.header().unique_id, id);
                assert_eq!(
                    active.log.entries().len(),
                    1,
                    "the write is in the active log"
                );
                continue;
            }
            assert_eq!(
                l.finish_switch(crate::clock::system_time()).unwrap(),
                Some(5),
                "step {step}"
            );
            assert_eq!(
                l.finish_switch(crate::clock::system_time()).unwrap(),
                None,
                "idempotent"
            );
            l.active_writer().unwrap();
            drop(l);
            let pending = t.pending().unwrap();
            assert_eq!(pending.len(), 1, "step {step}");
            let closed = t.open_closed(&pending[0].1).unwrap();
            assert_eq!(closed.header().unique_id, id);
            assert_eq!(
                coalesce_len(&closed),
                1,
                "step {step}: the write is in cycle 5"
            );
            let active = HrlWriter::reopen(&p.active, Some(SIZE)).unwrap();
            assert_ne!(active.unique_id(), id);
            write(&t, 4096);
            assert!(p.find_next().unwrap().is_none());
        }
    }

    fn coalesce_len(log: &HrlLog) -> usize {
        crate::hrl::coalesce_log(log).len()
    }

    #[test]
    fn a_prepared_log_is_chained_to_the_log_it_follows() {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path());
        let first = HrlWriter::reopen(&t.paths().active, Some(SIZE))
            .unwrap()
            .unique_id();
        let (closed, id) = t
            .lock()
            .unwrap()
            .switch(1, crate::clock::system_time())
            .unwrap();
        assert_eq!(id, first);
        assert_eq!(closed, t.paths().closed(1));
        // The active log is open (unclosed): its valid prefix holds the header.
        let prev = crate::hrl::scan_valid_prefix(
            &t.paths().active,
            &ReadOptions {
                disk_size: Some(SIZE),
                ..Default::default()
            },
        )
        .unwrap()
        .log
        .header()
        .previous_unique_id;
        assert_eq!(prev, first);
        assert!(t.paths().find_next().unwrap().is_none());
    }
}

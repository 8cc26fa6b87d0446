//! One disk's tracker with its lock held ([`Locked`]): what a writer and a single-disk switch
//! do under the lock — start the active log, append, restart the chain for a resync, switch
//! one disk and complete such a switch killed half-way. Apart from the tracker's files
//! (the parent module) and from the switch of a VM's set of disks at one instant
//! (`switch.rs`), which takes these locks in a fixed order.

use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use vdrep_proto::Guid;

use super::{switch, LockGuard, Tracker, TrackingError};
use crate::hrl::{HrlWriter, WriterOptions};

/// The tracker with its lock held: appends and switches.
pub struct Locked<'a> {
    pub(super) tracker: &'a Tracker,
    pub(super) _guard: LockGuard,
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
    /// of a VM's disks at one instant with [`switch_set`](super::switch_set)). Returns the
    /// closed log's path and id.
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
    /// [`complete_interrupted`](super::complete_interrupted) and before deciding whether
    /// tracking is active.
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
    use std::path::Path;

    use super::*;
    use crate::hrl::{HrlLog, ReadOptions};

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

//! An in-memory filesystem that models durability, for crash tests of the local store.
//!
//! Every file is an inode with its *current* content (what reads see) and its *durable*
//! content (what survives a crash), plus the list of writes since its last sync. Names live
//! in a current namespace and a durable one; a create, rename or unlink reaches the durable
//! namespace only when its directory is synced. [`SimFs::crash`] throws away what is not
//! durable — everything ([`Crash::DropVolatile`]), or a random subset of pending writes and
//! a random prefix of pending name changes ([`Crash::Random`]), since a real disk may have
//! persisted some of them — releases all locks and makes every open handle stale.
//!
//! [`SimFs::power_cut_after`] stops the machine after a given number of changing
//! operations, so a crash can be placed between any two filesystem calls of one store call.
//!
//! [`SimFs::fail_syncs`] makes the next data-file syncs fail with EIO as a failing disk does,
//! and models what Linux then does: the pages that could not be written are dropped (marked
//! clean, their bytes gone), so the file reads as of its last good sync and a later sync
//! succeeds without writing them. A store that retries a failed fdatasync and then trusts it
//! claims bytes that are not there (PostgreSQL's "fsyncgate").
//!
//! [`SimFs::hold_next_sync`] makes a file's next sync wait until the test releases it, so a
//! test can write, read or crash while a store call is inside its fdatasync; writes made
//! meanwhile stay pending (not durable) when the held sync completes.
//!
//! Simplifications (documented, deliberate): directories are durable when created; a single
//! write either persists whole or not at all at a crash (sector-atomic writes are not
//! modelled below the granularity of one call).
//!
//! Where each part lives: [`model`] is the data (sectors, inodes, pending changes),
//! [`store_fs`] the [`StoreFs`] calls and handles the store uses, [`hold`] the held sync;
//! this file holds the machine's state and the test's controls (crash, failing syncs,
//! power cut).

mod hold;
mod model;
mod store_fs;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{rngs::StdRng, Rng, SeedableRng};

pub use hold::SyncHold;
use model::{Inode, NsOp};

#[cfg(doc)]
use crate::sink::local::fs::{DataFile, StoreFs};

/// What a crash keeps of the non-durable changes.
#[derive(Debug, Clone, Copy)]
pub enum Crash {
    /// Only durable data and names survive.
    DropVolatile,
    /// Each pending write survives with probability 1/2; a random prefix of the pending name
    /// changes survives (metadata journals keep order).
    Random(u64),
}

#[derive(Debug, Default)]
struct State {
    epoch: u64,
    next_ino: u64,
    dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending_ns: Vec<NsOp>,
    inodes: HashMap<u64, Inode>,
    locks: BTreeSet<PathBuf>,
    /// Changing operations left before the simulated power cut (`None`: unlimited).
    budget: Option<u64>,
    /// Data-file syncs left to fail (see [`SimFs::fail_syncs`]).
    failing_syncs: u32,
    /// The next sync of these inodes waits (see [`SimFs::hold_next_sync`]).
    holds: HashMap<u64, SyncHold>,
    /// The next whole-file sync of these paths waits (see [`SimFs::hold_next_file_sync`]).
    file_holds: HashMap<PathBuf, SyncHold>,
}

impl State {
    /// A new empty inode named `path` (the name pending until its directory is synced).
    fn link(&mut self, path: &Path) -> u64 {
        self.next_ino += 1;
        let ino = self.next_ino;
        self.inodes.insert(ino, Inode::default());
        self.names.insert(path.to_path_buf(), ino);
        self.pending_ns.push(NsOp::Link(path.to_path_buf(), ino));
        ino
    }

    /// Counts one changing operation against the budget; once it is spent, the machine is
    /// "off": the operation fails and changes nothing.
    fn spend(&mut self) -> io::Result<()> {
        match &mut self.budget {
            Some(0) => Err(io::Error::other(
                "simulated power cut: the machine stopped before this operation",
            )),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The durability model (see the module docs). Cheap to clone: clones share the filesystem.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

/// A missing file's error, naming it.
fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", p.display()),
    )
}
/// A handle opened before the last crash.
fn stale() -> io::Error {
    io::Error::other("stale handle: the simulated machine crashed since it was opened")
}

impl SimFs {
    /// An empty filesystem.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulates a power cut (see [`Crash`]).
    pub fn crash(&self, how: Crash) {
        let mut st = self.lock();
        let mut rng = match how {
            Crash::DropVolatile => None,
            Crash::Random(seed) => Some(StdRng::seed_from_u64(seed)),
        };
        let keep_ns = match &mut rng {
            None => 0,
            Some(r) => r.gen_range(0..=st.pending_ns.len()),
        };
        let ops: Vec<NsOp> = st.pending_ns.drain(..).take(keep_ns).collect();
        let mut durable = std::mem::take(&mut st.durable_names);
        for op in &ops {
            op.apply(&mut durable);
        }
        st.names = durable.clone();
        st.durable_names = durable;
        let mut inos: Vec<u64> = st.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            if let Some(inode) = st.inodes.get_mut(&ino) {
                for op in std::mem::take(&mut inode.pending) {
                    if rng.as_mut().is_some_and(|r| r.gen_bool(0.5)) {
                        inode.durable.apply(&op);
                    }
                }
                inode.current = inode.durable.clone();
            }
        }
        let live: BTreeSet<u64> = st.names.values().copied().collect();
        st.inodes.retain(|ino, _| live.contains(ino));
        st.locks.clear();
        st.epoch += 1;
        st.budget = None;
    }

    /// Fails the next `n` data-file syncs ([`DataFile::sync_data`]) with EIO, dropping the
    /// writes each would have made durable (see the module docs).
    pub fn fail_syncs(&self, n: u32) {
        self.lock().failing_syncs = n;
    }

    /// Makes the next [`DataFile::sync_data`] of the file at `path` wait until the returned
    /// hold is released, as a slow disk's fdatasync does, so a test can act while it runs
    /// (writes made meanwhile are not made durable by it). A crash meanwhile makes the held
    /// sync fail as stale once released.
    pub fn hold_next_sync(&self, path: &Path) -> io::Result<SyncHold> {
        let mut st = self.lock();
        let ino = SimFs::ino(&st, path)?;
        let hold = SyncHold::default();
        st.holds.insert(ino, hold.clone());
        Ok(hold)
    }

    /// Makes the next [`StoreFs::sync_file`](crate::sink::local::fs::StoreFs::sync_file) of
    /// `path` wait until the returned hold is released: a small file's fsync (a disk's state
    /// record, written to a temporary name and synced before its rename), which a test may
    /// name before the file exists, since the store creates it just before syncing it.
    pub fn hold_next_file_sync(&self, path: &Path) -> SyncHold {
        let hold = SyncHold::default();
        self.lock()
            .file_holds
            .insert(path.to_path_buf(), hold.clone());
        hold
    }

    /// Lets only the next `ops` changing operations (writes, syncs, creates, renames,
    /// removals) happen; every later one fails without effect until [`SimFs::crash`]. With
    /// a crash afterwards this cuts the power at an exact point *inside* a store call.
    pub fn power_cut_after(&self, ops: u64) {
        self.lock().budget = Some(ops);
    }

    /// Lifts a [`SimFs::power_cut_after`] budget without a crash: the failed calls were
    /// transient errors (EIO, a full disk), and the store's own retry must now succeed.
    pub fn restore_power(&self) {
        self.lock().budget = None;
    }

    /// True once a [`SimFs::power_cut_after`] budget is spent.
    pub fn power_is_cut(&self) -> bool {
        self.lock().budget == Some(0)
    }

    /// The current bytes of a file (what a read sees now), for assertions.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let ino = st.names.get(path)?;
        let c = &st.inodes.get(ino)?.current;
        let mut v = vec![0u8; usize::try_from(c.len).ok()?];
        c.read(0, &mut v).ok()?;
        Some(v)
    }

    /// Overwrites bytes of a file in place and durably (to corrupt it on purpose).
    pub fn tamper(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = st.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        inode.current.write(offset, data);
        inode.durable.write(offset, data);
        Ok(())
    }

    fn ino(st: &State, path: &Path) -> io::Result<u64> {
        st.names.get(path).copied().ok_or_else(|| not_found(path))
    }
}

#[cfg(test)]
mod tests;

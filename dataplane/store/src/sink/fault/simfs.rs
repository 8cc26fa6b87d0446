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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::sink::local::fs::{DataFile, LockGuard, StoreFs};

/// What a crash keeps of the non-durable changes.
#[derive(Debug, Clone, Copy)]
pub enum Crash {
    /// Only durable data and names survive.
    DropVolatile,
    /// Each pending write survives with probability 1/2; a random prefix of the pending name
    /// changes survives (metadata journals keep order).
    Random(u64),
}

/// Sparse file content in 512-byte sectors; absent sectors read as zeros.
#[derive(Clone, Default, Debug)]
struct Content {
    len: u64,
    sectors: BTreeMap<u64, Box<[u8; 512]>>,
}

impl Content {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / 512;
            let within = (pos % 512) as usize;
            let n = rest.len().min(512 - within);
            let sec = self
                .sectors
                .entry(idx)
                .or_insert_with(|| Box::new([0; 512]));
            sec[within..within + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            pos += n as u64;
        }
        self.len = self.len.max(offset + data.len() as u64);
    }
    fn zero(&mut self, offset: u64, len: u64) {
        let end = (offset + len).min(self.len);
        let mut pos = offset;
        while pos < end {
            let idx = pos / 512;
            let within = pos % 512;
            let n = (end - pos).min(512 - within);
            if within == 0 && n == 512 {
                self.sectors.remove(&idx);
            } else if let Some(sec) = self.sectors.get_mut(&idx) {
                sec[within as usize..(within + n) as usize].fill(0);
            }
            pos += n;
        }
    }
    fn set_len(&mut self, len: u64) {
        self.zero(len, self.len.saturating_sub(len));
        let last = len.div_ceil(512);
        self.sectors.retain(|&i, _| i < last);
        self.len = len;
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = (pos % 512) as usize;
            let n = (buf.len() - done).min(512 - within);
            let out = &mut buf[done..done + n];
            match self.sectors.get(&(pos / 512)) {
                Some(s) => out.copy_from_slice(&s[within..within + n]),
                None => out.fill(0),
            }
            done += n;
        }
        Ok(())
    }
    fn apply(&mut self, op: &DataOp) {
        match op {
            DataOp::Write(o, d) => self.write(*o, d),
            DataOp::Zero(o, l) => self.zero(*o, *l),
            DataOp::SetLen(l) => self.set_len(*l),
        }
    }
}

#[derive(Debug, Clone)]
enum DataOp {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    current: Content,
    durable: Content,
    pending: Vec<DataOp>,
}

#[derive(Debug, Clone)]
enum NsOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl NsOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            NsOp::Link(p, _) | NsOp::Unlink(p) | NsOp::Rename(_, p) => p.parent(),
        }
    }
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            NsOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            NsOp::Unlink(p) => {
                names.remove(p);
            }
            NsOp::Rename(from, to) => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }
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
}

impl State {
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

/// A data-file sync held by [`SimFs::hold_next_sync`].
#[derive(Debug, Clone, Default)]
pub struct SyncHold {
    gate: Arc<(Mutex<HoldState>, Condvar)>,
}

#[derive(Debug, Default)]
struct HoldState {
    entered: bool,
    released: bool,
}

impl SyncHold {
    fn state(&self) -> MutexGuard<'_, HoldState> {
        self.gate.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for the held sync to start; true once it has.
    pub fn wait_entered(&self, timeout: Duration) -> bool {
        let g = self.state();
        let (g, _) = self
            .gate
            .1
            .wait_timeout_while(g, timeout, |s| !s.entered)
            .unwrap_or_else(|p| p.into_inner());
        g.entered
    }

    /// True while the held sync has started and not been released.
    pub fn is_waiting(&self) -> bool {
        let s = self.state();
        s.entered && !s.released
    }

    /// Lets the held sync finish.
    pub fn release(&self) {
        self.state().released = true;
        self.gate.1.notify_all();
    }

    fn enter_and_wait(&self) {
        let mut g = self.state();
        g.entered = true;
        self.gate.1.notify_all();
        while !g.released {
            g = self.gate.1.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The durability model (see the module docs). Cheap to clone: clones share the filesystem.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", p.display()),
    )
}
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

impl StoreFs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        for a in dir.ancestors() {
            st.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }
    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let st = self.lock();
        let Some(ino) = st.names.get(path) else {
            return Ok(None);
        };
        let c = &st.inodes.get(ino).ok_or_else(|| not_found(path))?.current;
        let mut v = vec![0u8; c.len as usize];
        c.read(0, &mut v)?;
        Ok(Some(v))
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        if !path.parent().is_some_and(|d| st.dirs.contains(d)) {
            return Err(not_found(path));
        }
        let ino = match st.names.get(path) {
            Some(i) => *i,
            None => {
                st.next_ino += 1;
                let ino = st.next_ino;
                st.inodes.insert(ino, Inode::default());
                st.names.insert(path.to_path_buf(), ino);
                st.pending_ns.push(NsOp::Link(path.to_path_buf(), ino));
                ino
            }
        };
        let inode = st.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        for op in [DataOp::SetLen(0), DataOp::Write(0, data.to_vec())] {
            inode.current.apply(&op);
            inode.pending.push(op);
        }
        Ok(())
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        let ino = SimFs::ino(&st, path)?;
        let inode = st.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        inode.durable = inode.current.clone();
        inode.pending.clear();
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        let ino = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), ino);
        st.pending_ns
            .push(NsOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        let pending = std::mem::take(&mut st.pending_ns);
        let (mine, rest): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|op| op.dir() == Some(dir));
        for op in &mine {
            op.apply(&mut st.durable_names);
        }
        st.pending_ns = rest;
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.spend()?;
        if st.names.remove(path).is_some() {
            st.pending_ns.push(NsOp::Unlink(path.to_path_buf()));
        }
        Ok(())
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.lock();
        Ok(st.names.contains_key(path) || st.dirs.contains(path))
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let name = |p: &PathBuf| {
            (p.parent() == Some(dir))
                .then(|| p.file_name().and_then(|n| n.to_str()).map(String::from))
                .flatten()
        };
        Ok(st
            .names
            .keys()
            .chain(st.dirs.iter())
            .filter_map(name)
            .collect())
    }
    fn open_data(&self, path: &Path, create_size: Option<u64>) -> io::Result<Arc<dyn DataFile>> {
        let mut st = self.lock();
        let ino = match (st.names.get(path).copied(), create_size) {
            (Some(ino), None) => ino,
            (None, None) => return Err(not_found(path)),
            (existing, Some(size)) => {
                st.spend()?;
                if !path.parent().is_some_and(|d| st.dirs.contains(d)) {
                    return Err(not_found(path));
                }
                let ino = match existing {
                    Some(i) => i,
                    None => {
                        st.next_ino += 1;
                        let i = st.next_ino;
                        st.inodes.insert(i, Inode::default());
                        st.names.insert(path.to_path_buf(), i);
                        st.pending_ns.push(NsOp::Link(path.to_path_buf(), i));
                        i
                    }
                };
                let inode = st.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
                for op in [DataOp::SetLen(0), DataOp::SetLen(size)] {
                    inode.current.apply(&op);
                    inode.pending.push(op);
                }
                ino
            }
        };
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            ino,
            epoch: st.epoch,
        }))
    }
    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let mut st = self.lock();
        if !st.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
            epoch: st.epoch,
        })))
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
    epoch: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self.fs.lock();
        if st.epoch == self.epoch {
            st.locks.remove(&self.path);
        }
    }
}

struct SimFile {
    fs: SimFs,
    ino: u64,
    epoch: u64,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut Inode) -> io::Result<T>) -> io::Result<T> {
        self.with_state(false, f)
    }
    /// Runs `f` on the inode; a changing call (`spend`) counts against the power budget.
    fn with_state<T>(
        &self,
        spend: bool,
        f: impl FnOnce(&mut Inode) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut st = self.fs.lock();
        if st.epoch != self.epoch {
            return Err(stale());
        }
        if spend {
            st.spend()?;
        }
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(stale)?;
        f(inode)
    }
    fn push(&self, op: DataOp) -> io::Result<()> {
        self.with_state(true, |i| {
            i.current.apply(&op);
            i.pending.push(op);
            Ok(())
        })
    }
}

impl DataFile for SimFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.push(DataOp::Write(offset, data.to_vec()))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with(|i| i.current.read(offset, buf))
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.push(DataOp::Zero(offset, len))
    }
    fn sync_data(&self) -> io::Result<()> {
        let (failing, hold, before) = {
            let mut st = self.fs.lock();
            let f = st.failing_syncs > 0;
            st.failing_syncs = st.failing_syncs.saturating_sub(1);
            let hold = st.holds.remove(&self.ino);
            let before = st.inodes.get(&self.ino).map_or(0, |i| i.pending.len());
            (f, hold, before)
        };
        if let Some(h) = hold {
            h.enter_and_wait();
        }
        self.with_state(true, |i| {
            if failing {
                // Writeback failed: the pages are dropped, as Linux does.
                i.current = i.durable.clone();
                i.pending.clear();
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            if before < i.pending.len() {
                // Written while the sync was held: a real fdatasync may or may not take
                // those along; the model never does, so nothing relies on it.
                for op in i.pending.drain(..before) {
                    i.durable.apply(&op);
                }
                return Ok(());
            }
            i.durable = i.current.clone();
            i.pending.clear();
            Ok(())
        })
    }
    fn size(&self) -> io::Result<u64> {
        self.with(|i| Ok(i.current.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_only_synced_data_and_synced_names() {
        let fs = SimFs::new();
        let d = Path::new("/d");
        fs.create_dir_all(d).unwrap();
        let f = fs.open_data(&d.join("a"), Some(1024)).unwrap();
        f.write_at(0, &[1; 512]).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(d).unwrap();
        f.write_at(512, &[2; 512]).unwrap(); // never synced
        fs.write_file(&d.join("b"), b"x").unwrap();
        fs.sync_file(&d.join("b")).unwrap(); // data synced, name not
        fs.crash(Crash::DropVolatile);
        assert!(f.write_at(0, &[3; 512]).is_err(), "old handles are stale");
        let bytes = fs.file_bytes(&d.join("a")).unwrap();
        assert_eq!(&bytes[..512], &[1; 512]);
        assert_eq!(&bytes[512..], &[0; 512]);
        assert!(!fs.exists(&d.join("b")).unwrap());
    }

    #[test]
    fn a_failed_sync_drops_the_unsynced_writes_and_the_next_sync_succeeds_without_them() {
        let fs = SimFs::new();
        let d = Path::new("/d");
        fs.create_dir_all(d).unwrap();
        let f = fs.open_data(&d.join("a"), Some(1024)).unwrap();
        f.write_at(0, &[1; 512]).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(d).unwrap();
        f.write_at(512, &[2; 512]).unwrap();
        fs.fail_syncs(1);
        let e = f.sync_data().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        f.sync_data().unwrap(); // "succeeds": nothing is left to write
        let mut b = [9u8; 1024];
        f.read_at(0, &mut b).unwrap();
        assert_eq!(&b[..512], &[1; 512]);
        assert_eq!(&b[512..], &[0; 512], "the failed pages are gone");
        fs.crash(Crash::DropVolatile);
        assert_eq!(fs.file_bytes(&d.join("a")).unwrap()[512..], [0; 512]);
    }
}

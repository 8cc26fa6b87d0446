//! The store's view of the simulated filesystem: the [`StoreFs`] calls, and the data-file
//! and lock handles they return. Each call changes the model of [`super::model`] under the
//! filesystem's lock and counts against the power budget; a handle from before a crash is
//! stale.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::model::{DataOp, Inode, NsOp};
use super::{not_found, stale, SimFs};
use crate::sink::local::fs::{DataFile, LockGuard, StoreFs};

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
            None => st.link(path),
        };
        let inode = st.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        for op in [DataOp::SetLen(0), DataOp::Write(0, data.to_vec())] {
            inode.change(op);
        }
        Ok(())
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let hold = self.lock().file_holds.remove(path);
        if let Some(h) = hold {
            h.enter_and_wait();
        }
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
                    None => st.link(path),
                };
                let inode = st.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
                for op in [DataOp::SetLen(0), DataOp::SetLen(size)] {
                    inode.change(op);
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

/// A store lock: released when dropped, unless a crash released every lock since.
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

/// An open data file of one inode, valid until the next crash.
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
            i.change(op);
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

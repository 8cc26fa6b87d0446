//! What the simulated filesystem holds: file content in sectors, each inode's current,
//! durable and pending data, and the pending name changes. Plain data with no locking and
//! no policy: *when* something becomes durable is [`super`]'s (syncs, crashes).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Sparse file content in 512-byte sectors; absent sectors read as zeros.
#[derive(Clone, Default, Debug)]
pub(super) struct Content {
    pub(super) len: u64,
    sectors: BTreeMap<u64, Box<[u8; 512]>>,
}

impl Content {
    pub(super) fn write(&mut self, offset: u64, data: &[u8]) {
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
    pub(super) fn zero(&mut self, offset: u64, len: u64) {
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
    pub(super) fn set_len(&mut self, len: u64) {
        self.zero(len, self.len.saturating_sub(len));
        let last = len.div_ceil(512);
        self.sectors.retain(|&i, _| i < last);
        self.len = len;
    }
    pub(super) fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
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
    pub(super) fn apply(&mut self, op: &DataOp) {
        match op {
            DataOp::Write(o, d) => self.write(*o, d),
            DataOp::Zero(o, l) => self.zero(*o, *l),
            DataOp::SetLen(l) => self.set_len(*l),
        }
    }
}

/// A change of a file's data, pending until a sync makes it durable.
#[derive(Debug, Clone)]
pub(super) enum DataOp {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    SetLen(u64),
}

/// A file: what reads see, what survives a crash, and the changes in between.
#[derive(Debug, Default)]
pub(super) struct Inode {
    pub(super) current: Content,
    pub(super) durable: Content,
    pub(super) pending: Vec<DataOp>,
}

impl Inode {
    /// Applies `op` to what reads see; it stays pending until a sync.
    pub(super) fn change(&mut self, op: DataOp) {
        self.current.apply(&op);
        self.pending.push(op);
    }
}

/// A change of the namespace, pending until its directory is synced.
#[derive(Debug, Clone)]
pub(super) enum NsOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl NsOp {
    pub(super) fn dir(&self) -> Option<&Path> {
        match self {
            NsOp::Link(p, _) | NsOp::Unlink(p) | NsOp::Rename(_, p) => p.parent(),
        }
    }
    pub(super) fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
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

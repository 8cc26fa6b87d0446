//! The two locks of an open disk and their order.
//!
//! `inner` (a read-write lock) guards the disk's state record and open images: a copy's
//! writes read it, a cycle's writes and every change of the record write it. `records` (a mutex)
//! serialises the changes of the record: whoever changes it holds `records` from reading
//! the record to publishing the new one, and takes it *before* `inner`.
//!
//! Why two: a checkpoint makes its new record durable with two fsyncs (the record, then its
//! folder), each a journal commit on ext4 — 50–120 ms on the bench machine's disk, at every
//! checkpoint (twice a second). Under `inner`'s write lock that stopped every write of the
//! copy for that long, about once a second on the bench's veth link
//! (`bench/results/ANALYSIS.md`, session 19). Holding only `records` (and `inner` for
//! reading) while it persists, a checkpoint lets the data path go on, and no other change
//! of the record can slip in between its read and its publication.

use std::ops::{Deref, DerefMut};
use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

use super::disk::{Inner, LocalDisk};

/// `inner` for writing, with `records` held: what every change of the record takes.
pub(super) struct WriteInner<'a> {
    inner: RwLockWriteGuard<'a, Inner>,
    // Released after `inner` (fields drop in order): the lock order is records, inner.
    _records: Records<'a>,
}

/// The record writers' lock, held alone while a checkpoint persists its record.
pub(super) struct Records<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

impl Deref for WriteInner<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl DerefMut for WriteInner<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl LocalDisk {
    /// `inner` for reading: the data path's writes, and a checkpoint's look at the record.
    pub(super) fn read_inner(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `records`, then `inner` for writing.
    pub(super) fn write_inner(&self) -> WriteInner<'_> {
        let records = self.records();
        self.write_inner_holding(records)
    }

    /// `records` alone (a checkpoint's persist): changes of the record wait, the data path
    /// does not.
    pub(super) fn records(&self) -> Records<'_> {
        Records(self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `inner` for writing, `records` already held.
    pub(super) fn write_inner_holding<'a>(&'a self, records: Records<'a>) -> WriteInner<'a> {
        WriteInner {
            inner: self.inner.write().unwrap_or_else(|p| p.into_inner()),
            _records: records,
        }
    }
}

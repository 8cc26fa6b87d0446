//! The write path of an [`AzureDisk`]: writes buffered into runs ([`super::coalesce`]) and
//! sent as Put Pages of up to 4 MiB by the disk's sender threads ([`super::pipe`]), a
//! bounded number in parallel; flushes wait for them, checkpoints do not.

use std::ops::Range;
use std::sync::{Condvar, Mutex};

use vdrep_proto::RangeSet;

use super::disk::AzureDisk;
use crate::sink::{Room, SinkError};

/// A counting semaphore bounding parallel requests the disk's callers make themselves
/// (Clear Pages, the footer): the buffered Put Pages are bounded by the sender threads.
pub(super) struct Permits {
    pub(super) free: Mutex<usize>,
    pub(super) cv: Condvar,
}

impl Permits {
    pub(super) fn take(&self) -> PermitGuard<'_> {
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *f == 0 {
            f = self.cv.wait(f).unwrap_or_else(|p| p.into_inner());
        }
        *f -= 1;
        PermitGuard(self)
    }
}

pub(super) struct PermitGuard<'a>(&'a Permits);
impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

impl AzureDisk {
    /// Fails if buffered data was lost earlier.
    pub(super) fn poison_check(&self) -> Result<(), SinkError> {
        self.pipe.poison_check()
    }

    /// Buffers a write and queues the runs it completes or evicts; waits while the senders
    /// have more than [`super::pipe::Pipe::taken_limit`] bytes queued or in flight. Fails
    /// with a background send's error not reported yet (the write is then not buffered:
    /// the sender resends it, and the failed run is retried by the next flush).
    pub(super) fn buffered_write(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.poison_check()?;
        if let Some(e) = self.pipe.take_failure() {
            return Err(e);
        }
        let mut c = self.pipe.lock();
        let runs = c.push(offset, data);
        self.pipe.queue(&mut c, runs);
        let limit = self.pipe.taken_limit();
        if c.taken_bytes() > limit {
            let t = crate::clock::std_now();
            while c.taken_bytes() > limit && !self.pipe.stopped() {
                c = self.pipe.wait(c);
            }
            self.pipe.stats.writer_waited(t.elapsed());
        }
        Ok(())
    }

    /// [`crate::sink::ReplicaDisk::room`]: waits while the runs queued or in flight, the
    /// room kept for other writes on their way and `len` would pass the writers'
    /// back-pressure limit ([`super::pipe::Pipe::taken_limit`]), unless no room is kept at
    /// all. The receiver decompresses an extent only once it has room: writers waiting for
    /// the Put Pages then hold compressed frames, not 4 MiB of decompressed bytes each
    /// (`bench/results/rss-azure-m-s16.md`).
    pub(super) fn keep_room(&self, len: usize) -> Room<'_> {
        let limit = self.pipe.taken_limit();
        let mut c = self.pipe.lock();
        while !c.may_reserve(len, limit) && !self.pipe.stopped() {
            c = self.pipe.wait(c);
        }
        c.reserve(len);
        Room::held(&*self.pipe, len)
    }

    /// Waits until no run taken before `id` and overlapping `r` is queued or in flight.
    fn wait_sent(&self, id: u64, r: &Range<u64>) {
        let mut c = self.pipe.lock();
        while c.busy_before(id, r) && !self.pipe.stopped() {
            c = self.pipe.wait(c);
        }
    }

    /// Makes every write that returned before this call durable: queues all pending runs
    /// and waits for them and those queued before. Fails if any send failed meanwhile (the
    /// run stays pending, or the disk is poisoned).
    pub(super) fn flush_all(&self) -> Result<(), SinkError> {
        self.flush(0..u64::MAX, true)
    }

    /// Like [`AzureDisk::flush_all`] for the writes overlapping `r` only (before a clear or
    /// a read).
    pub(super) fn flush_range(&self, r: Range<u64>) -> Result<(), SinkError> {
        self.flush(r, false)
    }

    fn flush(&self, r: Range<u64>, all: bool) -> Result<(), SinkError> {
        self.poison_check()?;
        let failures = self.pipe.failure_count();
        let id = {
            let mut c = self.pipe.lock();
            let runs = if all {
                c.take_all()
            } else {
                c.take_overlapping(r.clone())
            };
            self.pipe.queue(&mut c, runs);
            c.next_id()
        };
        let t = crate::clock::std_now();
        self.wait_sent(id, &r);
        if all {
            self.pipe.stats.flush_waited(t.elapsed());
            self.pipe.stats.taken(self.pipe.lock().take_counts());
        }
        self.pipe.failed_since(failures)?;
        self.poison_check()
    }

    /// An error if bytes of `durable` are still only buffered (a send of them failed since
    /// they were acknowledged): progress must not claim them.
    pub(super) fn none_pending_in(&self, durable: &RangeSet) -> Result<(), SinkError> {
        let c = self.pipe.lock();
        if let Some(r) = durable.iter().find(|r| c.pending_in(r.start..r.end)) {
            return Err(SinkError::Azure {
                url: self.c.url(&self.blob),
                op: "put page",
                offset: r.start,
                status: None,
                code: "BufferedWriteNotDurable".into(),
                problem: "buffered pages could not be written yet; retried at the next checkpoint"
                    .into(),
                recoverable: true,
            });
        }
        Ok(())
    }

    /// The part of `written` already on the blob, without waiting: runs not grown for a
    /// whole checkpoint interval are queued first (they are complete, or their neighbours
    /// are late), and bytes still pending, queued or in flight are left out. Fails if
    /// buffered data was lost, or with a send failure not reported yet.
    pub(super) fn acknowledged(&self, written: &RangeSet) -> Result<RangeSet, SinkError> {
        let unacked = {
            let mut c = self.pipe.lock();
            self.pipe.stats.taken(c.take_counts());
            self.pipe.stats.report(&self.blob, false);
            let stale = c.take_stale();
            self.pipe.queue(&mut c, stale);
            // Under the lock: a failed send is put back (or poisons) atomically with done.
            self.poison_check()?;
            c.unacknowledged()
        };
        if let Some(e) = self.pipe.take_failure() {
            return Err(e);
        }
        let mut acked = written.clone();
        for r in unacked.iter() {
            acked.remove(r.start, r.end);
        }
        Ok(acked)
    }

    /// Drops buffered writes (the copy they belong to is discarded) and waits for the runs
    /// in flight, so nothing lands on the blob after it is recreated.
    pub(super) fn discard_pending(&self) {
        let id = {
            let mut c = self.pipe.lock();
            let dropped = c.discard();
            if dropped > 0 {
                tracing::debug!(
                    bytes = dropped,
                    "buffered writes of a discarded copy dropped"
                );
            }
            c.next_id()
        };
        self.wait_sent(id, &(0..u64::MAX));
        self.pipe.unpoison();
        self.pipe.take_failure();
    }

    /// One Put Page (the page rules are enforced before sending).
    pub fn put_page_raw(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let _p = self.permits.take();
        self.pipe.target.put_page(&self.pipe.stats, offset, data)
    }
}

//! The write path of an [`AzureDisk`]: writes buffered into runs ([`super::coalesce`]) and
//! sent as Put Pages of up to 4 MiB, a bounded number in parallel.

use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::blob::{check_put_page, PutPageError, MAX_PUT_PAGE};
use super::coalesce::{Coalescer, Taken};
use super::disk::AzureDisk;
use super::points::unreachable_rule;
use super::rest_err;
use crate::layout::replica_file_size;
use crate::sink::SinkError;

/// A counting semaphore bounding parallel Put Pages on the blob.
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
    fn coalescer(&self) -> MutexGuard<'_, Coalescer> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails if buffered data was lost earlier.
    pub(super) fn poison_check(&self) -> Result<(), SinkError> {
        match &*self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(problem) => Err(SinkError::Azure {
                url: self.c.url(&self.blob),
                op: "put page",
                offset: 0,
                status: None,
                code: "BufferedWriteLost".into(),
                problem: problem.clone(),
                recoverable: true,
            }),
        }
    }

    /// Buffers a write; sends (in this thread) the runs it completes or evicts.
    pub(super) fn buffered_write(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.poison_check()?;
        let runs = self.coalescer().push(offset, data);
        self.send_runs(runs)
    }

    /// Sends taken runs in order, each once no older overlapping run is in flight. A
    /// failed run is put back for the next flush (or poisons the disk, see [`Coalescer`]);
    /// the first error is returned after all were tried.
    pub(super) fn send_runs(&self, runs: Vec<Taken>) -> Result<(), SinkError> {
        let mut first_err = None;
        for t in runs {
            {
                let mut c = self.coalescer();
                while !c.may_send(&t) {
                    c = self.sent.wait(c).unwrap_or_else(|p| p.into_inner());
                }
            }
            let r = self.put_pages(t.start, &t.data);
            let mut c = self.coalescer();
            c.done(t.id);
            if let Err(e) = r {
                let range = t.range();
                if !c.put_back(t) {
                    *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                        "buffered pages [{}, {}) could not be written ({e}) and newer writes \
                         overlap them: reopen the disk to resume from the last checkpoint",
                        range.start, range.end
                    ));
                }
                first_err.get_or_insert(e);
            }
            drop(c);
            self.sent.notify_all();
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Waits until no run taken before `id` and overlapping `r` is in flight.
    fn wait_sent(&self, id: u64, r: &Range<u64>) {
        let mut c = self.coalescer();
        while c.busy_before(id, r) {
            c = self.sent.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Makes every write that returned before this call durable: sends all pending runs
    /// and waits for those other threads are sending. Fails if any of it could not be
    /// written (it stays pending, or the disk is poisoned).
    pub(super) fn flush_all(&self) -> Result<(), SinkError> {
        self.poison_check()?;
        let (runs, id) = {
            let mut c = self.coalescer();
            let runs = c.take_all();
            (runs, c.next_id())
        };
        let sent = self.send_runs(runs);
        self.wait_sent(id, &(0..u64::MAX));
        sent?;
        self.poison_check()?;
        Ok(())
    }

    /// Like [`AzureDisk::flush_all`] for the writes overlapping `r` only (before a clear).
    pub(super) fn flush_range(&self, r: Range<u64>) -> Result<(), SinkError> {
        self.poison_check()?;
        let (runs, id) = {
            let mut c = self.coalescer();
            let runs = c.take_overlapping(r.clone());
            (runs, c.next_id())
        };
        let sent = self.send_runs(runs);
        self.wait_sent(id, &r);
        sent
    }

    /// An error if bytes of `durable` are still only buffered (a send of them failed since
    /// they were acknowledged): progress must not claim them.
    pub(super) fn none_pending_in(&self, durable: &vdrep_proto::RangeSet) -> Result<(), SinkError> {
        let c = self.coalescer();
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

    /// Drops buffered writes (the copy they belong to is discarded) and waits for the runs
    /// in flight, so nothing lands on the blob after it is recreated.
    pub(super) fn discard_pending(&self) {
        let id = {
            let mut c = self.coalescer();
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
        *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Writes `data` at `offset` as Put Pages of at most 4 MiB, bounded in parallel.
    fn put_pages(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        for (i, chunk) in data.chunks(MAX_PUT_PAGE).enumerate() {
            let at = offset + (i * MAX_PUT_PAGE) as u64;
            self.put_page_raw(at, chunk)?;
        }
        Ok(())
    }

    /// One Put Page (the page rules are enforced before sending).
    pub fn put_page_raw(&self, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        if let Err(r) = check_put_page(offset, data.len()) {
            return Err(SinkError::OutOfRange {
                path: self.url(),
                op: "put page",
                offset: r.offset,
                len: r.len,
                size: replica_file_size(self.lock().st.disk.virtual_size),
                problem: r.problem,
            });
        }
        self.lease_check()?;
        let _p = self.permits.take();
        self.leased(|| {
            self.c
                .put_page(&self.blob, offset, data, Some(&self.lease))
                .map_err(|e| match e {
                    PutPageError::Rest(e) => e,
                    PutPageError::Rule(r) => unreachable_rule(r),
                })
        })
        .map_err(rest_err)
    }
}

//! The sender threads of a disk: they take the runs queued in the disk's [`Coalescer`] and
//! send them as Put Pages, up to `max_parallel` at once, so that the receiver's writes (one
//! at a time per disk, see `receiver::disk`) return once buffered instead of waiting for
//! the service. Without them one Put Page was in flight per disk, two during a checkpoint,
//! and Azurite or Azure sat idle between them (`bench/results/azure.md`).
//!
//! A failed send (after [`super::rest::Client::send`]'s own retries) is put back as pending
//! when nothing newer overlaps it, else the disk is poisoned; either way the error is kept
//! for the next write or flush to report ([`Pipe::take_failure`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::blob::{check_put_page, Container, PutPageError};
use super::coalesce::{Coalescer, Taken};
use super::points::{reacquire_if_expired, unreachable_rule};
use super::rest::RestError;
use super::rest_err;
use super::stats::PutStats;
use crate::layout::replica_file_size;
use crate::sink::SinkError;

/// Where Put Pages go, under which lease.
pub(super) struct Target {
    pub(super) c: Arc<Container>,
    pub(super) blob: String,
    pub(super) lease: String,
    pub(super) lease_secs: u32,
    pub(super) lease_lost: Arc<AtomicBool>,
    pub(super) virtual_size: u64,
}

/// Runs `f`; if the service says our lease *expired* with nobody else holding one (the
/// service was unreachable for longer than the lease), re-acquires the same lease id and
/// runs `f` again. A lease someone else holds is never taken over (409 → fenced); a
/// successor that came and went is caught by the state blob's ETag at the next write.
/// Several sender threads may meet the expiry at once: one re-acquires, the others find
/// the lease taken; `f` is retried by all of them, and carrying our lease id it succeeds
/// only if the lease is ours again.
pub(super) fn leased<T>(
    c: &Container,
    blob: &str,
    lease: &str,
    lease_secs: u32,
    lease_lost: &AtomicBool,
    f: impl Fn() -> Result<T, RestError>,
) -> Result<T, RestError> {
    match f() {
        Err(e) if e.status == Some(412) && e.code == "LeaseNotPresentWithBlobOperation" => {
            let reacquired = reacquire_if_expired(c, blob, lease, lease_secs).is_ok();
            let r = f();
            if r.is_ok() {
                lease_lost.store(false, Ordering::Relaxed);
            } else if !reacquired {
                return Err(e);
            }
            r
        }
        r => r,
    }
}

impl Target {
    fn url(&self) -> String {
        self.c.url(&self.blob)
    }

    /// An error if the renewer found the lease lost.
    pub(super) fn lease_check(&self) -> Result<(), SinkError> {
        if self.lease_lost.load(Ordering::Relaxed) {
            return Err(SinkError::Azure {
                url: self.url(),
                op: "renew lease",
                offset: 0,
                status: Some(412),
                code: "LeaseLost".into(),
                problem: "the lease on the blob could not be renewed".into(),
                recoverable: true,
            });
        }
        Ok(())
    }

    /// One Put Page (the page rules are enforced before sending).
    pub(super) fn put_page(
        &self,
        stats: &PutStats,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SinkError> {
        if let Err(r) = check_put_page(offset, data.len()) {
            return Err(SinkError::OutOfRange {
                path: self.url().into(),
                op: "put page",
                offset: r.offset,
                len: r.len,
                size: replica_file_size(self.virtual_size),
                problem: r.problem,
            });
        }
        self.lease_check()?;
        stats.put_started();
        let r = leased(
            &self.c,
            &self.blob,
            &self.lease,
            self.lease_secs,
            &self.lease_lost,
            || {
                self.c
                    .put_page(&self.blob, offset, data, Some(&self.lease))
                    .map_err(|e| match e {
                        PutPageError::Rest(e) => e,
                        PutPageError::Rule(r) => unreachable_rule(r),
                    })
            },
        );
        stats.put_ended(data.len());
        r.map_err(rest_err)
    }
}

impl crate::sink::GiveRoom for Pipe {
    fn give_room(&self, len: usize) {
        self.lock().unreserve(len);
        self.cv.notify_all();
    }
}

/// Failures of background sends.
#[derive(Default)]
struct Failures {
    /// How many sends failed so far.
    count: u64,
    /// The latest failure not yet reported to a caller.
    latest: Option<SinkError>,
}

/// What a disk shares with its sender threads.
pub(super) struct Pipe {
    pub(super) target: Target,
    pending: Mutex<Coalescer>,
    /// Signalled when a run is queued or done, and at shutdown.
    cv: Condvar,
    /// Set when buffered data was lost (a failed send that could not be put back): every
    /// later operation fails until the disk is reopened, which resumes from the last
    /// recorded progress.
    poisoned: Mutex<Option<String>>,
    failures: Mutex<Failures>,
    pub(super) stats: PutStats,
    max_parallel: usize,
    stop: AtomicBool,
    /// Sender threads running (they start with the first write).
    running: AtomicUsize,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Pipe {
    pub(super) fn new(target: Target, max_parallel: usize, max_pending: usize) -> Arc<Pipe> {
        Arc::new(Pipe {
            target,
            pending: Mutex::new(Coalescer::new(max_pending)),
            cv: Condvar::new(),
            poisoned: Mutex::new(None),
            failures: Mutex::new(Failures::default()),
            stats: PutStats::new(),
            max_parallel: max_parallel.max(1),
            stop: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Coalescer> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on the pipe's condition variable.
    pub(super) fn wait<'a>(&self, g: MutexGuard<'a, Coalescer>) -> MutexGuard<'a, Coalescer> {
        self.cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes queued or in flight beyond which writers wait: every sender busy with a full
    /// page and one more ready (a longer queue only delays the writers' wake-up).
    pub(super) fn taken_limit(&self) -> usize {
        (self.max_parallel + 1) * super::blob::MAX_PUT_PAGE
    }

    /// Queues taken runs and wakes the senders (starting them at the first call).
    pub(super) fn queue(self: &Arc<Self>, c: &mut Coalescer, runs: Vec<Taken>) {
        if runs.is_empty() {
            return;
        }
        c.queue(runs);
        self.start();
        self.cv.notify_all();
    }

    fn start(self: &Arc<Self>) {
        let mut w = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if !w.is_empty() || self.stop.load(Ordering::Acquire) {
            return;
        }
        for i in 0..self.max_parallel {
            let me = self.clone();
            self.running.fetch_add(1, Ordering::AcqRel);
            match std::thread::Builder::new()
                .name(format!("vdrep-put-{i}"))
                .spawn(move || me.worker())
            {
                Ok(h) => w.push(h),
                Err(e) => {
                    self.running.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(error = %e, "cannot start a Put Page sender thread");
                }
            }
        }
        if w.is_empty() {
            // No thread at all: fail rather than hang the writers and flushes.
            self.poison("no sender thread could be started".into());
            self.stop.store(true, Ordering::Release);
        }
    }

    fn worker(self: Arc<Self>) {
        loop {
            let t = {
                let mut c = self.lock();
                loop {
                    if self.stop.load(Ordering::Acquire) {
                        self.running.fetch_sub(1, Ordering::AcqRel);
                        drop(c);
                        self.cv.notify_all();
                        return;
                    }
                    if let Some(t) = c.next_to_send() {
                        break t;
                    }
                    c = self.wait(c);
                }
            };
            let r = self.put_run(&t);
            let mut c = self.lock();
            c.done(t.id);
            if let Err(e) = r {
                self.failed(&mut c, t, e);
            }
            drop(c);
            self.cv.notify_all();
        }
    }

    /// Sends a run as Put Pages of at most 4 MiB.
    fn put_run(&self, t: &Taken) -> Result<(), SinkError> {
        for (i, chunk) in t.data.chunks(super::blob::MAX_PUT_PAGE).enumerate() {
            let at = t.start + (i * super::blob::MAX_PUT_PAGE) as u64;
            self.target.put_page(&self.stats, at, chunk)?;
        }
        Ok(())
    }

    /// A send failed: the run goes back to pending, or the disk is poisoned.
    fn failed(&self, c: &mut Coalescer, t: Taken, e: SinkError) {
        let range = t.range();
        tracing::debug!(start = range.start, end = range.end, error = %e, "Put Page failed");
        if !c.put_back(t) {
            self.poison(format!(
                "buffered pages [{}, {}) could not be written ({e}) and newer writes overlap \
                 them: reopen the disk to resume from the last checkpoint",
                range.start, range.end
            ));
        }
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.count += 1;
        f.latest = Some(e);
    }

    fn poison(&self, problem: String) {
        *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
    }

    /// Forgets a poisoning (the buffered data it concerned was discarded).
    pub(super) fn unpoison(&self) {
        *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Fails if buffered data was lost earlier.
    pub(super) fn poison_check(&self) -> Result<(), SinkError> {
        match &*self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(problem) => Err(SinkError::Azure {
                url: self.target.url(),
                op: "put page",
                offset: 0,
                status: None,
                code: "BufferedWriteLost".into(),
                problem: problem.clone(),
                recoverable: true,
            }),
        }
    }

    /// How many sends failed so far.
    pub(super) fn failure_count(&self) -> u64 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count
    }

    /// The latest failure not yet reported, if any (reported once).
    pub(super) fn take_failure(&self) -> Option<SinkError> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latest
            .take()
    }

    /// The error for sends that failed since `count` was read: the latest failure, or a
    /// generic one if another caller reported it already.
    pub(super) fn failed_since(&self, count: u64) -> Result<(), SinkError> {
        if self.failure_count() == count {
            return Ok(());
        }
        Err(self.take_failure().unwrap_or_else(|| SinkError::Azure {
            url: self.target.url(),
            op: "put page",
            offset: 0,
            status: None,
            code: "BufferedWriteNotDurable".into(),
            problem: "buffered pages could not be written yet; retried at the next flush".into(),
            recoverable: true,
        }))
    }

    /// True once the senders stop (or could not start): nobody waits for them then.
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Stops the sender threads: each finishes the Put Page it is sending (waited for up
    /// to `grace`), queued runs are dropped (progress never claimed them).
    pub(super) fn shutdown(&self, grace: Duration) {
        self.stop.store(true, Ordering::Release);
        self.cv.notify_all();
        let deadline = crate::clock::std_now() + grace;
        let mut c = self.lock();
        while self.running.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(crate::clock::std_now());
            if left.is_zero() {
                tracing::warn!(blob = %self.target.blob,
                    "Put Page senders still busy at close; they end on their own");
                return;
            }
            c = self
                .cv
                .wait_timeout(c, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(c);
        for h in self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = h.join();
        }
    }
}

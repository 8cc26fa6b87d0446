//! A [`ReadAt`] wrapper that fails or corrupts chosen reads, so the disk readers' error paths
//! are tested on purpose: an EIO in the middle of a VHD block, a corrupt BAT, a read that hits
//! a transient EINTR.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::ReadAt;
use vdrep_proto::RangeSet;

/// What a matching read gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The read fails with this OS error number (e.g. `libc::EIO`); `buf` is left untouched.
    Errno(i32),
    /// The read succeeds but the bytes inside the rule's range come back bit-inverted.
    Corrupt,
}

#[derive(Debug, Clone)]
enum When {
    /// The n-th read call (0-based, counting every call on this wrapper).
    Nth(u64),
    /// Any read overlapping `[start, end)` of the file.
    Overlaps(Range<u64>),
}

#[derive(Debug, Clone)]
struct Rule {
    when: When,
    fault: Fault,
    /// How many more times the rule fires; `None` = always.
    remaining: Option<u32>,
}

/// Wraps `R` and injects faults by rule. Rules are checked in the order they were added; the
/// first that matches and still has firings left decides.
#[derive(Debug)]
pub struct FaultyReadAt<R> {
    inner: R,
    rules: Mutex<Vec<Rule>>,
    reads: AtomicU64,
    injected: AtomicU64,
}

impl<R: ReadAt> FaultyReadAt<R> {
    /// Wraps `inner` with no rules: reads pass through.
    pub fn new(inner: R) -> Self {
        FaultyReadAt {
            inner,
            rules: Mutex::new(Vec::new()),
            reads: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    fn rule(self, when: When, fault: Fault, remaining: Option<u32>) -> Self {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Rule {
                when,
                fault,
                remaining,
            });
        self
    }

    /// The `n`-th read call (0-based) fails with `errno`.
    pub fn fail_nth_read(self, n: u64, errno: i32) -> Self {
        self.rule(When::Nth(n), Fault::Errno(errno), Some(1))
    }

    /// Reads overlapping `range` fail with `errno`, the first `times` of them (`None`: all).
    pub fn fail_reads_overlapping(self, range: Range<u64>, errno: i32, times: Option<u32>) -> Self {
        self.rule(When::Overlaps(range), Fault::Errno(errno), times)
    }

    /// Bytes of `range` come back bit-inverted in every read that covers them.
    pub fn corrupt_range(self, range: Range<u64>) -> Self {
        self.rule(When::Overlaps(range), Fault::Corrupt, None)
    }

    /// Read calls so far, faulty or not.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// The rule that fires for this read, consuming one firing.
    fn fire(&self, n: u64, start: u64, end: u64) -> Option<(Fault, Range<u64>)> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        for rule in rules.iter_mut() {
            let range = match &rule.when {
                When::Nth(k) if *k == n => start..end,
                When::Overlaps(r) if r.start < end && start < r.end && start < end => r.clone(),
                _ => continue,
            };
            match &mut rule.remaining {
                Some(0) => continue,
                Some(left) => *left -= 1,
                None => {}
            }
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Some((rule.fault, range));
        }
        None
    }
}

impl<R: ReadAt> ReadAt for FaultyReadAt<R> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        let end = offset.saturating_add(buf.len() as u64);
        match self.fire(n, offset, end) {
            Some((Fault::Errno(e), _)) => Err(io::Error::from_raw_os_error(e)),
            Some((Fault::Corrupt, range)) => {
                self.inner.read_exact_at(buf, offset)?;
                let from = range.start.max(offset) - offset;
                let to = range.end.min(end) - offset;
                for b in &mut buf[from as usize..to as usize] {
                    *b = !*b;
                }
                Ok(())
            }
            None => self.inner.read_exact_at(buf, offset),
        }
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn data_ranges(&self, start: u64, end: u64) -> io::Result<RangeSet> {
        self.inner.data_ranges(start, end)
    }
    fn backend(&self) -> &'static str {
        "fault"
    }
}

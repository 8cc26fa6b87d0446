//! Coalescing of received extents into Put Pages of up to 4 MiB, and the queue of runs
//! waiting for a sender thread.
//!
//! The receiver gets extents of up to 4 MiB, often smaller (zero runs are skipped at 1 MiB
//! granularity), and one Put Page per extent costs requests (Azure's target is ~500
//! requests/s per page blob). A write is therefore buffered in a *run* of adjacent bytes
//! and taken out for sending when the run reaches 4 MiB, when the memory bound evicts the
//! stalest run, when a periodic checkpoint finds it untouched for a whole interval
//! ([`Coalescer::take_stale`]: the extents that would have grown it came already, on
//! whichever stream), or when a flush needs it durable. Extents of one run often arrive
//! out of order on different streams; the pending runs are the reorder window: a run that
//! meets the next one is joined to it, filling whole 4 MiB pages. Nothing here does IO:
//! taken runs are [`queue`](Coalescer::queue)d and the disk's sender threads take them
//! with [`Coalescer::next_to_send`].
//!
//! Order: two sends of overlapping bytes must reach the service in the order the writes
//! arrived. Runs never overlap one another; a write overlapping a pending run first takes
//! that run out (to be sent before); and every taken run has an increasing id, a run being
//! sent only once no overlapping run with a smaller id is still queued or in flight
//! ([`Coalescer::may_send`]).
//!
//! Durability: `write` returning means *buffered*, like a write into the page cache of the
//! local store. Progress may claim only bytes that no pending, queued or in-flight run
//! covers ([`Coalescer::unacknowledged`]); the commits flush everything before they
//! snapshot. A failed send is put back (pending again) when nothing newer overlaps it, so
//! a later flush retries it; otherwise the disk is poisoned (errors until reopened, which
//! resumes from the last recorded progress).

use std::collections::BTreeMap;
use std::ops::Range;

use vdrep_proto::RangeSet;

use super::blob::MAX_PUT_PAGE;

/// A run taken out for sending.
#[derive(Debug)]
pub struct Taken {
    /// Send order among overlapping runs.
    pub id: u64,
    /// Blob offset.
    pub start: u64,
    /// The bytes (512-aligned length, ≤ 4 MiB).
    pub data: Vec<u8>,
}

impl Taken {
    /// The byte range.
    pub fn range(&self) -> Range<u64> {
        self.start..self.start + self.data.len() as u64
    }
}

struct Run {
    data: Vec<u8>,
    /// Last time (push count) the run grew: eviction takes the stalest.
    touched: u64,
    /// [`Coalescer::take_stale`] calls before the run last grew.
    tick: u64,
}

/// A run untouched while this many writes went elsewhere is complete: neighbouring extents
/// reach the receiver up to ~170 writes apart (the streams each carry every Nth extent;
/// measured in the bench). Under a steady flow the memory bound sends runs sooner.
pub const STALE_WRITES: u64 = 256;
/// ... or untouched for this many [`Coalescer::take_stale`] calls (checkpoints), for the
/// last runs of a slow or idle stream.
pub const STALE_TICKS: u64 = 4;

/// Why runs were taken out, counted for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The run reached 4 MiB.
    Full = 0,
    /// The memory bound took the stalest run.
    Evicted = 1,
    /// The run stopped growing ([`Coalescer::take_stale`]).
    Stale = 2,
    /// A flush, an overlapping write or a read needed it.
    Flushed = 3,
}

/// Pending runs of one disk and the runs in flight.
pub struct Coalescer {
    runs: BTreeMap<u64, Run>,
    bytes: usize,
    limit: usize,
    clock: u64,
    next_id: u64,
    /// Every taken run not yet done (queued or being sent), by id.
    in_flight: BTreeMap<u64, Range<u64>>,
    /// Bytes of the runs in `in_flight`.
    taken_bytes: usize,
    /// Taken runs waiting for a sender, by id.
    queued: BTreeMap<u64, Taken>,
    /// [`Coalescer::take_stale`] calls so far.
    ticks: u64,
    /// Runs taken, by [`Why`], since [`Coalescer::take_counts`].
    counts: [u64; 4],
    /// Bytes of room kept for writes on their way ([`Coalescer::may_reserve`]).
    reserved: usize,
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl Coalescer {
    /// At most `limit` bytes pending (at least one full run).
    pub fn new(limit: usize) -> Coalescer {
        Coalescer {
            runs: BTreeMap::new(),
            bytes: 0,
            limit: limit.max(MAX_PUT_PAGE),
            clock: 0,
            next_id: 0,
            in_flight: BTreeMap::new(),
            taken_bytes: 0,
            queued: BTreeMap::new(),
            ticks: 0,
            counts: [0; 4],
            reserved: 0,
        }
    }

    /// Bytes pending (not yet taken).
    #[cfg(test)]
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    fn take(&mut self, start: u64, why: Why) -> Option<Taken> {
        let run = self.runs.remove(&start)?;
        self.counts[why as usize] += 1;
        self.bytes -= run.data.len();
        let id = self.next_id;
        self.next_id += 1;
        let t = Taken {
            id,
            start,
            data: run.data,
        };
        self.in_flight.insert(id, t.range());
        self.taken_bytes += t.data.len();
        Some(t)
    }

    /// Takes the pending runs overlapping `r`, in offset order.
    pub fn take_overlapping(&mut self, r: Range<u64>) -> Vec<Taken> {
        let starts: Vec<u64> = self
            .runs
            .range(..r.end)
            .filter(|(s, run)| **s + run.data.len() as u64 > r.start)
            .map(|(s, _)| *s)
            .collect();
        starts
            .into_iter()
            .filter_map(|s| self.take(s, Why::Flushed))
            .collect()
    }

    /// Takes every pending run.
    pub fn take_all(&mut self) -> Vec<Taken> {
        let starts: Vec<u64> = self.runs.keys().copied().collect();
        starts
            .into_iter()
            .filter_map(|s| self.take(s, Why::Flushed))
            .collect()
    }

    /// Drops every pending and queued run (a discarded copy); returns the bytes dropped.
    /// Runs being sent are not affected.
    pub fn discard(&mut self) -> usize {
        self.runs.clear();
        let mut dropped = std::mem::take(&mut self.bytes);
        for (id, t) in std::mem::take(&mut self.queued) {
            self.done(id);
            dropped += t.data.len();
        }
        dropped
    }

    /// Takes the pending runs that stopped growing: untouched during the last
    /// [`STALE_WRITES`] writes, or the last [`STALE_TICKS`] calls (called once per
    /// checkpoint). Counting writes rather than time keeps a run that waits for a write
    /// held up by back-pressure.
    pub fn take_stale(&mut self) -> Vec<Taken> {
        self.ticks += 1;
        let (clock, ticks) = (self.clock, self.ticks);
        let starts: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, r)| clock - r.touched >= STALE_WRITES || ticks - r.tick >= STALE_TICKS)
            .map(|(s, _)| *s)
            .collect();
        starts
            .into_iter()
            .filter_map(|s| self.take(s, Why::Stale))
            .collect()
    }

    /// Runs taken by [`Why`] since the previous call.
    pub fn take_counts(&mut self) -> [u64; 4] {
        std::mem::take(&mut self.counts)
    }

    /// Queues taken runs for the sender threads.
    pub fn queue(&mut self, runs: Vec<Taken>) {
        for t in runs {
            self.queued.insert(t.id, t);
        }
    }

    /// The oldest queued run that may be sent now ([`Coalescer::may_send`]), if any. It
    /// stays in flight until [`Coalescer::done`].
    pub fn next_to_send(&mut self) -> Option<Taken> {
        let id = self
            .queued
            .values()
            .find(|t| self.may_send(t))
            .map(|t| t.id)?;
        self.queued.remove(&id)
    }

    /// Bytes taken out and not yet done (queued or being sent): the writers' back-pressure.
    pub fn taken_bytes(&self) -> usize {
        self.taken_bytes
    }

    /// True when room for a write of `len` bytes may be kept now: the runs queued or in
    /// flight, the room kept already and `len` stay within `limit` (the writers'
    /// back-pressure, [`Coalescer::taken_bytes`]), or no room is kept at all, so that one
    /// write always goes ahead however far the senders are behind (as a write without room
    /// does: it waits only after buffering its bytes).
    pub fn may_reserve(&self, len: usize, limit: usize) -> bool {
        self.reserved == 0 || self.taken_bytes + self.reserved + len <= limit
    }

    /// Keeps room for `len` bytes.
    pub fn reserve(&mut self, len: usize) {
        self.reserved += len;
    }

    /// Gives back room kept for `len` bytes.
    pub fn unreserve(&mut self, len: usize) {
        self.reserved = self.reserved.saturating_sub(len);
    }

    /// The bytes not known to be on the blob: pending, queued or being sent.
    pub fn unacknowledged(&self) -> RangeSet {
        let mut u = RangeSet::new();
        for (s, r) in &self.runs {
            u.insert(*s, *s + r.data.len() as u64);
        }
        for r in self.in_flight.values() {
            u.insert(r.start, r.end);
        }
        u
    }

    /// Buffers `data` (512-aligned, already range-checked) at `offset`. Returns the runs to
    /// send now, in order: older data this write overlaps, then runs that reached 4 MiB or
    /// were evicted by the memory bound.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Vec<Taken> {
        let end = offset + data.len() as u64;
        let mut out = self.take_overlapping(offset..end);
        self.clock += 1;
        let mut off = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let before = self
                .runs
                .range(..off)
                .next_back()
                .filter(|(s, r)| **s + r.data.len() as u64 == off && r.data.len() < MAX_PUT_PAGE)
                .map(|(s, _)| *s);
            let (start, n) = match before {
                Some(s) => {
                    let run = self.runs.get_mut(&s).expect("run just found");
                    let n = (MAX_PUT_PAGE - run.data.len()).min(rest.len());
                    run.data.extend_from_slice(&rest[..n]);
                    run.touched = self.clock;
                    run.tick = self.ticks;
                    (s, n)
                }
                None => {
                    let n = MAX_PUT_PAGE.min(rest.len());
                    let mut buf = Vec::with_capacity(n);
                    buf.extend_from_slice(&rest[..n]);
                    self.runs.insert(
                        off,
                        Run {
                            data: buf,
                            touched: self.clock,
                            tick: self.ticks,
                        },
                    );
                    (off, n)
                }
            };
            self.bytes += n;
            off += n as u64;
            rest = &rest[n..];
            // Join the run that starts where this one now ends (only when the write ended
            // here: a pending run never overlaps the write): all of it if both fit in one
            // page, else its head, to fill this run to a whole page.
            if let Some(next) = self.runs.get(&off) {
                let cur = self.runs[&start].data.len();
                let moved = (MAX_PUT_PAGE - cur).min(next.data.len());
                if moved > 0 {
                    let mut next = self.runs.remove(&off).expect("run just seen");
                    let run = self.runs.get_mut(&start).expect("run just written");
                    run.data.extend_from_slice(&next.data[..moved]);
                    if moved < next.data.len() {
                        next.data.drain(..moved);
                        self.runs.insert(off + moved as u64, next);
                    }
                }
            }
            let full = self.runs[&start].data.len() == MAX_PUT_PAGE;
            if full {
                out.extend(self.take(start, Why::Full));
            }
        }
        while self.bytes > self.limit {
            let stalest = self
                .runs
                .iter()
                .min_by_key(|(_, r)| r.touched)
                .map(|(s, _)| *s);
            match stalest {
                Some(s) => out.extend(self.take(s, Why::Evicted)),
                None => break,
            }
        }
        out
    }

    /// True when `t` may go out: no overlapping run taken before it is still in flight.
    pub fn may_send(&self, t: &Taken) -> bool {
        let r = t.range();
        !self.in_flight.range(..t.id).any(|(_, f)| overlaps(f, &r))
    }

    /// True while a run taken before `id` overlapping `r` is in flight (`u64::MAX`: any).
    pub fn busy_before(&self, id: u64, r: &Range<u64>) -> bool {
        self.in_flight.range(..id).any(|(_, f)| overlaps(f, r))
    }

    /// The id the next taken run will get (runs taken so far have smaller ones).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Marks `t` sent (successfully or not).
    pub fn done(&mut self, id: u64) {
        if let Some(r) = self.in_flight.remove(&id) {
            self.taken_bytes -= (r.end - r.start) as usize;
        }
    }

    /// Puts a run whose send failed back as pending, unless something newer overlaps it
    /// (then its bytes would land after newer ones): returns false in that case.
    pub fn put_back(&mut self, t: Taken) -> bool {
        let r = t.range();
        let newer_in_flight = self
            .in_flight
            .range(t.id + 1..)
            .any(|(_, f)| overlaps(f, &r));
        let newer_pending = self
            .runs
            .range(..r.end)
            .any(|(s, run)| *s + run.data.len() as u64 > r.start);
        if newer_in_flight || newer_pending {
            return false;
        }
        self.bytes += t.data.len();
        self.clock += 1;
        self.runs.insert(
            t.start,
            Run {
                data: t.data,
                touched: self.clock,
                tick: self.ticks,
            },
        );
        true
    }

    /// True if a pending run overlaps `r`.
    pub fn pending_in(&self, r: Range<u64>) -> bool {
        self.runs
            .range(..r.end)
            .any(|(s, run)| *s + run.data.len() as u64 > r.start)
    }
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;

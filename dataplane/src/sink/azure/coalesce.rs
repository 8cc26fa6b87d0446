//! Coalescing of received extents into Put Pages of up to 4 MiB.
//!
//! The receiver gets extents of up to 4 MiB, often smaller (zero runs are skipped at 1 MiB
//! granularity), and one Put Page per extent costs requests (Azure's target is ~500
//! requests/s per page blob). A write is therefore buffered in a *run* of adjacent bytes
//! and sent when the run reaches 4 MiB, when the memory bound evicts it, or when a
//! checkpoint or commit needs it durable. Nothing here does IO: [`Coalescer`] hands back
//! [`Taken`] runs, the disk sends them.
//!
//! Order: two sends of overlapping bytes must reach the service in the order the writes
//! arrived. Runs never overlap one another; a write overlapping a pending run first takes
//! that run out (to be sent before); and every taken run has an increasing id, a run being
//! sent only once no overlapping run with a smaller id is still in flight
//! ([`Coalescer::may_send`]).
//!
//! Durability: `write` returning means *buffered*, like a write into the page cache of the
//! local store; `checkpoint` sends everything pending before it records progress, and the
//! commits send everything before they snapshot. A failed send is put back (pending again)
//! when nothing newer overlaps it, so the next checkpoint retries it; otherwise the disk is
//! poisoned (errors until reopened, which resumes from the last recorded progress).

use std::collections::BTreeMap;
use std::ops::Range;

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
}

/// Pending runs of one disk and the runs in flight.
pub struct Coalescer {
    runs: BTreeMap<u64, Run>,
    bytes: usize,
    limit: usize,
    clock: u64,
    next_id: u64,
    in_flight: BTreeMap<u64, Range<u64>>,
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
        }
    }

    /// Bytes pending (not yet taken).
    #[cfg(test)]
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    fn take(&mut self, start: u64) -> Option<Taken> {
        let run = self.runs.remove(&start)?;
        self.bytes -= run.data.len();
        let id = self.next_id;
        self.next_id += 1;
        let t = Taken {
            id,
            start,
            data: run.data,
        };
        self.in_flight.insert(id, t.range());
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
        starts.into_iter().filter_map(|s| self.take(s)).collect()
    }

    /// Takes every pending run.
    pub fn take_all(&mut self) -> Vec<Taken> {
        let starts: Vec<u64> = self.runs.keys().copied().collect();
        starts.into_iter().filter_map(|s| self.take(s)).collect()
    }

    /// Drops every pending run (a discarded copy); returns the bytes dropped.
    pub fn discard(&mut self) -> usize {
        self.runs.clear();
        std::mem::take(&mut self.bytes)
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
                        },
                    );
                    (off, n)
                }
            };
            self.bytes += n;
            off += n as u64;
            rest = &rest[n..];
            // Join the run that starts where this one now ends, if both fit in one page.
            if let Some(next) = self.runs.get(&off) {
                let cur = self.runs[&start].data.len();
                if cur + next.data.len() <= MAX_PUT_PAGE {
                    let next = self.runs.remove(&off).expect("run just seen");
                    let run = self.runs.get_mut(&start).expect("run just written");
                    run.data.extend_from_slice(&next.data);
                }
            }
            let full = self.runs[&start].data.len() == MAX_PUT_PAGE;
            if full {
                out.extend(self.take(start));
            }
        }
        while self.bytes > self.limit {
            let stalest = self
                .runs
                .iter()
                .min_by_key(|(_, r)| r.touched)
                .map(|(s, _)| *s);
            match stalest {
                Some(s) => out.extend(self.take(s)),
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
        self.in_flight.remove(&id);
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
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn shape(t: &[Taken]) -> Vec<(u64, usize)> {
        t.iter().map(|t| (t.start, t.data.len())).collect()
    }

    #[test]
    fn adjacent_extents_become_one_4_mib_put_page() {
        let mut c = Coalescer::new(32 * MIB);
        for i in 0..3u64 {
            assert!(c.push(i * MIB as u64, &vec![i as u8; MIB]).is_empty());
        }
        let out = c.push(3 * MIB as u64, &[3; MIB]);
        assert_eq!(shape(&out), vec![(0, 4 * MIB)]);
        assert_eq!(out[0].data[2 * MIB], 2);
        assert_eq!(c.pending_bytes(), 0);
    }

    #[test]
    fn a_write_crossing_the_4_mib_boundary_fills_the_run_and_starts_the_next() {
        let mut c = Coalescer::new(32 * MIB);
        assert!(c.push(0, &[1; 3 * MIB]).is_empty());
        let out = c.push(3 * MIB as u64, &[2; 2 * MIB]);
        assert_eq!(shape(&out), vec![(0, 4 * MIB)]);
        assert_eq!(shape(&c.take_all()), vec![(4 * MIB as u64, MIB)]);
    }

    #[test]
    fn extents_arriving_out_of_order_are_joined() {
        let mut c = Coalescer::new(32 * MIB);
        assert!(c.push(MIB as u64, &[2; MIB]).is_empty());
        assert!(c.push(0, &[1; MIB]).is_empty());
        let all = c.take_all();
        assert_eq!(shape(&all), vec![(0, 2 * MIB)]);
        assert_eq!((all[0].data[0], all[0].data[MIB]), (1, 2));
    }

    #[test]
    fn interleaved_streams_keep_separate_runs() {
        let mut c = Coalescer::new(32 * MIB);
        let (a, b) = (0u64, 100 * MIB as u64);
        for i in 0..3u64 {
            assert!(c.push(a + i * MIB as u64, &[1; MIB]).is_empty());
            assert!(c.push(b + i * MIB as u64, &[2; MIB]).is_empty());
        }
        assert_eq!(shape(&c.take_all()), vec![(a, 3 * MIB), (b, 3 * MIB)]);
    }

    #[test]
    fn memory_stays_bounded_by_evicting_the_stalest_run() {
        let mut c = Coalescer::new(8 * MIB);
        let mut sent = 0;
        for i in 0..20u64 {
            // Gaps between extents: nothing joins.
            sent += c.push(i * 2 * MIB as u64, &[1; MIB]).len();
            assert!(c.pending_bytes() <= 8 * MIB);
        }
        assert_eq!(sent, 12);
        assert_eq!(c.take_all()[0].start, 12 * 2 * MIB as u64);
    }

    #[test]
    fn an_overlapping_rewrite_sends_the_older_bytes_first_and_in_order() {
        let mut c = Coalescer::new(32 * MIB);
        c.push(0, &[1; 2 * MIB]);
        let out = c.push(MIB as u64, &[2; MIB]);
        assert_eq!(shape(&out), vec![(0, 2 * MIB)]);
        assert!(c.may_send(&out[0]));
        let newer = c.take_all();
        assert_eq!(shape(&newer), vec![(MIB as u64, MIB)]);
        assert!(!c.may_send(&newer[0]), "must wait for the older send");
        c.done(out[0].id);
        assert!(c.may_send(&newer[0]));
    }

    #[test]
    fn a_failed_run_is_put_back_unless_newer_bytes_overlap() {
        let mut c = Coalescer::new(32 * MIB);
        c.push(0, &[1; MIB]);
        let t = c.take_all().pop().unwrap();
        c.done(t.id);
        assert!(c.put_back(t));
        assert_eq!(c.pending_bytes(), MIB);
        let t = c.take_all().pop().unwrap();
        c.push(512, &[2; 512]);
        c.done(t.id);
        assert!(!c.put_back(t));
    }
}

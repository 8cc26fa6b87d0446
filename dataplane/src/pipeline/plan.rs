//! Turning a disk's extents into work items of bounded size.

use vdrep_proto::wire::MAX_CLEAR_LEN;
use vdrep_proto::RangeSet;

use crate::disk::{DiskError, ExtentKind, VirtualDisk};

/// One unit of work for the CPU stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkItem {
    /// Read `len` bytes at `offset` and send what is not zero.
    Read {
        /// Virtual offset.
        offset: u64,
        /// Length, ≤ the chunk size.
        len: u32,
    },
    /// Zero `len` bytes at `offset` on the replica (the replica may hold older data there).
    Clear {
        /// Virtual offset.
        offset: u64,
        /// Length.
        len: u32,
    },
}

/// How to plan a disk.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Largest read (and so largest extent); 1 MiB balances compression ratio and the
    /// parallelism of the CPU stages.
    pub chunk: u32,
    /// The replica is known to hold zeros wherever nothing was written: unallocated and zero
    /// ranges need nothing. Otherwise they become clears.
    pub known_empty: bool,
    /// Ranges already durable at the receiver: skipped (resume).
    pub done: RangeSet,
}

/// Appends the items covering `[s, e)` in pieces of at most `max` bytes: reads, or clears
/// when `clear`. The one splitter of the plan, cycles and resyncs.
pub fn push_split(out: &mut Vec<WorkItem>, s: u64, e: u64, max: u64, clear: bool) {
    let mut o = s;
    while o < e {
        let n = (e - o).min(max);
        out.push(if clear {
            WorkItem::Clear {
                offset: o,
                len: n as u32,
            }
        } else {
            WorkItem::Read {
                offset: o,
                len: n as u32,
            }
        });
        o += n;
    }
}

/// Level from which a CPU worker joins consecutive reads into one extent of up to
/// `MAX_EXTENT_LEN` (4 MiB): the controller only gets there when the link, not the CPU, is
/// the bottleneck, and there a 4 MiB frame compresses 2 % better than four 1 MiB ones (the
/// bench image at level 9: 358 against 366 MB per GiB), while the extra memory in flight
/// (three more MiB per worker) is what a slow link leaves idle anyway.
pub const JOIN_FROM_LEVEL: i32 = 6;

/// Joins `item` with the reads that directly follow it, taken by `next` (which yields
/// `None` when nothing is queued), up to `max` bytes. Returns the joined item and the
/// first item taken that could not be joined (not contiguous, a clear, or too long).
pub fn join_reads(
    item: WorkItem,
    max: u32,
    mut next: impl FnMut() -> Option<WorkItem>,
) -> (WorkItem, Option<WorkItem>) {
    let WorkItem::Read { offset, mut len } = item else {
        return (item, None);
    };
    while len < max {
        match next() {
            None => break,
            Some(WorkItem::Read { offset: o, len: l })
                if o == offset + len as u64 && l <= max - len =>
            {
                len += l;
            }
            Some(other) => return (WorkItem::Read { offset, len }, Some(other)),
        }
    }
    (WorkItem::Read { offset, len }, None)
}

/// Plans the whole disk window by window and hands each window's items to `emit`, so the
/// plan of a multi-TiB disk is never held in memory at once. Ranges are aligned to 512 bytes
/// (every format vdrep reads allocates in whole sectors).
pub fn plan_disk(
    disk: &dyn VirtualDisk,
    opts: &PlanOptions,
    mut emit: impl FnMut(Vec<WorkItem>) -> bool,
) -> Result<(), DiskError> {
    let size = disk.info().virtual_size;
    let window = 1u64 << 30;
    let chunk = opts.chunk.max(512) as u64;
    let mut start = 0u64;
    while start < size {
        let end = (start + window).min(size);
        let mut items = Vec::new();
        let mut cursor = start;
        let handle = |s: u64, e: u64, kind: Option<ExtentKind>, items: &mut Vec<WorkItem>| {
            for r in opts.done.gaps_in(s, e) {
                let (a, b) = (r.start, r.end);
                match kind {
                    Some(ExtentKind::Data) => push_split(items, a, b, chunk, false),
                    _ if !opts.known_empty => push_split(items, a, b, MAX_CLEAR_LEN as u64, true),
                    _ => {}
                }
            }
        };
        for ext in disk.extents_in(start, end)? {
            if ext.offset > cursor {
                handle(cursor, ext.offset, None, &mut items);
            }
            handle(ext.offset, ext.end(), Some(ext.kind), &mut items);
            cursor = ext.end();
        }
        if cursor < end {
            handle(cursor, end, None, &mut items);
        }
        if !emit(items) {
            return Ok(());
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdrep_proto::wire::MAX_EXTENT_LEN;

    #[test]
    fn reads_join_while_contiguous_and_within_the_limit() {
        let r = |offset, len| WorkItem::Read { offset, len };
        let mib = 1u32 << 20;
        let m = mib as u64;
        let mut q = vec![r(m, mib), r(2 * m, mib), r(3 * m, mib), r(4 * m, mib)].into_iter();
        assert_eq!(
            join_reads(r(0, mib), MAX_EXTENT_LEN, || q.next()),
            (r(0, 4 * mib), None)
        );
        // The fifth read stays queued: the limit was reached before it was taken.
        assert_eq!(q.next(), Some(r(4 * m, mib)));
        // A gap, a clear, or a read that would pass the limit ends the join and is handed back.
        let mut q = vec![r(m, mib), r(3 * m, mib)].into_iter();
        assert_eq!(
            join_reads(r(0, mib), MAX_EXTENT_LEN, || q.next()),
            (r(0, 2 * mib), Some(r(3 * m, mib)))
        );
        let c = WorkItem::Clear {
            offset: m,
            len: 512,
        };
        let mut q = vec![c].into_iter();
        assert_eq!(
            join_reads(r(0, mib), MAX_EXTENT_LEN, || q.next()),
            (r(0, mib), Some(c))
        );
        let mut q = vec![r(3 * m, 2 * mib)].into_iter();
        assert_eq!(
            join_reads(r(0, 3 * mib), MAX_EXTENT_LEN, || q.next()),
            (r(0, 3 * mib), Some(r(3 * m, 2 * mib)))
        );
        // Nothing queued, or a clear to start with: unchanged.
        assert_eq!(
            join_reads(r(0, mib), MAX_EXTENT_LEN, || None),
            (r(0, mib), None)
        );
        assert_eq!(
            join_reads(c, MAX_EXTENT_LEN, || panic!("not asked")),
            (c, None)
        );
    }

    #[test]
    fn done_ranges_are_subtracted() {
        let done: RangeSet = [10..20, 30..40, 90..200].into_iter().collect();
        assert_eq!(done.gaps_in(0, 100), vec![0..10, 20..30, 40..90]);
        assert_eq!(done.gaps_in(15, 35), vec![20..30]);
        let all = RangeSet::from_range(0, 10);
        assert!(all.gaps_in(0, 10).is_empty());
    }
}

//! Last-writer-wins coalescing: a cycle ships, for every disk byte written during the cycle,
//! only its final value. The result is the minimal sorted list of non-overlapping,
//! non-adjacent extents, each with the pieces of log files that hold its bytes, so the
//! sender reads exactly what it ships and nothing twice.
//!
//! Algorithm, O(n log n) for n writes: walk the writes newest first, keeping the disk ranges
//! already claimed by newer writes in a `BTreeMap` of disjoint intervals. The parts of each
//! write not yet claimed are visible; they are recorded and the write's range is merged into
//! the claimed set (each interval is merged away at most once). Sorting the visible pieces by
//! disk offset and joining touching ones gives the extents.

use std::collections::BTreeMap;

use serde::Serialize;

use super::chain::HrlChain;
use super::reader::HrlLog;

/// One write in chronological order: `length` bytes at `disk_offset`, stored in source file
/// `source` at `file_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    /// Disk offset.
    pub disk_offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Which source (log index in a chain; 0 for a single log).
    pub source: usize,
    /// Offset of the data in that source.
    pub file_offset: u64,
}

/// Where a run of an extent's bytes is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SourcePiece {
    /// Log index (in the chain) holding the bytes.
    pub source: usize,
    /// Offset in that log file.
    pub file_offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// A disk range to ship, with its bytes' sources in disk order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoalescedExtent {
    /// Disk offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Sources of the bytes, concatenated in order; lengths sum to `length`.
    #[serde(skip)]
    pub pieces: Vec<SourcePiece>,
}

impl CoalescedExtent {
    /// End of the extent (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Coalesces `writes`, given oldest first.
pub fn coalesce(writes: impl IntoIterator<Item = Write>) -> Vec<CoalescedExtent> {
    let writes: Vec<Write> = writes.into_iter().collect();
    let mut claimed: BTreeMap<u64, u64> = BTreeMap::new();
    // (disk start, length, source, file offset)
    let mut visible: Vec<(u64, u64, usize, u64)> = Vec::new();
    for w in writes.iter().rev() {
        let s = w.disk_offset;
        let e = s.saturating_add(w.length);
        if e <= s {
            continue;
        }
        let mut emit = |a: u64, b: u64| {
            if b > a {
                visible.push((a, b - a, w.source, w.file_offset + (a - s)));
            }
        };
        let (mut new_s, mut new_e, mut cur) = (s, e, s);
        let mut absorbed: Vec<u64> = Vec::new();
        if let Some((&ps, &pe)) = claimed.range(..s).next_back() {
            if pe >= s {
                new_s = ps;
                new_e = new_e.max(pe);
                cur = cur.max(pe);
                absorbed.push(ps);
            }
        }
        for (&is, &ie) in claimed.range(s..=e) {
            emit(cur.min(e), is.min(e));
            cur = cur.max(ie);
            new_e = new_e.max(ie);
            absorbed.push(is);
        }
        emit(cur.min(e), e);
        for k in absorbed {
            claimed.remove(&k);
        }
        claimed.insert(new_s, new_e);
    }
    visible.sort_unstable_by_key(|v| v.0);
    let mut out: Vec<CoalescedExtent> = Vec::new();
    for (start, len, source, file_offset) in visible {
        let piece = SourcePiece {
            source,
            file_offset,
            length: len,
        };
        match out.last_mut() {
            Some(x) if x.end() == start => {
                x.length += len;
                match x.pieces.last_mut() {
                    Some(p) if p.source == source && p.file_offset + p.length == file_offset => {
                        p.length += len
                    }
                    _ => x.pieces.push(piece),
                }
            }
            _ => out.push(CoalescedExtent {
                offset: start,
                length: len,
                pieces: vec![piece],
            }),
        }
    }
    out
}

fn log_writes(log: &HrlLog, source: usize) -> impl Iterator<Item = Write> + '_ {
    log.entries().iter().map(move |e| Write {
        disk_offset: e.disk_offset,
        length: e.length as u64,
        source,
        file_offset: e.file_offset,
    })
}

/// Coalesces one log (every piece has `source` 0).
pub fn coalesce_log(log: &HrlLog) -> Vec<CoalescedExtent> {
    coalesce(log_writes(log, 0))
}

/// Coalesces a chain; `source` indexes [`HrlChain::logs`].
pub fn coalesce_chain(chain: &HrlChain) -> Vec<CoalescedExtent> {
    coalesce(
        chain
            .logs()
            .iter()
            .enumerate()
            .flat_map(|(i, l)| log_writes(l, i)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn w(disk_offset: u64, length: u64, file_offset: u64) -> Write {
        Write {
            disk_offset,
            length,
            source: 0,
            file_offset,
        }
    }
    fn ranges(x: &[CoalescedExtent]) -> Vec<(u64, u64)> {
        x.iter().map(|e| (e.offset, e.length)).collect()
    }

    #[test]
    fn later_write_wins_and_adjacent_extents_merge() {
        // a: [0,1024) at file 0; b: [512,1536) at file 1024; c: [2048,2560) at 2048;
        // d: [1536,2048) at 2560 joins b and c into one extent.
        let x = coalesce([
            w(0, 1024, 0),
            w(512, 1024, 1024),
            w(2048, 512, 2048),
            w(1536, 512, 2560),
        ]);
        assert_eq!(ranges(&x), vec![(0, 2560)]);
        assert_eq!(
            x[0].pieces,
            vec![
                SourcePiece {
                    source: 0,
                    file_offset: 0,
                    length: 512
                },
                SourcePiece {
                    source: 0,
                    file_offset: 1024,
                    length: 1024
                },
                SourcePiece {
                    source: 0,
                    file_offset: 2560,
                    length: 512
                },
                SourcePiece {
                    source: 0,
                    file_offset: 2048,
                    length: 512
                },
            ]
        );
    }

    #[test]
    fn same_offset_rewrite_keeps_only_the_last_data() {
        let x = coalesce([w(4096, 512, 0), w(0, 512, 512), w(4096, 512, 1024)]);
        assert_eq!(ranges(&x), vec![(0, 512), (4096, 512)]);
        assert_eq!(
            x[1].pieces,
            vec![SourcePiece {
                source: 0,
                file_offset: 1024,
                length: 512
            }]
        );
    }

    #[test]
    fn contiguous_sources_merge_into_one_piece() {
        let x = coalesce([w(0, 512, 8192), w(512, 512, 8704)]);
        assert_eq!(
            x[0].pieces,
            vec![SourcePiece {
                source: 0,
                file_offset: 8192,
                length: 1024
            }]
        );
    }

    #[test]
    fn older_write_spanning_newer_ones_fills_only_the_gaps() {
        let x = coalesce([w(0, 4096, 0), w(512, 512, 10_000), w(2048, 512, 20_000)]);
        assert_eq!(ranges(&x), vec![(0, 4096)]);
        let lens: Vec<(u64, u64)> = x[0]
            .pieces
            .iter()
            .map(|p| (p.file_offset, p.length))
            .collect();
        assert_eq!(
            lens,
            vec![
                (0, 512),
                (10_000, 512),
                (1024, 1024),
                (20_000, 512),
                (2560, 1536)
            ]
        );
    }

    proptest! {
        #[test]
        fn coalesced_bytes_equal_a_naive_byte_array_model(
            ws in proptest::collection::vec((0u64..4000, 1u64..600, 0usize..2, any::<u8>()), 0..60)
        ) {
            const DISK: usize = 4600;
            let mut model: Vec<Option<u8>> = vec![None; DISK];
            let mut files: Vec<Vec<u8>> = vec![Vec::new(), Vec::new()];
            let mut writes = Vec::new();
            for (i, &(off, len, src, seed)) in ws.iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|k| seed.wrapping_add((k as u8).wrapping_mul(31)).wrapping_add(i as u8)).collect();
                writes.push(Write { disk_offset: off, length: len, source: src, file_offset: files[src].len() as u64 });
                files[src].extend_from_slice(&data);
                for (k, b) in data.iter().enumerate() {
                    model[off as usize + k] = Some(*b);
                }
            }
            let x = coalesce(writes);
            let mut got: Vec<Option<u8>> = vec![None; DISK];
            for (i, e) in x.iter().enumerate() {
                if i > 0 {
                    prop_assert!(x[i - 1].end() < e.offset, "extents must be sorted, disjoint, non-adjacent");
                }
                prop_assert_eq!(e.pieces.iter().map(|p| p.length).sum::<u64>(), e.length);
                let mut at = e.offset as usize;
                for p in &e.pieces {
                    let f = &files[p.source];
                    for k in 0..p.length as usize {
                        got[at] = Some(f[p.file_offset as usize + k]);
                        at += 1;
                    }
                }
            }
            prop_assert_eq!(got, model);
        }
    }
}

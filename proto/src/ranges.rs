//! Sets of byte ranges: what part of a disk is copied, durable, dirty or missing.
//!
//! A [`RangeSet`] holds sorted, disjoint, non-adjacent, non-empty half-open `[start, end)`
//! ranges of `u64` offsets. That canonical form makes equality structural, keeps the
//! encoding unique, and lets the decoder refuse anything else: a progress record read back
//! from disk or from a peer either describes exactly one set or is reported as corrupt.
//!
//! Wire and on-disk encoding (little-endian): `count: u32`, then `count` pairs
//! `start: u64, end: u64`, strictly increasing with `start < end` and
//! `previous end < start`. Binary records embed these bytes; JSON records write the set as a
//! list of pairs through [`pairs`] (`#[serde(with = "vdrep_proto::ranges::pairs")]`).

use std::ops::Range;

pub mod pairs;

use crate::error::Cursor;
use crate::FormatError;

/// Name used in decode errors.
const STRUCTURE: &str = "range set";

/// Sorted disjoint half-open ranges of `u64` offsets (see the module docs).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RangeSet {
    /// Canonical: sorted, `start < end`, and each `end` strictly below the next `start`.
    ranges: Vec<(u64, u64)>,
}

impl std::fmt::Debug for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.ranges.iter().map(|&(s, e)| s..e))
            .finish()
    }
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// The set holding exactly `[start, end)` (empty if `start >= end`).
    pub fn from_range(start: u64, end: u64) -> Self {
        let mut s = RangeSet::new();
        s.insert(start, end);
        s
    }

    /// True if no offset is in the set.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of disjoint ranges (not bytes; see [`RangeSet::covered_len`]).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Total number of offsets covered.
    pub fn covered_len(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| e - s).sum()
    }

    /// The ranges in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|&(s, e)| s..e)
    }

    /// The lowest covered offset and the end of the highest range, if any.
    pub fn bounds(&self) -> Option<Range<u64>> {
        Some(self.ranges.first()?.0..self.ranges.last()?.1)
    }

    /// Index of the first range whose end is `>= at` (ranges that touch `at` or lie after it).
    fn first_touching(&self, at: u64) -> usize {
        self.ranges.partition_point(|&(_, e)| e < at)
    }

    /// Adds `[start, end)`, merging with overlapping and adjacent ranges. Empty input is a
    /// no-op.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let i = self.first_touching(start);
        // Ranges i..j overlap or touch [start, end].
        let j = self.ranges.partition_point(|&(s, _)| s <= end);
        if i >= j {
            self.ranges.insert(i, (start, end));
            return;
        }
        let new_start = start.min(self.ranges[i].0);
        let new_end = end.max(self.ranges[j - 1].1);
        self.ranges.splice(i..j, [(new_start, new_end)]);
    }

    /// Adds every range of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        for r in other.iter() {
            self.insert(r.start, r.end);
        }
    }

    /// Removes `[start, end)`, splitting ranges that straddle it. Empty input is a no-op.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Ranges that strictly overlap [start, end).
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        let j = self.ranges.partition_point(|&(s, _)| s < end);
        if i >= j {
            return;
        }
        let mut keep = Vec::with_capacity(2);
        let (first_s, _) = self.ranges[i];
        let (_, last_e) = self.ranges[j - 1];
        if first_s < start {
            keep.push((first_s, start));
        }
        if last_e > end {
            keep.push((end, last_e));
        }
        self.ranges.splice(i..j, keep);
    }

    /// True if every offset of `[start, end)` is in the set (vacuously true when empty).
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        match self.ranges.get(i) {
            Some(&(s, e)) => s <= start && end <= e,
            None => false,
        }
    }

    /// True if `offset` is in the set.
    pub fn contains(&self, offset: u64) -> bool {
        offset < u64::MAX && self.contains_range(offset, offset + 1)
    }

    /// The parts of `[start, end)` that are *not* in the set, ascending.
    pub fn gaps_in(&self, start: u64, end: u64) -> Vec<Range<u64>> {
        let mut gaps = Vec::new();
        if start >= end {
            return gaps;
        }
        let mut pos = start;
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        for &(s, e) in &self.ranges[i..] {
            if s >= end {
                break;
            }
            if s > pos {
                gaps.push(pos..s);
            }
            pos = pos.max(e);
            if pos >= end {
                break;
            }
        }
        if pos < end {
            gaps.push(pos..end);
        }
        gaps
    }

    /// The offsets in both sets.
    pub fn intersect(&self, other: &RangeSet) -> RangeSet {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while let (Some(&(a0, a1)), Some(&(b0, b1))) = (self.ranges.get(i), other.ranges.get(j)) {
            let s = a0.max(b0);
            let e = a1.min(b1);
            if s < e {
                out.push((s, e));
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        // Pieces of two canonical sets never touch each other: a meeting point would lie in
        // both sets' gaps or ranges, so the output is canonical already.
        RangeSet { ranges: out }
    }

    /// The part of the set inside `[start, end)`.
    pub fn clipped(&self, start: u64, end: u64) -> RangeSet {
        self.intersect(&RangeSet::from_range(start, end))
    }

    /// Up to `max` ranges of the set that start at or after `at`, in order, and whether
    /// more such ranges follow: one page of a set too large for one message (progress
    /// pages, WIRE.md §4.3). Ranges that start before `at` are not clipped but left out, so
    /// pages asked for from the end of the previous page never repeat or split a range.
    pub fn page(&self, at: u64, max: usize) -> (RangeSet, bool) {
        let from = self.ranges.partition_point(|&(s, _)| s < at);
        let to = from.saturating_add(max).min(self.ranges.len());
        // A run of consecutive ranges of a canonical set is canonical.
        let page = RangeSet {
            ranges: self.ranges[from..to].to_vec(),
        };
        (page, to < self.ranges.len())
    }

    /// Bytes [`RangeSet::encode`] produces.
    pub fn encoded_len(&self) -> usize {
        4 + 16 * self.ranges.len()
    }

    /// Appends the encoding (see the module docs) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        // A set of more than u32::MAX ranges would need > 64 GiB of memory; saturate the
        // count anyway so the encoding is never silently wrong (the decoder then refuses it).
        out.extend_from_slice(
            &u32::try_from(self.ranges.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for &(s, e) in &self.ranges {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
        }
    }

    /// The encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }

    /// Decodes a set from the start of `buf`, returning it and the bytes consumed, so that
    /// records can embed a set followed by other fields.
    pub fn decode_prefix(buf: &[u8]) -> Result<(RangeSet, usize), FormatError> {
        let c = Cursor::new(buf, STRUCTURE);
        let count = c.le_u32(0)? as usize;
        let need = count
            .checked_mul(16)
            .and_then(|n| n.checked_add(4))
            .ok_or_else(|| FormatError::new(STRUCTURE, 0, format!("count {count} overflows")))?;
        if buf.len() < need {
            return Err(FormatError::new(
                STRUCTURE,
                0,
                format!(
                    "truncated: {count} ranges need {need} bytes, buffer holds {}",
                    buf.len()
                ),
            ));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut prev_end: Option<u64> = None;
        for k in 0..count {
            let at = 4 + 16 * k;
            let s = c.le_u64(at)?;
            let e = c.le_u64(at + 8)?;
            if s >= e {
                return Err(FormatError::new(
                    STRUCTURE,
                    at as u64,
                    format!("range {k} is empty or reversed: [{s}, {e})"),
                ));
            }
            if let Some(p) = prev_end {
                if s <= p {
                    return Err(FormatError::new(
                        STRUCTURE,
                        at as u64,
                        format!(
                            "range {k} [{s}, {e}) is not sorted, disjoint and separated from \
                             the previous range ending at {p}"
                        ),
                    ));
                }
            }
            prev_end = Some(e);
            ranges.push((s, e));
        }
        Ok((RangeSet { ranges }, need))
    }

    /// Decodes a set that fills `buf` exactly; trailing bytes are an error.
    pub fn decode(buf: &[u8]) -> Result<RangeSet, FormatError> {
        let (set, used) = RangeSet::decode_prefix(buf)?;
        if used != buf.len() {
            return Err(FormatError::new(
                STRUCTURE,
                used as u64,
                format!("{} trailing bytes after the set", buf.len() - used),
            ));
        }
        Ok(set)
    }
}

impl FromIterator<Range<u64>> for RangeSet {
    fn from_iter<I: IntoIterator<Item = Range<u64>>>(iter: I) -> Self {
        let mut s = RangeSet::new();
        for r in iter {
            s.insert(r.start, r.end);
        }
        s
    }
}

#[cfg(test)]
mod tests;

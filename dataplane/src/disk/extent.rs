//! Extents: the ranges of a virtual disk that hold something.

use serde::Serialize;

use super::{DiskError, VirtualDisk};

/// What an extent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// Stored bytes (which may happen to be zero): must be read.
    Data,
    /// Marked as zero by the format itself (VHDX BAT state "zero"): nothing to read.
    Zero,
}

/// A range of the virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes, never 0.
    pub length: u64,
    /// Data or zero.
    pub kind: ExtentKind,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Sorts, drops empty ranges, and merges adjacent ranges of one kind. Overlapping input is a
/// bug in the caller; the later range's kind wins there, so the output never overlaps.
pub fn normalize(mut v: Vec<Extent>) -> Vec<Extent> {
    v.retain(|e| e.length > 0);
    v.sort_by_key(|e| e.offset);
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for e in v {
        if let Some(last) = out.last_mut() {
            if e.offset < last.end() {
                // Overlap: clip the new one (callers never produce this on valid images).
                let end = e.end();
                if end <= last.end() {
                    continue;
                }
                let e2 = Extent {
                    offset: last.end(),
                    length: end - last.end(),
                    kind: e.kind,
                };
                if e2.kind == last.kind {
                    last.length += e2.length;
                } else {
                    out.push(e2);
                }
                continue;
            }
            if e.offset == last.end() && e.kind == last.kind {
                last.length += e.length;
                continue;
            }
        }
        out.push(e);
    }
    out
}

/// Lays a child's own extents over its parent's: where the child has something, the child
/// wins; elsewhere the parent shows through. Both inputs sorted and non-overlapping.
pub fn merge_overlay(own: &[Extent], parent: &[Extent]) -> Vec<Extent> {
    let mut out = Vec::with_capacity(own.len() + parent.len());
    out.extend_from_slice(own);
    let mut i = 0;
    for p in parent {
        let mut cur = p.offset;
        let end = p.end();
        while i < own.len() && own[i].end() <= cur {
            i += 1;
        }
        let mut j = i;
        while cur < end {
            match own.get(j) {
                Some(o) if o.offset < end => {
                    if o.offset > cur {
                        out.push(Extent {
                            offset: cur,
                            length: o.offset - cur,
                            kind: p.kind,
                        });
                    }
                    cur = cur.max(o.end());
                    j += 1;
                }
                _ => {
                    out.push(Extent {
                        offset: cur,
                        length: end - cur,
                        kind: p.kind,
                    });
                    cur = end;
                }
            }
        }
    }
    normalize(out)
}

/// Walks a disk's extents window by window so memory stays bounded on multi-TiB disks.
pub struct ExtentWalker<'a> {
    disk: &'a dyn VirtualDisk,
    pos: u64,
    window: u64,
    pending: std::vec::IntoIter<Extent>,
}

impl<'a> ExtentWalker<'a> {
    /// `window` is how much of the virtual disk one step examines (e.g. 1 GiB).
    pub fn new(disk: &'a dyn VirtualDisk, window: u64) -> Self {
        ExtentWalker {
            disk,
            pos: 0,
            window: window.max(1 << 20),
            pending: Vec::new().into_iter(),
        }
    }
}

impl Iterator for ExtentWalker<'_> {
    type Item = Result<Extent, DiskError>;

    /// Extents that straddle a window boundary come out in two pieces; consumers that care
    /// merge them (the pipeline splits extents into chunks anyway).
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.next() {
                return Some(Ok(e));
            }
            let size = self.disk.info().virtual_size;
            if self.pos >= size {
                return None;
            }
            let end = self.pos.saturating_add(self.window).min(size);
            match self.disk.extents_in(self.pos, end) {
                Ok(v) => self.pending = v.into_iter(),
                Err(e) => {
                    self.pos = size;
                    return Some(Err(e));
                }
            }
            self.pos = end;
        }
    }
}

/// Collects all extents of a disk, merging the window seams.
pub fn all_extents(disk: &dyn VirtualDisk) -> Result<Vec<Extent>, DiskError> {
    let v: Result<Vec<_>, _> = ExtentWalker::new(disk, 1 << 30).collect();
    Ok(normalize(v?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(o: u64, l: u64) -> Extent {
        Extent {
            offset: o,
            length: l,
            kind: ExtentKind::Data,
        }
    }
    fn z(o: u64, l: u64) -> Extent {
        Extent {
            offset: o,
            length: l,
            kind: ExtentKind::Zero,
        }
    }

    #[test]
    fn normalize_merges_adjacent_same_kind_only() {
        let v = normalize(vec![d(10, 5), d(0, 10), z(15, 5), z(20, 1), d(30, 0)]);
        assert_eq!(v, vec![d(0, 15), z(15, 6)]);
    }

    #[test]
    fn overlay_child_wins_parent_shows_through_gaps() {
        let own = vec![d(10, 10), d(40, 5)];
        let parent = vec![z(0, 15), d(18, 30)];
        let v = merge_overlay(&own, &parent);
        assert_eq!(v, vec![z(0, 10), d(10, 38)]);
        let own = vec![z(5, 2)];
        let parent = vec![d(0, 10)];
        assert_eq!(
            merge_overlay(&own, &parent),
            vec![d(0, 5), z(5, 2), d(7, 3)]
        );
    }
}

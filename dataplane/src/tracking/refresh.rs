//! The per-cycle disk digest, computed after the switch with the tracking lock released.
//!
//! A cycle's recovery point is the disk as its switch left it. Reading and hashing the
//! blocks a cycle touched takes about a second per GiB changed; holding the tracking lock
//! that long would stall every writer of the disk (the lock is what makes a write atomic
//! with respect to a switch). So the switch only closes and opens logs, and the touched
//! blocks are rebuilt afterwards from what still shows the switch's state:
//!
//! - the bytes the closed logs wrote come from the closed logs (frozen files: the last
//!   write of each byte is its value at the switch), and
//! - the rest of each touched block comes from the disk, which still holds it unless a
//!   write made after the switch changed it.
//!
//! Every write made after the switch is in the active log. Once the blocks are read, the
//! lock is taken and dropped (a barrier: no writer is half-way through its disk write and
//! its append), and the active log says whether any such write touched a part of a touched
//! block that was read from the disk. If none did, the digest is exact. If one did, the
//! switch's bytes there are gone: the cycle gets no digest (failover cannot verify that one
//! point) — never a wrong one. The table stays right for the cycles after it either way:
//! the block that write touched is in the active log, so the next switch rebuilds it.
//! Writes after the switch over bytes the cycle itself wrote (a hot spot rewritten) do not
//! matter: those bytes come from the closed log.

use std::path::PathBuf;

use crate::digest::{block_hash, DIGEST_BLOCK};
use crate::disk::VirtualDisk;
use crate::hrl::{
    coalesce, coalesce_log, scan_valid_prefix, CoalescedExtent, HrlLog, ReadOptions, Write,
};

use super::{HashTable, Tracker, TrackingError};
use vdrep_proto::RangeSet;

/// What [`switch_digest`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchDigest {
    /// The digest of the disk at the switch.
    Exact([u8; 32]),
    /// The block-hash table is not computed yet (protection just started): no digest.
    TableIncomplete,
    /// A write made after the switch changed the disk at `offset`, in a block the cycle
    /// touched but at bytes it did not write, before that block was read: its state at the
    /// switch is gone, so the cycle carries no digest.
    Overwritten {
        /// Disk offset of the first such byte found.
        offset: u64,
    },
}

/// Brings the table of `tracker`'s disk up to the switch that closed `cycle` and returns
/// the disk digest at that switch. Call after the switch, without the lock; `disk` is a
/// reader of the source opened after the switch (a write since then that changed what it
/// reads is in the active log, which the barrier below checks). No other switch of this
/// disk may run meanwhile (the sender awaits the digest before its next switch).
pub fn switch_digest(
    tracker: &Tracker,
    disk: &dyn VirtualDisk,
    cycle: u64,
) -> Result<SwitchDigest, TrackingError> {
    let size = disk.info().virtual_size;
    let mut t = HashTable::open(&tracker.paths().hashes, size)?;
    if !t.is_complete() {
        return Ok(SwitchDigest::TableIncomplete);
    }
    if t.through() >= cycle {
        t.invalidate()?;
        return Err(TrackingError::Table {
            path: tracker.paths().hashes.clone(),
            problem: format!(
                "the block-hash table claims cycle {} already, before cycle {cycle}: it is \
                 recomputed at the next start",
                t.through()
            ),
        });
    }
    let res = rebuild(tracker, disk, &mut t, cycle);
    if res.is_err() {
        // No later digest from entries that may be stale.
        let _ = t.invalidate();
    }
    let (touched, extents) = res?;
    // The barrier: every write that could have changed what was read is in the active log.
    drop(tracker.lock()?);
    let active = scan_valid_prefix(
        &tracker.paths().active,
        &ReadOptions {
            disk_size: Some(size),
            verify_data: false,
        },
    )?;
    for e in active.log.entries() {
        if let Some(offset) = read_part_overlap(&touched, &extents, e.disk_offset, e.length as u64)
        {
            return Ok(SwitchDigest::Overwritten { offset });
        }
    }
    Ok(match t.digest()? {
        Some(d) => SwitchDigest::Exact(d),
        None => SwitchDigest::TableIncomplete,
    })
}

/// Rebuilds the entries of every block the closed logs of cycles `through+1..=cycle` touched
/// (several after a crash between a switch and its refresh) and records `cycle` as
/// reflected. Returns the touched blocks and the coalesced extents of those logs.
fn rebuild(
    tracker: &Tracker,
    disk: &dyn VirtualDisk,
    t: &mut HashTable,
    cycle: u64,
) -> Result<(Vec<u64>, Vec<CoalescedExtent>), TrackingError> {
    let size = t.virtual_size();
    let mut logs = Vec::new();
    for (c, p) in tracker.pending()? {
        if c > t.through() && c <= cycle {
            // Data checksums are the shipping path's check: a log failing it is never
            // committed, so neither is a digest computed from it.
            logs.push(tracker.open_closed_with(&p, false)?);
        }
    }
    let extents = coalesce_logs(&logs);
    let mut touched: Vec<u64> = Vec::new();
    for e in &extents {
        let first = e.offset / DIGEST_BLOCK;
        let last = (e.end() - 1) / DIGEST_BLOCK;
        for b in first..=last {
            if touched.last() != Some(&b) {
                touched.push(b);
            }
        }
    }
    let mut buf = vec![0u8; DIGEST_BLOCK as usize];
    for &b in &touched {
        let start = b * DIGEST_BLOCK;
        let len = DIGEST_BLOCK.min(size.saturating_sub(start)) as usize;
        if len == 0 {
            continue;
        }
        let block = &mut buf[..len];
        compose_block(disk, &logs, &extents, start, block)?;
        t.write_entry(b, &block_hash(block))?;
    }
    t.commit_entries(!touched.is_empty(), cycle)?;
    Ok((touched, extents))
}

fn coalesce_logs(logs: &[HrlLog]) -> Vec<CoalescedExtent> {
    if let [one] = logs {
        return coalesce_log(one);
    }
    coalesce(logs.iter().enumerate().flat_map(|(i, l)| {
        l.entries().iter().map(move |e| Write {
            disk_offset: e.disk_offset,
            length: e.length as u64,
            source: i,
            file_offset: e.file_offset,
        })
    }))
}

/// Fills `buf` with the disk at the switch over `[start, start+len)`: the logs' bytes where
/// they wrote, the disk's elsewhere.
fn compose_block(
    disk: &dyn VirtualDisk,
    logs: &[HrlLog],
    extents: &[CoalescedExtent],
    start: u64,
    buf: &mut [u8],
) -> Result<(), TrackingError> {
    let end = start + buf.len() as u64;
    let mut at = start;
    let mut i = extents.partition_point(|e| e.end() <= start);
    while at < end {
        let ext = extents.get(i).filter(|e| e.offset < end);
        let gap_end = ext.map_or(end, |e| e.offset.max(at));
        if gap_end > at {
            disk.read_into(
                at,
                &mut buf[(at - start) as usize..(gap_end - start) as usize],
            )
            .map_err(super::HashTableError::from)?;
            at = gap_end;
        }
        if let Some(e) = ext {
            let to = e.end().min(end);
            fill_from_logs(
                logs,
                e,
                at,
                &mut buf[(at - start) as usize..(to - start) as usize],
            )?;
            at = to;
            i += 1;
        }
    }
    Ok(())
}

/// Copies the bytes of extent `e` at disk offset `offset` from the logs holding them.
fn fill_from_logs(
    logs: &[HrlLog],
    e: &CoalescedExtent,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), TrackingError> {
    let end = offset + buf.len() as u64;
    let mut at = e.offset;
    for p in &e.pieces {
        let (ps, pe) = (at, at + p.length);
        at = pe;
        if pe <= offset || ps >= end {
            continue;
        }
        let s = ps.max(offset);
        let t = pe.min(end);
        let log = logs.get(p.source).ok_or_else(|| TrackingError::Table {
            path: logs
                .first()
                .map_or_else(PathBuf::new, |l| l.path().to_path_buf()),
            problem: format!("a coalesced piece names log {} of {}", p.source, logs.len()),
        })?;
        log.read_range_into(
            p.file_offset + (s - ps),
            &mut buf[(s - offset) as usize..(t - offset) as usize],
        )?;
    }
    Ok(())
}

/// The first byte of a write `[offset, offset+len)` that falls in a touched block but
/// outside the cycle's extents (a byte the rebuild read from the disk), if any.
fn read_part_overlap(
    touched: &[u64],
    extents: &[CoalescedExtent],
    offset: u64,
    len: u64,
) -> Option<u64> {
    let end = offset.checked_add(len)?;
    if end <= offset {
        return None;
    }
    for b in offset / DIGEST_BLOCK..=(end - 1) / DIGEST_BLOCK {
        if touched.binary_search(&b).is_err() {
            continue;
        }
        let mut at = offset.max(b * DIGEST_BLOCK);
        let stop = end.min((b + 1) * DIGEST_BLOCK);
        // Walk the extents over [at, stop): any byte not inside one was read from the disk.
        let mut i = extents.partition_point(|e| e.end() <= at);
        while at < stop {
            match extents.get(i) {
                Some(e) if e.offset <= at => {
                    at = e.end().min(stop);
                    i += 1;
                }
                _ => return Some(at),
            }
        }
    }
    None
}

/// Brings a kept table up to date with the closed logs it has not seen (a sender killed
/// between a switch and its refresh), reading the touched blocks from the disk as it is now
/// (no digest comes from this: blocks written since are in the active log and are rebuilt
/// at the next switch). On failure the table is left incomplete: no digest from stale
/// entries.
pub fn catch_up(
    tracker: &Tracker,
    disk: &dyn VirtualDisk,
    t: &mut HashTable,
) -> Result<(), TrackingError> {
    let res = (|| {
        let mut ranges = Vec::new();
        let mut newest = t.through();
        for (c, p) in tracker.pending()? {
            if c <= t.through() {
                continue;
            }
            let log = tracker.open_closed_with(&p, false)?;
            ranges.extend(coalesce_log(&log).into_iter().map(|e| e.offset..e.end()));
            newest = newest.max(c);
        }
        // Sorted first: a set grows by appending then, never by shifting.
        ranges.sort_unstable_by_key(|r| r.start);
        let ranges: RangeSet = ranges.into_iter().collect();
        t.refresh(disk, &ranges, newest)?;
        Ok(())
    })();
    if res.is_err() {
        let _ = t.invalidate();
    }
    res
}

#[cfg(test)]
#[path = "refresh_tests.rs"]
mod tests;

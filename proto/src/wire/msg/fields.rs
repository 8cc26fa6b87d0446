//! Field encodings shared by the control messages (WIRE.md §2): counted lists checked
//! against their limit before anything is allocated, optional fields behind a presence
//! byte, and canonical range lists. Each is written once here, so two messages carrying the
//! same kind of field cannot encode it differently.

use super::super::codec::{Reader, Writer};
use crate::ranges::RangeSet;
use crate::FormatError;

/// Most parents one [`super::Control::HashRequest`] may list: the answer (64 × 8 bytes each) stays
/// at half of [`crate::wire::MAX_CONTROL_BODY`].
pub const MAX_HASH_PARENTS: usize = 1024;
/// Most hashes one [`super::Control::Hashes`] may carry (also bounds the top level: 64 TiB disks).
pub const MAX_HASHES: usize = 1 << 16;

/// A `u32` count followed by the items.
pub(super) fn list_w<T>(w: &mut Writer, items: &[T], mut item: impl FnMut(&mut Writer, &T)) {
    w.u32(items.len() as u32);
    for x in items {
        item(w, x);
    }
}

/// A `u32` count, refused with `too_many(count)` above `max` before anything is allocated.
pub(super) fn count_r(
    r: &mut Reader<'_>,
    max: usize,
    what: &str,
    too_many: impl FnOnce(usize) -> String,
) -> Result<usize, FormatError> {
    let n = r.u32()? as usize;
    if n > max {
        return Err(FormatError::new(what, 0, too_many(n)));
    }
    Ok(n)
}

/// `n` items read one after the other (`n` checked by [`count_r`]).
pub(super) fn items_r<T>(
    r: &mut Reader<'_>,
    n: usize,
    mut item: impl FnMut(&mut Reader<'_>) -> Result<T, FormatError>,
) -> Result<Vec<T>, FormatError> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(item(r)?);
    }
    Ok(v)
}

/// A counted list of at most `max` items ([`list_w`]).
pub(super) fn list_r<T>(
    r: &mut Reader<'_>,
    max: usize,
    what: &str,
    too_many: impl FnOnce(usize) -> String,
    item: impl FnMut(&mut Reader<'_>) -> Result<T, FormatError>,
) -> Result<Vec<T>, FormatError> {
    let n = count_r(r, max, what, too_many)?;
    items_r(r, n, item)
}

pub(super) fn u64s_w(w: &mut Writer, v: &[u64]) {
    list_w(w, v, |w, &x| {
        w.u64(x);
    });
}

pub(super) fn u64s_r(r: &mut Reader<'_>, max: usize, what: &str) -> Result<Vec<u64>, FormatError> {
    list_r(
        r,
        max,
        what,
        |n| format!("{n} entries exceed the limit of {max}"),
        |r| r.u64(),
    )
}

/// A presence byte (0 or 1) and, when 1, the value.
pub(super) fn opt_w<T>(w: &mut Writer, v: Option<&T>, value: impl FnOnce(&mut Writer, &T)) {
    match v {
        Some(x) => {
            w.u8(1);
            value(w, x);
        }
        None => {
            w.u8(0);
        }
    }
}

/// [`opt_w`]'s field: a presence byte other than 0 or 1 is malformed.
pub(super) fn opt_r<T>(
    r: &mut Reader<'_>,
    value: impl FnOnce(&mut Reader<'_>) -> Result<T, FormatError>,
) -> Result<Option<T>, FormatError> {
    if r.bool()? {
        value(r).map(Some)
    } else {
        Ok(None)
    }
}

/// Most ranges a progress list may carry (bounded decode).
pub const MAX_RANGES: usize = 1 << 16;

/// A range list: `count: u32`, then `start: u64, end: u64` per range, ascending (the same
/// bytes as [`RangeSet::encode`]).
pub(super) fn ranges_w(w: &mut Writer, set: &RangeSet) {
    w.u32(set.range_count() as u32);
    for r in set.iter() {
        w.u64(r.start).u64(r.end);
    }
}

/// A range list of at most [`MAX_RANGES`] ranges. Each range must be non-empty and start at
/// or after the end of the one before: overlapping, unsorted, empty or reversed ranges are
/// refused. Ranges that touch (`start` equal to the previous `end`) are accepted, as they
/// always were on this wire, and merged, so a [`RangeSet`] that encodes canonically comes
/// out (such a list re-encodes shorter, never differently for a canonical one).
pub(super) fn ranges_r(r: &mut Reader<'_>, what: &str) -> Result<RangeSet, FormatError> {
    let n = count_r(r, MAX_RANGES, what, |n| {
        format!("{n} ranges exceed the limit")
    })?;
    let mut set = RangeSet::new();
    let mut last = 0u64;
    for i in 0..n {
        let (a, b) = (r.u64()?, r.u64()?);
        if a >= b || (i > 0 && a < last) {
            return Err(FormatError::new(
                what,
                0,
                format!("range {i} [{a}, {b}) is empty or out of order"),
            ));
        }
        last = b;
        // Ascending: each insert lands at the end of the set.
        set.insert(a, b);
    }
    Ok(set)
}

/// Progress with a trailing "more follows" flag (`DiskOpened`, `CycleOpened`): the flag is
/// a byte sent only when set, so a version-3 peer never sees it.
pub(super) fn progress_w(w: &mut Writer, progress: &RangeSet, more: bool) {
    ranges_w(w, progress);
    if more {
        w.u8(1);
    }
}

/// [`progress_w`]'s fields.
pub(super) fn progress_r(r: &mut Reader<'_>, what: &str) -> Result<(RangeSet, bool), FormatError> {
    let progress = ranges_r(r, what)?;
    Ok((progress, optional_flag(r)?))
}

/// A trailing flag sent only when set (WIRE.md §2): absent reads as false, present must be 1
/// (a 0 would give one message two encodings).
pub(super) fn optional_flag(r: &mut Reader<'_>) -> Result<bool, FormatError> {
    if r.at_end() {
        return Ok(false);
    }
    match r.u8()? {
        1 => Ok(true),
        v => Err(FormatError::new(
            "control frame",
            0,
            format!("trailing flag {v}: only 1 may be sent"),
        )),
    }
}

/// Most ranges one page of progress carries (protocol version 4: `DiskOpened`,
/// `CycleOpened` and `ProgressPage`): 512 KiB of ranges, half the control frame limit, so
/// progress of any shape crosses in pages instead of overflowing one frame.
pub const PROGRESS_PAGE: usize = 1 << 15;

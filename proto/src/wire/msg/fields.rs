//! Field encodings shared by the control messages: bounded lists of `u64`s and canonical
//! range lists (WIRE.md §2), each checked against its limit before anything is allocated.

use super::super::codec::{Reader, Writer};
use crate::FormatError;

/// Most parents one [`super::Control::HashRequest`] may list: the answer (64 × 8 bytes each) stays
/// at half of [`crate::wire::MAX_CONTROL_BODY`].
pub const MAX_HASH_PARENTS: usize = 1024;
/// Most hashes one [`super::Control::Hashes`] may carry (also bounds the top level: 64 TiB disks).
pub const MAX_HASHES: usize = 1 << 16;

pub(super) fn u64s_w(w: &mut Writer, v: &[u64]) {
    w.u32(v.len() as u32);
    for &x in v {
        w.u64(x);
    }
}

pub(super) fn u64s_r(r: &mut Reader<'_>, max: usize, what: &str) -> Result<Vec<u64>, FormatError> {
    let n = r.u32()? as usize;
    if n > max {
        return Err(FormatError::new(
            what,
            0,
            format!("{n} entries exceed the limit of {max}"),
        ));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(r.u64()?);
    }
    Ok(v)
}

/// Most ranges a progress list may carry (bounded decode).
pub const MAX_RANGES: usize = 1 << 16;

pub(super) fn ranges_w(w: &mut Writer, r: &[(u64, u64)]) {
    w.u32(r.len() as u32);
    for &(a, b) in r {
        w.u64(a).u64(b);
    }
}

pub(super) fn ranges_r(r: &mut Reader<'_>, what: &str) -> Result<Vec<(u64, u64)>, FormatError> {
    let n = r.u32()? as usize;
    if n > MAX_RANGES {
        return Err(FormatError::new(
            what,
            0,
            format!("{n} ranges exceed the limit"),
        ));
    }
    let mut v = Vec::with_capacity(n);
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
        v.push((a, b));
    }
    Ok(v)
}

/// Most ranges one page of progress carries (protocol version 4: `DiskOpened`,
/// `CycleOpened` and `ProgressPage`): 512 KiB of ranges, half the control frame limit, so
/// progress of any shape crosses in pages instead of overflowing one frame.
pub const PROGRESS_PAGE: usize = 1 << 15;

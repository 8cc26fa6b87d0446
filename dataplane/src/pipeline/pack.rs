//! Packed writes (protocol ≥ 3): a read's compressible blocks in one zstd frame, its
//! incompressible blocks raw, its zero blocks as clears or nothing.
//!
//! Real disks interleave compressible data with data that is compressed or encrypted
//! already. Compressing a whole read spends the compressor's time on blocks it cannot
//! shrink and dilutes its match tables and entropy coder with them; cutting the frame at
//! each incompressible block loses the context between the pieces. A packed write
//! ([`ExtentOp::WritePacked`]) keeps one frame for the compressible blocks, back to back,
//! and names them in a map; the rest travel as their own extents. On the bench image (a
//! quarter random blocks) that is 353.7 against 356.2 MB per GiB at level 11, at the same
//! CPU (bench/results/ANALYSIS.md, session 6).

use bytes::Bytes;
use vdrep_proto::wire::{Codec, ExtentHashing, ExtentHeader, ExtentOp, PackedMap, PACK_BLOCK};

use super::prepare::{raw_write, zero_run, Prepared, Zeros, ZERO_BLOCK};
use super::{AdaptiveLevel, Stats};

const _: () = assert!(
    PACK_BLOCK as usize == ZERO_BLOCK,
    "one block grid for zeros and maps"
);

/// Order-0 entropy (bits per byte, on a sample) from which a block goes raw. Random and
/// encrypted data measure ~7.99 on the sample; zstd, deflate and JPEG output 7.9–7.99, which
/// zstd shrinks by 1–2 % at best. Text measures 4–5, machine code ~6, and zstd keeps them.
/// Order 0 does not see repeats: a block that repeats incompressible bytes from earlier in
/// the read goes raw although a frame would have matched it (rare in practice).
const RAW_ENTROPY: f64 = 7.9;

/// Sampled bytes per 4 KiB of a block: a quarter, ~0.1 s per GiB of data.
const SAMPLE: usize = 1024;

/// How a block of a read travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Zero,
    Raw,
    Packed,
}

/// Whether zstd will not shrink `b` enough to pay (see [`RAW_ENTROPY`]). Blocks of less
/// than 16 KiB (a read's short tail) are left to the frame: their sample is too small.
fn incompressible(b: &[u8]) -> bool {
    if b.len() < 16 << 10 {
        return false;
    }
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for page in b.chunks(4096) {
        let s = &page[..page.len().min(SAMPLE)];
        for &x in s {
            counts[x as usize] += 1;
        }
        n += s.len() as u32;
    }
    let n = f64::from(n);
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits >= RAW_ENTROPY
}

/// Turns one read into extents: a packed write of its compressible blocks (when
/// compression pays), raw writes of the rest of its data, and its zero runs as `zeros`
/// says. Every source byte is accounted for by exactly one of them.
#[allow(clippy::too_many_arguments)]
pub(super) fn encode(
    offset: u64,
    data: &Bytes,
    runs: &[(usize, usize, bool)],
    l: i32,
    zeros: Zeros,
    hashing: ExtentHashing,
    level: &AdaptiveLevel,
    stats: &Stats,
) -> Vec<Prepared> {
    let mut class = Vec::with_capacity(data.len().div_ceil(ZERO_BLOCK));
    for &(s, e, zero) in runs {
        for b in (s..e).step_by(ZERO_BLOCK) {
            class.push(if zero {
                Class::Zero
            } else if incompressible(&data[b..(b + ZERO_BLOCK).min(e)]) {
                Class::Raw
            } else {
                Class::Packed
            });
        }
    }
    let mut packed = packed_write(offset, data, &class, l, hashing, stats);
    if packed.is_none() {
        // Nothing compressible, or the frame did not pay: those blocks go raw too.
        for c in class.iter_mut().filter(|c| **c == Class::Packed) {
            *c = Class::Raw;
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < class.len() {
        let c = class[i];
        let j = (i..class.len())
            .find(|&j| class[j] != c)
            .unwrap_or(class.len());
        let (s, e) = (i * ZERO_BLOCK, (j * ZERO_BLOCK).min(data.len()));
        let at = offset + s as u64;
        match c {
            Class::Zero => out.push(zero_run(at, (e - s) as u64, zeros, hashing, stats)),
            Class::Raw => {
                level.note_incompressible();
                // A raw run that is part of the read is copied out: this is its one copy.
                // A slice would keep the whole read buffer alive until QUIC has the run
                // acknowledged, and the budgets count only the run: at 1 Gbit/s 64 KiB
                // runs held 1 MiB buffers each, sender peak 189 instead of 112–119 MiB.
                let raw = if e - s == data.len() {
                    data.clone()
                } else {
                    Bytes::copy_from_slice(&data[s..e])
                };
                out.push(raw_write(at, raw, hashing, stats));
            }
            // The packed write goes where its first block is; later runs are inside it.
            Class::Packed => out.extend(packed.take()),
        }
        i = j;
    }
    out
}

/// The packed write from the first to the last compressible block; `None` when there is
/// none or the frame saves less than 3 % of the blocks it carries.
fn packed_write(
    offset: u64,
    data: &Bytes,
    class: &[Class],
    l: i32,
    hashing: ExtentHashing,
    stats: &Stats,
) -> Option<Prepared> {
    let first = class.iter().position(|&c| c == Class::Packed)?;
    let last = class.iter().rposition(|&c| c == Class::Packed)?;
    let (s, e) = (
        first * ZERO_BLOCK,
        ((last + 1) * ZERO_BLOCK).min(data.len()),
    );
    let length = (e - s) as u32;
    let map = PackedMap::new(length, |i| class[first + i] == Class::Packed);
    let at = offset + s as u64;
    let runs: Vec<(u64, &[u8])> = map
        .runs()
        .iter()
        .map(|&(a, b)| (at + a as u64, &data[s + a as usize..s + b as usize]))
        .collect();
    let parts: Vec<&[u8]> = runs.iter().map(|r| r.1).collect();
    let carried = map.carried_len() as u64;
    // This compression is the one copy of the carried blocks (into the payload, after the
    // map); zstd reads the parts in place.
    let c = crate::codec::zstd_ctx::compress_parts(map.as_bytes(), &parts, l).ok()?;
    let frame = (c.len() - map.as_bytes().len()) as u64;
    if frame * 100 >= carried * 97 {
        return None;
    }
    let hash = crate::codec::extent_hash(hashing, &runs);
    stats.add_payload(carried, c.len() as u64);
    Some(Prepared {
        header: Some(ExtentHeader {
            offset: offset + s as u64,
            length,
            op: ExtentOp::WritePacked,
            codec: Codec::Zstd,
            hash,
            payload_len: c.len() as u32,
        }),
        offset: offset + s as u64,
        payload: Bytes::from(c),
        source_len: carried,
    })
}

#[cfg(test)]
mod tests;

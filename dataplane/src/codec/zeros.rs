//! Zero detection on the 64 KiB grid both ends share: the sender skips zero runs and sends
//! clears, the receiver splits sparse writes on the same grid and checks a clear's hash.

/// Granularity of zero detection inside a chunk: 64 KiB is checked at ~35 GB/s and is small
/// enough to catch zero-filled file-system regions inside allocated blocks.
pub const ZERO_BLOCK: usize = 64 << 10;

use crate::parts::Parts;

/// BLAKE3 of `len` zero bytes, which is what a clear asks the receiver to produce.
pub fn zero_hash(len: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let zeros = [0u8; 8192];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(zeros.len());
        h.update(&zeros[..n]);
        left -= n;
    }
    *h.finalize().as_bytes()
}

/// Bytes OR-folded before [`is_zero`] looks at the result: a data block almost always shows
/// a non-zero byte in its first KiB, so it costs one piece instead of 64 KiB of folding.
const ZERO_PIECE: usize = 1024;

/// Whether a block is all zero; vectorised, ~35 GB/s on zero blocks, and a data block is
/// usually decided by its first [`ZERO_PIECE`] (folding all 64 KiB of every data block was
/// 2 % of a level-0 sender's instructions: bench/results/ANALYSIS.md, session 8).
pub fn is_zero(b: &[u8]) -> bool {
    b.chunks(ZERO_PIECE).all(|piece| {
        // OR-fold 16-byte words; the compiler vectorises this loop.
        let mut words = piece.chunks_exact(16);
        let acc = words.by_ref().fold(0u128, |acc, w| {
            acc | u128::from_ne_bytes(w.try_into().unwrap_or([0xff; 16]))
        });
        acc == 0 && words.remainder().iter().all(|&x| x == 0)
    })
}

/// Splits a read into maximal runs of zero and non-zero [`ZERO_BLOCK`]s: `(start, end, zero)`.
/// The receiver splits a sparse write with it on the same grid.
pub fn zero_runs(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let end = (pos + ZERO_BLOCK).min(data.len());
        let z = is_zero(&data[pos..end]);
        match runs.last_mut() {
            Some(r) if r.2 == z => r.1 = end,
            _ => runs.push((pos, end, z)),
        }
        pos = end;
    }
    runs
}

/// [`zero_runs`] of bytes held in several slices (a received frame's chunks): the same
/// runs as of the joined bytes, each block tested where it lies, piece by piece when it
/// straddles slices.
pub fn zero_runs_parts(data: Parts<'_>) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let end = (pos + ZERO_BLOCK).min(data.len());
        let z = data
            .sub(pos, end)
            .unwrap_or_default()
            .iter()
            .all(|p| is_zero(p));
        match runs.last_mut() {
            Some(r) if r.2 == z => r.1 = end,
            _ => runs.push((pos, end, z)),
        }
        pos = end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_slices_are_the_runs_of_the_joined_bytes() {
        let z = ZERO_BLOCK;
        let mut d = vec![0u8; 5 * z + 300];
        d[z + 7] = 1; // block 1: data, its first byte near a cut below
        d[3 * z - 1] = 2; // block 2: data only in its last byte, which straddles
        d[5 * z + 299] = 3; // the short last block
        let cuts_list: Vec<Vec<usize>> = vec![
            vec![],
            vec![0, 0, 5 * z + 300],
            vec![z + 7, z + 8, 3 * z - 2],
            (1410..d.len()).step_by(1410).collect(),
            (16_330..d.len()).step_by(16_330).collect(),
        ];
        for cuts in cuts_list {
            let mut sl: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for &c in &cuts {
                sl.push(&d[at..c]);
                at = c;
            }
            sl.push(&d[at..]);
            assert_eq!(
                zero_runs_parts(Parts::new(&sl)),
                zero_runs(&d),
                "cut at {cuts:?}"
            );
        }
        let none: [&[u8]; 0] = [];
        assert!(zero_runs_parts(Parts::new(&none)).is_empty());
    }

    #[test]
    fn a_block_is_zero_only_if_every_byte_is_whatever_piece_holds_the_non_zero_one() {
        assert!(is_zero(&vec![0u8; ZERO_BLOCK]));
        assert!(is_zero(&[]));
        // A non-zero byte in the first piece, in a later piece, in the last word of a piece,
        // in the 16-byte remainder of a short block, and as the very last byte.
        for at in [0, 5, ZERO_PIECE + 17, 2 * ZERO_PIECE - 1, ZERO_BLOCK - 1] {
            let mut b = vec![0u8; ZERO_BLOCK];
            b[at] = 1;
            assert!(!is_zero(&b), "non-zero byte at {at}");
        }
        let mut short = vec![0u8; ZERO_PIECE + 7];
        assert!(is_zero(&short));
        short[ZERO_PIECE + 6] = 0x80;
        assert!(!is_zero(&short));
    }

    #[test]
    fn runs_follow_the_64_kib_grid_and_merge_neighbours_of_a_kind() {
        let z = ZERO_BLOCK;
        let mut d = vec![0u8; 4 * z + 100];
        d[z + z / 2] = 1; // block 1: data
        d[2 * z + z - 1] = 1; // block 2: data, non-zero only in its last byte
        d[4 * z + 99] = 1; // the short tail: data
        assert_eq!(
            zero_runs(&d),
            vec![
                (0, z, true),
                (z, 3 * z, false),
                (3 * z, 4 * z, true),
                (4 * z, 4 * z + 100, false)
            ]
        );
    }
}

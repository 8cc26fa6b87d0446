//! BLAKE3 of 8 whole 4 KiB pages side by side with AVX2, for CPUs without AVX-512: lane `p`
//! of every vector holds page `p`'s state, as in [`super::avx512`] (4 chunks of 16 blocks,
//! two parents and the root parent, the compressions `blake3::hash` makes, 8 at a time).
//! The message words of a half block come from the 8 pages by one 8×8 transpose. AVX2 has no
//! rotate: 16 and 8 bits are byte shuffles, 12 and 7 two shifts and an or.

use std::arch::x86_64::*;

use super::lanes::{block_flags, load8, page_ptrs, page_ref_ptrs, transpose};
use super::lanes::{BLOCK, CHUNK, IV, PARENT, ROOT};

/// Pages hashed per call.
pub(super) const LANES: usize = 8;

/// Whether this CPU runs [`hash_pages`] (checked once).
pub(super) fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
}

/// The BLAKE3 hashes of the 8 pages of `pages` (exactly `8 × 4 KiB`, any alignment). Only
/// call it when [`available`] says so.
pub(super) fn hash_pages(pages: &[u8]) -> [[u8; 32]; LANES] {
    assert!(available());
    let ptr = page_ptrs::<LANES>(pages);
    // SAFETY: the CPU has AVX2 (asserted above), and `pages` holds the 8 pages every
    // (unaligned) load reads from (`page_ptrs` asserts it).
    unsafe { hash8(ptr) }
}

/// [`hash_pages`] of 8 pages that need not lie next to each other (each exactly 4 KiB).
pub(super) fn hash_page_refs(pages: &[&[u8]]) -> [[u8; 32]; LANES] {
    assert!(available());
    let ptr = page_ref_ptrs::<LANES>(pages);
    // SAFETY: the CPU has AVX2 (asserted above), and each pointer starts a page of 4 KiB
    // (`page_ref_ptrs` asserts it).
    unsafe { hash8(ptr) }
}

#[target_feature(enable = "avx2")]
unsafe fn hash8(ptr: [*const u8; LANES]) -> [[u8; 32]; LANES] {
    let mut cvs = [[_mm256_setzero_si256(); 8]; 4];
    for (j, cv) in cvs.iter_mut().enumerate() {
        *cv = iv();
        for b in 0..CHUNK / BLOCK {
            let at = j * CHUNK + b * BLOCK;
            let (lo, hi) = (load8(&ptr, 0, at), load8(&ptr, 0, at + 32));
            let m = [
                lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3],
                hi[4], hi[5], hi[6], hi[7],
            ];
            compress(cv, &m, j as u32, block_flags(b));
        }
    }
    let left = parent(&cvs[0], &cvs[1], PARENT);
    let right = parent(&cvs[2], &cvs[3], PARENT);
    let mut root = parent(&left, &right, PARENT | ROOT);
    // Word `w` of every page to the 8 words of each page: a page's hash is its words in
    // little-endian order, as they lie in a vector.
    transpose(&mut root);
    let mut out = [[0u8; 32]; LANES];
    for (o, r) in out.iter_mut().zip(root) {
        _mm256_storeu_si256(o.as_mut_ptr().cast(), r);
    }
    out
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn iv() -> [__m256i; 8] {
    [
        _mm256_set1_epi32(IV[0] as i32),
        _mm256_set1_epi32(IV[1] as i32),
        _mm256_set1_epi32(IV[2] as i32),
        _mm256_set1_epi32(IV[3] as i32),
        _mm256_set1_epi32(IV[4] as i32),
        _mm256_set1_epi32(IV[5] as i32),
        _mm256_set1_epi32(IV[6] as i32),
        _mm256_set1_epi32(IV[7] as i32),
    ]
}

/// A parent node's chaining value (or, with `ROOT`, the hash) from its children's.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn parent(l: &[__m256i; 8], r: &[__m256i; 8], flags: u32) -> [__m256i; 8] {
    let m = [
        l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], r[0], r[1], r[2], r[3], r[4], r[5], r[6],
        r[7],
    ];
    let mut cv = iv();
    compress(&mut cv, &m, 0, flags);
    cv
}

/// `x`, hidden from the optimiser: it would otherwise fold a byte rotation into the next one
/// through the xor between them, and then make both (`rot16(rot8(a) ^ b)` became
/// `rot24(a) ^ rot16(b)` with `rot8(a)` kept for its other use: a fifth more shuffles, the
/// kernel no faster than `blake3::hash` per page).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn opaque(mut x: __m256i) -> __m256i {
    // SAFETY: an empty instruction sequence that claims to change the register.
    unsafe {
        std::arch::asm!("/* {0} */", inout(ymm_reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    x
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rot16(x: __m256i) -> __m256i {
    let k = _mm256_setr_epi8(
        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9,
        14, 15, 12, 13,
    );
    // The mask hidden too: a known one becomes two 16-bit shuffles, one more instruction.
    opaque(_mm256_shuffle_epi8(x, opaque(k)))
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rot8(x: __m256i) -> __m256i {
    let k = _mm256_setr_epi8(
        1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8,
        13, 14, 15, 12,
    );
    opaque(_mm256_shuffle_epi8(x, k))
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rot12(x: __m256i) -> __m256i {
    _mm256_or_si256(_mm256_srli_epi32::<12>(x), _mm256_slli_epi32::<20>(x))
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rot7(x: __m256i) -> __m256i {
    _mm256_or_si256(_mm256_srli_epi32::<7>(x), _mm256_slli_epi32::<25>(x))
}

/// BLAKE3's quarter round on four rows of the state.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn g(v: &mut [__m256i; 16], a: usize, b: usize, c: usize, d: usize, x: __m256i, y: __m256i) {
    v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), x);
    v[d] = rot16(_mm256_xor_si256(v[d], v[a]));
    v[c] = _mm256_add_epi32(v[c], v[d]);
    v[b] = rot12(_mm256_xor_si256(v[b], v[c]));
    v[a] = _mm256_add_epi32(_mm256_add_epi32(v[a], v[b]), y);
    v[d] = rot8(_mm256_xor_si256(v[d], v[a]));
    v[c] = _mm256_add_epi32(v[c], v[d]);
    v[b] = rot7(_mm256_xor_si256(v[b], v[c]));
}

/// One of the seven rounds, the message words taken in BLAKE3's order for it (the message
/// permuted once per round, written out so that every index is a constant: a loop that
/// permuted an array, or a function taking the order, ran no faster than `blake3::hash` per
/// page; the four quarter rounds interleaved step by step were 10 % slower than one after
/// another).
macro_rules! round {
    ($v:ident, $m:ident, $($s:literal)*) => {{
        let s: [usize; 16] = [$($s),*];
        g(&mut $v, 0, 4, 8, 12, $m[s[0]], $m[s[1]]);
        g(&mut $v, 1, 5, 9, 13, $m[s[2]], $m[s[3]]);
        g(&mut $v, 2, 6, 10, 14, $m[s[4]], $m[s[5]]);
        g(&mut $v, 3, 7, 11, 15, $m[s[6]], $m[s[7]]);
        g(&mut $v, 0, 5, 10, 15, $m[s[8]], $m[s[9]]);
        g(&mut $v, 1, 6, 11, 12, $m[s[10]], $m[s[11]]);
        g(&mut $v, 2, 7, 8, 13, $m[s[12]], $m[s[13]]);
        g(&mut $v, 3, 4, 9, 14, $m[s[14]], $m[s[15]]);
    }};
}

/// One compression of a full 64-byte block in every lane; `cv` becomes the output
/// chaining value.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn compress(cv: &mut [__m256i; 8], m: &[__m256i; 16], counter: u32, flags: u32) {
    let mut v = [
        cv[0],
        cv[1],
        cv[2],
        cv[3],
        cv[4],
        cv[5],
        cv[6],
        cv[7],
        _mm256_set1_epi32(IV[0] as i32),
        _mm256_set1_epi32(IV[1] as i32),
        _mm256_set1_epi32(IV[2] as i32),
        _mm256_set1_epi32(IV[3] as i32),
        _mm256_set1_epi32(counter as i32),
        _mm256_setzero_si256(),
        _mm256_set1_epi32(BLOCK as i32),
        _mm256_set1_epi32(flags as i32),
    ];
    round!(v, m, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    round!(v, m, 2 6 3 10 7 0 4 13 1 11 12 5 9 14 15 8);
    round!(v, m, 3 4 10 12 13 2 7 14 6 5 9 0 11 15 8 1);
    round!(v, m, 10 7 12 9 14 3 13 15 4 0 11 2 5 8 1 6);
    round!(v, m, 12 13 9 11 15 10 14 8 7 2 5 3 0 1 6 4);
    round!(v, m, 9 14 11 5 8 12 15 1 13 3 0 10 2 6 4 7);
    round!(v, m, 11 15 5 0 1 9 8 6 14 10 2 12 3 4 7 13);
    for i in 0..8 {
        cv[i] = _mm256_xor_si256(v[i], v[i + 8]);
    }
}

//! BLAKE3 of 16 whole 4 KiB pages side by side with AVX-512: lane `p` of every vector holds
//! page `p`'s state. A page is 4 chunks of 16 blocks, then two parents and the root parent
//! (BLAKE3's tree over 4 KiB), the same compressions `blake3::hash` makes, 16 at a time.
//! The message words of a block come from 16 pages by two 8×8 transposes per half.

use std::arch::x86_64::*;

use super::lanes::{block_flags, load8, page_ptrs, page_ref_ptrs};
use super::lanes::{BLOCK, CHUNK, IV, PARENT, ROOT};

/// Pages hashed per call.
pub(super) const LANES: usize = 16;

/// Whether this CPU runs [`hash_pages`] (checked once).
pub(super) fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2"))
}

/// The BLAKE3 hashes of the 16 pages of `pages` (exactly `16 × 4 KiB`). Only call it when
/// [`available`] says so.
pub(super) fn hash_pages(pages: &[u8]) -> [[u8; 32]; LANES] {
    assert!(available());
    let ptr = page_ptrs::<LANES>(pages);
    // SAFETY: the CPU has AVX-512F and AVX2 (asserted above), and `pages` holds the
    // 16 pages every load reads from (`page_ptrs` asserts it).
    unsafe { hash16(ptr) }
}

/// [`hash_pages`] of 16 pages that need not lie next to each other (each exactly 4 KiB).
pub(super) fn hash_page_refs(pages: &[&[u8]]) -> [[u8; 32]; LANES] {
    assert!(available());
    let ptr = page_ref_ptrs::<LANES>(pages);
    // SAFETY: the CPU has AVX-512F and AVX2 (asserted above), and each pointer starts a
    // page of 4 KiB (`page_ref_ptrs` asserts it).
    unsafe { hash16(ptr) }
}

#[target_feature(enable = "avx512f,avx2")]
unsafe fn hash16(ptr: [*const u8; LANES]) -> [[u8; 32]; LANES] {
    let mut cvs = [[_mm512_setzero_si512(); 8]; 4];
    for (j, cv) in cvs.iter_mut().enumerate() {
        *cv = iv();
        for b in 0..CHUNK / BLOCK {
            let at = j * CHUNK + b * BLOCK;
            let (lo0, lo1) = (load8(&ptr, 0, at), load8(&ptr, 8, at));
            let (hi0, hi1) = (load8(&ptr, 0, at + 32), load8(&ptr, 8, at + 32));
            let mut m = [_mm512_setzero_si512(); 16];
            for w in 0..8 {
                m[w] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo0[w]), lo1[w]);
                m[w + 8] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(hi0[w]), hi1[w]);
            }
            compress(cv, &m, j as u32, block_flags(b));
        }
    }
    let left = parent(&cvs[0], &cvs[1], PARENT);
    let right = parent(&cvs[2], &cvs[3], PARENT);
    let root = parent(&left, &right, PARENT | ROOT);
    let mut words = [[0u32; LANES]; 8];
    for (w, r) in words.iter_mut().zip(root) {
        _mm512_storeu_si512(w.as_mut_ptr().cast(), r);
    }
    let mut out = [[0u8; 32]; LANES];
    for (p, o) in out.iter_mut().enumerate() {
        for (w, word) in words.iter().enumerate() {
            o[w * 4..w * 4 + 4].copy_from_slice(&word[p].to_le_bytes());
        }
    }
    out
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn iv() -> [__m512i; 8] {
    [
        _mm512_set1_epi32(IV[0] as i32),
        _mm512_set1_epi32(IV[1] as i32),
        _mm512_set1_epi32(IV[2] as i32),
        _mm512_set1_epi32(IV[3] as i32),
        _mm512_set1_epi32(IV[4] as i32),
        _mm512_set1_epi32(IV[5] as i32),
        _mm512_set1_epi32(IV[6] as i32),
        _mm512_set1_epi32(IV[7] as i32),
    ]
}

/// A parent node's chaining value (or, with `ROOT`, the hash) from its children's.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn parent(l: &[__m512i; 8], r: &[__m512i; 8], flags: u32) -> [__m512i; 8] {
    let m = [
        l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], r[0], r[1], r[2], r[3], r[4], r[5], r[6],
        r[7],
    ];
    let mut cv = iv();
    compress(&mut cv, &m, 0, flags);
    cv
}

/// BLAKE3's quarter round on four rows of the state.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn g(v: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize, x: __m512i, y: __m512i) {
    v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), x);
    v[d] = _mm512_ror_epi32::<16>(_mm512_xor_si512(v[d], v[a]));
    v[c] = _mm512_add_epi32(v[c], v[d]);
    v[b] = _mm512_ror_epi32::<12>(_mm512_xor_si512(v[b], v[c]));
    v[a] = _mm512_add_epi32(_mm512_add_epi32(v[a], v[b]), y);
    v[d] = _mm512_ror_epi32::<8>(_mm512_xor_si512(v[d], v[a]));
    v[c] = _mm512_add_epi32(v[c], v[d]);
    v[b] = _mm512_ror_epi32::<7>(_mm512_xor_si512(v[b], v[c]));
}

/// One compression of a full 64-byte block in every lane; `cv` becomes the output
/// chaining value. Rounds are written out with the message permuted between them (a table
/// lookup per word kept the loop from unrolling: twice as slow).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn compress(cv: &mut [__m512i; 8], m: &[__m512i; 16], counter: u32, flags: u32) {
    let mut v = [
        cv[0],
        cv[1],
        cv[2],
        cv[3],
        cv[4],
        cv[5],
        cv[6],
        cv[7],
        _mm512_set1_epi32(IV[0] as i32),
        _mm512_set1_epi32(IV[1] as i32),
        _mm512_set1_epi32(IV[2] as i32),
        _mm512_set1_epi32(IV[3] as i32),
        _mm512_set1_epi32(counter as i32),
        _mm512_setzero_si512(),
        _mm512_set1_epi32(BLOCK as i32),
        _mm512_set1_epi32(flags as i32),
    ];
    let mut m = *m;
    for r in 0..7 {
        g(&mut v, 0, 4, 8, 12, m[0], m[1]);
        g(&mut v, 1, 5, 9, 13, m[2], m[3]);
        g(&mut v, 2, 6, 10, 14, m[4], m[5]);
        g(&mut v, 3, 7, 11, 15, m[6], m[7]);
        g(&mut v, 0, 5, 10, 15, m[8], m[9]);
        g(&mut v, 1, 6, 11, 12, m[10], m[11]);
        g(&mut v, 2, 7, 8, 13, m[12], m[13]);
        g(&mut v, 3, 4, 9, 14, m[14], m[15]);
        if r < 6 {
            m = [
                m[2], m[6], m[3], m[10], m[7], m[0], m[4], m[13], m[1], m[11], m[12], m[5], m[9],
                m[14], m[15], m[8],
            ];
        }
    }
    for i in 0..8 {
        cv[i] = _mm512_xor_si512(v[i], v[i + 8]);
    }
}

//! BLAKE3 of 4 whole 4 KiB pages side by side with SSE4.1, for CPUs without AVX2 (or where
//! AVX2 gains nothing): lane `p` of every vector holds page `p`'s state, as in
//! [`super::avx2`], 4 pages at a time. The message words of a quarter block come from the 4
//! pages by one 4×4 transpose.

use std::arch::x86_64::*;

/// Pages hashed per call.
pub(super) const LANES: usize = 4;
const PAGE: usize = super::PAGE as usize;
const CHUNK: usize = 1024;
const BLOCK: usize = 64;
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const PARENT: u32 = 4;
const ROOT: u32 = 8;

/// Whether this CPU runs [`hash_pages`] (checked once).
pub(super) fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("sse4.1"))
}

/// The BLAKE3 hashes of the 4 pages of `pages` (exactly `4 × 4 KiB`, any alignment). Only
/// call it when [`available`] says so.
pub(super) fn hash_pages(pages: &[u8]) -> [[u8; 32]; LANES] {
    assert!(available() && pages.len() == LANES * PAGE);
    // SAFETY: the CPU has SSE4.1 (asserted above; SSSE3's byte shuffle comes with it), and
    // `pages` holds the 4 pages every (unaligned) load reads from.
    unsafe { hash4(pages) }
}

#[target_feature(enable = "sse4.1")]
unsafe fn hash4(pages: &[u8]) -> [[u8; 32]; LANES] {
    let ptr = pages.as_ptr();
    let mut cvs = [[_mm_setzero_si128(); 8]; 4];
    for (j, cv) in cvs.iter_mut().enumerate() {
        *cv = iv();
        for b in 0..CHUNK / BLOCK {
            let at = j * CHUNK + b * BLOCK;
            let (q0, q1) = (load4(ptr, at), load4(ptr, at + 16));
            let (q2, q3) = (load4(ptr, at + 32), load4(ptr, at + 48));
            let m = [
                q0[0], q0[1], q0[2], q0[3], q1[0], q1[1], q1[2], q1[3], q2[0], q2[1], q2[2], q2[3],
                q3[0], q3[1], q3[2], q3[3],
            ];
            let mut flags = 0;
            if b == 0 {
                flags |= CHUNK_START;
            }
            if b == CHUNK / BLOCK - 1 {
                flags |= CHUNK_END;
            }
            compress(cv, &m, j as u32, flags);
        }
    }
    let left = parent(&cvs[0], &cvs[1], PARENT);
    let right = parent(&cvs[2], &cvs[3], PARENT);
    let root = parent(&left, &right, PARENT | ROOT);
    // Word `w` of every page to words 0..4 and 4..8 of each page: a page's hash is its
    // words in little-endian order, as they lie in a vector.
    let lo = transpose([root[0], root[1], root[2], root[3]]);
    let hi = transpose([root[4], root[5], root[6], root[7]]);
    let mut out = [[0u8; 32]; LANES];
    for (p, o) in out.iter_mut().enumerate() {
        _mm_storeu_si128(o.as_mut_ptr().cast(), lo[p]);
        _mm_storeu_si128(o.as_mut_ptr().add(16).cast(), hi[p]);
    }
    out
}

#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn iv() -> [__m128i; 8] {
    [
        _mm_set1_epi32(IV[0] as i32),
        _mm_set1_epi32(IV[1] as i32),
        _mm_set1_epi32(IV[2] as i32),
        _mm_set1_epi32(IV[3] as i32),
        _mm_set1_epi32(IV[4] as i32),
        _mm_set1_epi32(IV[5] as i32),
        _mm_set1_epi32(IV[6] as i32),
        _mm_set1_epi32(IV[7] as i32),
    ]
}

/// A parent node's chaining value (or, with `ROOT`, the hash) from its children's.
#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn parent(l: &[__m128i; 8], r: &[__m128i; 8], flags: u32) -> [__m128i; 8] {
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
#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn opaque(mut x: __m128i) -> __m128i {
    // SAFETY: an empty instruction sequence that claims to change the register.
    unsafe {
        std::arch::asm!("/* {0} */", inout(xmm_reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    x
}

#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn rot16(x: __m128i) -> __m128i {
    let k = _mm_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    // The mask hidden too: a known one becomes two 16-bit shuffles, one more instruction.
    opaque(_mm_shuffle_epi8(x, opaque(k)))
}

#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn rot8(x: __m128i) -> __m128i {
    let k = _mm_setr_epi8(1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12);
    opaque(_mm_shuffle_epi8(x, k))
}

#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn rot12(x: __m128i) -> __m128i {
    _mm_or_si128(_mm_srli_epi32::<12>(x), _mm_slli_epi32::<20>(x))
}

#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn rot7(x: __m128i) -> __m128i {
    _mm_or_si128(_mm_srli_epi32::<7>(x), _mm_slli_epi32::<25>(x))
}

/// BLAKE3's quarter round on four rows of the state.
#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn g(v: &mut [__m128i; 16], a: usize, b: usize, c: usize, d: usize, x: __m128i, y: __m128i) {
    v[a] = _mm_add_epi32(_mm_add_epi32(v[a], v[b]), x);
    v[d] = rot16(_mm_xor_si128(v[d], v[a]));
    v[c] = _mm_add_epi32(v[c], v[d]);
    v[b] = rot12(_mm_xor_si128(v[b], v[c]));
    v[a] = _mm_add_epi32(_mm_add_epi32(v[a], v[b]), y);
    v[d] = rot8(_mm_xor_si128(v[d], v[a]));
    v[c] = _mm_add_epi32(v[c], v[d]);
    v[b] = rot7(_mm_xor_si128(v[b], v[c]));
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
#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn compress(cv: &mut [__m128i; 8], m: &[__m128i; 16], counter: u32, flags: u32) {
    let mut v = [
        cv[0],
        cv[1],
        cv[2],
        cv[3],
        cv[4],
        cv[5],
        cv[6],
        cv[7],
        _mm_set1_epi32(IV[0] as i32),
        _mm_set1_epi32(IV[1] as i32),
        _mm_set1_epi32(IV[2] as i32),
        _mm_set1_epi32(IV[3] as i32),
        _mm_set1_epi32(counter as i32),
        _mm_setzero_si128(),
        _mm_set1_epi32(BLOCK as i32),
        _mm_set1_epi32(flags as i32),
    ];
    round!(v, m, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    round!(v, m, 2 6 3 10 7 0 4 13 1 11 12 5 9 14 15 8);
    round!(v, m, 3 4 10 12 13 2 7 14 6 5 9 0 11 15 8 1);
    round!(v, m, 10 7 12 9 14 3 13 15 4 0 11 2 5 8 1 6);
    round!(v, m, 12 13 9 11 15 10 14 8 7 2 5 3 0 1 6 4);
    round!(v, m, 9 14 11 5 8 12 15 1 13 3 0 10 2 6 4 7);
    round!(v, m, 11 15 5 0 1 9 8 6 14 10 2 12 3 4 7 13);
    for i in 0..8 {
        cv[i] = _mm_xor_si128(v[i], v[i + 8]);
    }
}

/// Words 0..4 of the 16 bytes at `at` of the 4 pages: vector `w` holds word `w` of each page.
#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn load4(pages: *const u8, at: usize) -> [__m128i; 4] {
    let mut v = [_mm_setzero_si128(); 4];
    for (p, x) in v.iter_mut().enumerate() {
        *x = _mm_loadu_si128(pages.add(p * PAGE + at).cast());
    }
    transpose(v)
}

/// Transposes a 4×4 matrix of 32-bit words held as 4 vectors.
#[target_feature(enable = "sse4.1")]
#[inline]
unsafe fn transpose(v: [__m128i; 4]) -> [__m128i; 4] {
    let ab_01 = _mm_unpacklo_epi32(v[0], v[1]);
    let ab_23 = _mm_unpackhi_epi32(v[0], v[1]);
    let cd_01 = _mm_unpacklo_epi32(v[2], v[3]);
    let cd_23 = _mm_unpackhi_epi32(v[2], v[3]);
    [
        _mm_unpacklo_epi64(ab_01, cd_01),
        _mm_unpackhi_epi64(ab_01, cd_01),
        _mm_unpacklo_epi64(ab_23, cd_23),
        _mm_unpackhi_epi64(ab_23, cd_23),
    ]
}

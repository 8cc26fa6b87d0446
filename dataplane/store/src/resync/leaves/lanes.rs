//! What the page kernels ([`super::avx2`], [`super::avx512`]) share, written once: BLAKE3's
//! constants for one 4 KiB page (its 4 chunks of 16 blocks, the flags, the IV), the block
//! flags of a chunk, the checked pointers to the pages of a call, and the AVX2 load of 32
//! bytes of 8 pages transposed into message words. What stays in each kernel is what makes
//! it fast on its CPU: its vector width, its rotations, how it writes out the rounds.

use std::arch::x86_64::*;

/// Bytes of a page.
pub(super) const PAGE: usize = super::PAGE as usize;
/// Bytes of a BLAKE3 chunk: a page is 4.
pub(super) const CHUNK: usize = 1024;
/// Bytes of a BLAKE3 block: a chunk is 16.
pub(super) const BLOCK: usize = 64;
/// BLAKE3's IV (SHA-256's).
pub(super) const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
/// Flag of a parent node's compression.
pub(super) const PARENT: u32 = 4;
/// Flag of the root's compression.
pub(super) const ROOT: u32 = 8;
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;

/// The flags of block `b` of a chunk: the first starts it, the last ends it.
#[inline(always)]
pub(super) fn block_flags(b: usize) -> u32 {
    let mut flags = 0;
    if b == 0 {
        flags |= CHUNK_START;
    }
    if b == CHUNK / BLOCK - 1 {
        flags |= CHUNK_END;
    }
    flags
}

/// Where each of the `N` pages of `pages` starts (exactly `N × 4 KiB`, any alignment).
pub(super) fn page_ptrs<const N: usize>(pages: &[u8]) -> [*const u8; N] {
    assert_eq!(pages.len(), N * PAGE);
    std::array::from_fn(|p| pages[p * PAGE..].as_ptr())
}

/// Where each of `N` pages that need not lie next to each other starts (each exactly 4 KiB).
pub(super) fn page_ref_ptrs<const N: usize>(pages: &[&[u8]]) -> [*const u8; N] {
    assert!(pages.len() == N && pages.iter().all(|p| p.len() == PAGE));
    std::array::from_fn(|p| pages[p].as_ptr())
}

/// Words 0..8 of the 32 bytes at `at` of pages `p0..p0 + 8`: vector `w` holds word `w` of
/// each page.
///
/// # Safety
/// The CPU has AVX2, and each of the 8 pointers starts at least `at + 32` readable bytes.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn load8<const N: usize>(
    pages: &[*const u8; N],
    p0: usize,
    at: usize,
) -> [__m256i; 8] {
    let mut v = [_mm256_setzero_si256(); 8];
    for (p, x) in v.iter_mut().enumerate() {
        *x = _mm256_loadu_si256(pages[p0 + p].add(at).cast());
    }
    transpose(&mut v);
    v
}

/// Transposes an 8×8 matrix of 32-bit words held as 8 vectors.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn transpose(v: &mut [__m256i; 8]) {
    let ab_0145 = _mm256_unpacklo_epi32(v[0], v[1]);
    let ab_2367 = _mm256_unpackhi_epi32(v[0], v[1]);
    let cd_0145 = _mm256_unpacklo_epi32(v[2], v[3]);
    let cd_2367 = _mm256_unpackhi_epi32(v[2], v[3]);
    let ef_0145 = _mm256_unpacklo_epi32(v[4], v[5]);
    let ef_2367 = _mm256_unpackhi_epi32(v[4], v[5]);
    let gh_0145 = _mm256_unpacklo_epi32(v[6], v[7]);
    let gh_2367 = _mm256_unpackhi_epi32(v[6], v[7]);
    let abcd_04 = _mm256_unpacklo_epi64(ab_0145, cd_0145);
    let abcd_15 = _mm256_unpackhi_epi64(ab_0145, cd_0145);
    let abcd_26 = _mm256_unpacklo_epi64(ab_2367, cd_2367);
    let abcd_37 = _mm256_unpackhi_epi64(ab_2367, cd_2367);
    let efgh_04 = _mm256_unpacklo_epi64(ef_0145, gh_0145);
    let efgh_15 = _mm256_unpackhi_epi64(ef_0145, gh_0145);
    let efgh_26 = _mm256_unpacklo_epi64(ef_2367, gh_2367);
    let efgh_37 = _mm256_unpackhi_epi64(ef_2367, gh_2367);
    v[0] = _mm256_permute2x128_si256::<0x20>(abcd_04, efgh_04);
    v[1] = _mm256_permute2x128_si256::<0x20>(abcd_15, efgh_15);
    v[2] = _mm256_permute2x128_si256::<0x20>(abcd_26, efgh_26);
    v[3] = _mm256_permute2x128_si256::<0x20>(abcd_37, efgh_37);
    v[4] = _mm256_permute2x128_si256::<0x31>(abcd_04, efgh_04);
    v[5] = _mm256_permute2x128_si256::<0x31>(abcd_15, efgh_15);
    v[6] = _mm256_permute2x128_si256::<0x31>(abcd_26, efgh_26);
    v[7] = _mm256_permute2x128_si256::<0x31>(abcd_37, efgh_37);
}

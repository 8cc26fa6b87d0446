//! The tree's leaves, fast: BLAKE3 of many 4 KiB pages at once, and the pieces of an
//! extent cut at the disk's page boundaries (protocol version 6 hashes an extent from them,
//! `proto/WIRE.md` §5).
//!
//! `blake3::hash` of one 4 KiB page runs its four chunks in one 4-lane SIMD call, then its
//! three parents one at a time: on this project's AVX-512 machine it hashes pages at
//! 0.41 s/GiB where a 1 MiB buffer takes 0.11 s/GiB, on a Zen 1 EPYC (AVX2 as 2×128 bit)
//! 1.01 against 0.67 s/GiB (`bench/results/ANALYSIS.md`, sessions 13 and 14). The `blake3`
//! crate offers no call for many short inputs, so a [`Kernel`] hashes several pages side by
//! side, one page per 32-bit lane of each vector, parents included: [`avx512`] 16 pages
//! (0.14–0.16 s/GiB there), [`avx2`] 8 (0.79 s/GiB on the Zen 1, 1.29× `blake3::hash` per
//! page; an Intel AVX2 core runs 256-bit operations whole and should gain more). The same
//! bytes: the tests check every kernel the CPU has against `blake3::hash`. Elsewhere, and for
//! a short page or a group too small for the kernel, `blake3::hash` does the work.

use super::{Hash, PAGE};
use crate::parts::Parts;

/// The code that hashes whole pages, several side by side. Each gives the bytes
/// `blake3::hash` gives for each page; they differ only in speed, and which one is fastest
/// depends on the CPU ([`Kernel::chosen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 16 pages per call in 512-bit vectors.
    Avx512,
    /// 8 pages per call in 256-bit vectors.
    Avx2,
    /// `blake3::hash` of each page (any CPU).
    PerPage,
}

impl Kernel {
    /// Every kernel this CPU can run, the one [`Kernel::chosen`] picks first, [`Kernel::PerPage`]
    /// last: tests and benchmarks run each of them, whatever the choice.
    pub fn available() -> Vec<Kernel> {
        [Kernel::Avx512, Kernel::Avx2, Kernel::PerPage]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }

    /// Whether this CPU has the instructions the kernel needs (checked once each).
    fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::available(),
            Kernel::PerPage => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernel [`page_hashes_into`] uses on this CPU: the widest it has.
    pub fn chosen() -> Kernel {
        static K: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *K.get_or_init(|| Kernel::available()[0])
    }

    /// Pages per call.
    fn lanes(self) -> usize {
        match self {
            Kernel::Avx512 => 16,
            Kernel::Avx2 => 8,
            Kernel::PerPage => 1,
        }
    }
}

/// Appends the hashes of `data`'s pages to `out`: `data` cut every [`PAGE`] bytes from its
/// start, the last piece short when `data.len()` is not a multiple of it.
pub fn page_hashes_into(data: &[u8], out: &mut Vec<Hash>) {
    page_hashes_with(Kernel::chosen(), data, out)
}

/// [`page_hashes_into`] with the kernel given, for tests and benchmarks that compare the
/// kernels on one CPU. Groups of whole pages go to `kernel`, what is left (fewer pages than
/// it takes, a short last page) to `blake3::hash`.
///
/// # Panics
/// When this CPU cannot run `kernel` (it is not in [`Kernel::available`]).
pub fn page_hashes_with(kernel: Kernel, data: &[u8], out: &mut Vec<Hash>) {
    assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
    let page = PAGE as usize;
    out.reserve(data.len().div_ceil(page));
    let mut groups = data.chunks_exact(kernel.lanes() * page);
    for g in groups.by_ref() {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => out.extend_from_slice(&avx512::hash_pages(g)),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => out.extend_from_slice(&avx2::hash_pages(g)),
            _ => out.push(*blake3::hash(g).as_bytes()),
        }
    }
    out.extend(
        groups
            .remainder()
            .chunks(page)
            .map(|p| *blake3::hash(p).as_bytes()),
    );
}

/// [`page_hashes_into`] of bytes held in several slices (a received frame's chunks, which
/// need not end on page boundaries): the same hashes as of the joined bytes. A page inside
/// one slice is hashed where it lies; only a page that straddles slices is copied, into a
/// staging page, so the kernel still takes whole groups.
pub fn page_hashes_parts_into(parts: Parts<'_>, out: &mut Vec<Hash>) {
    page_hashes_parts_with(Kernel::chosen(), parts, out)
}

/// [`page_hashes_parts_into`] with the kernel given (tests, benchmarks).
///
/// # Panics
/// When this CPU cannot run `kernel` (it is not in [`Kernel::available`]).
pub fn page_hashes_parts_with(kernel: Kernel, parts: Parts<'_>, out: &mut Vec<Hash>) {
    assert!(kernel.runs_here(), "{kernel:?} does not run on this CPU");
    let page = PAGE as usize;
    let lanes = kernel.lanes();
    out.reserve(parts.len().div_ceil(page));
    let slices = parts.slices();
    // A staging page per lane, for the pages that straddle slices (none in one slice).
    let mut stage = match slices.iter().filter(|s| !s.is_empty()).count() > 1 {
        true => vec![0u8; lanes * page],
        false => Vec::new(),
    };
    // Where the next page starts: slice `i`, byte `at` of it; `left` bytes from there.
    let (mut i, mut at, mut left) = (0usize, 0usize, parts.len());
    while left > 0 {
        // One group of up to `lanes` pages, each borrowed or copied into a slot of `stage`.
        let mut slots = stage.chunks_exact_mut(page);
        let mut group: [&[u8]; 16] = [&[]; 16];
        let mut n = 0;
        while n < lanes && left > 0 {
            let want = page.min(left);
            while at == slices[i].len() {
                (i, at) = (i + 1, 0);
            }
            if slices[i].len() - at >= want {
                group[n] = &slices[i][at..at + want];
                at += want;
            } else {
                let slot = slots.next().expect("a slot per lane when pages straddle");
                let mut got = 0;
                while got < want {
                    while at == slices[i].len() {
                        (i, at) = (i + 1, 0);
                    }
                    let k = (want - got).min(slices[i].len() - at);
                    slot[got..got + k].copy_from_slice(&slices[i][at..at + k]);
                    (got, at) = (got + k, at + k);
                }
                group[n] = &slot[..want];
            }
            left -= want;
            n += 1;
        }
        let g = &group[..n];
        let whole = n == lanes && g.iter().all(|p| p.len() == page);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if whole => out.extend_from_slice(&avx512::hash_page_refs(g)),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if whole => out.extend_from_slice(&avx2::hash_page_refs(g)),
            _ => out.extend(g.iter().map(|p| *blake3::hash(p).as_bytes())),
        }
    }
}

/// The hashes of `data`'s pages ([`page_hashes_into`]).
pub fn page_hashes(data: &[u8]) -> Vec<Hash> {
    let mut v = Vec::new();
    page_hashes_into(data, &mut v);
    v
}

/// The hash of a 4 KiB page of zeros.
pub fn zero_page_hash() -> Hash {
    static Z: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    *Z.get_or_init(|| *blake3::hash(&[0u8; PAGE as usize]).as_bytes())
}

/// The bytes `[offset, offset + len)` of a disk cut at every multiple of [`PAGE`] (disk
/// offsets, not offsets into the bytes), each piece hashed alone. A piece is a whole page
/// except, when the range does not start or end on a page boundary, the first and the last.
/// The whole pages' hashes are the resync tree's leaves, so a receiver that verified an
/// extent from its pieces feeds its index with them instead of hashing the bytes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    offset: u64,
    len: u64,
    hashes: Vec<Hash>,
}

impl Pieces {
    /// Hashes `data`, the bytes at disk offset `offset`.
    pub fn of(offset: u64, data: &[u8]) -> Pieces {
        let head = ((PAGE - offset % PAGE) % PAGE).min(data.len() as u64) as usize;
        let mut hashes = Vec::with_capacity(data.len().div_ceil(PAGE as usize) + 1);
        if head > 0 {
            hashes.push(*blake3::hash(&data[..head]).as_bytes());
        }
        page_hashes_into(&data[head..], &mut hashes);
        Pieces {
            offset,
            len: data.len() as u64,
            hashes,
        }
    }

    /// [`Pieces::of`] the bytes of `parts` (a received frame's chunks), each page hashed
    /// where it lies unless it straddles two slices ([`page_hashes_parts_into`]).
    pub fn of_parts(offset: u64, parts: Parts<'_>) -> Pieces {
        let len = parts.len();
        let head = ((PAGE - offset % PAGE) % PAGE).min(len as u64) as usize;
        let mut hashes = Vec::with_capacity(len.div_ceil(PAGE as usize) + 1);
        if let (true, Some(h)) = (head > 0, parts.range(0, head)) {
            hashes.push(*blake3::hash(&h).as_bytes());
        }
        if let Some(rest) = parts.sub(head, len) {
            page_hashes_parts_into(Parts::new(&rest), &mut hashes);
        }
        Pieces {
            offset,
            len: len as u64,
            hashes,
        }
    }

    /// The pieces' hashes in order.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The hash of the piece that is exactly `[start, end)`, if there is one: `start` on a
    /// page boundary, `end` at most a page past it, the piece neither cut short nor longer.
    pub fn piece(&self, start: u64, end: u64) -> Option<Hash> {
        let stop = self.offset + self.len;
        if !start.is_multiple_of(PAGE) || start < self.offset || end <= start || end - start > PAGE
        {
            return None;
        }
        if end != (start + PAGE).min(stop) {
            return None; // the piece at `start` is not `[start, end)`
        }
        // Piece 0 starts at `offset` (a head piece when it is not on a page boundary), and
        // piece i > 0 at the i-th page boundary after the page holding `offset`.
        let i = ((start - (self.offset - self.offset % PAGE)) / PAGE) as usize;
        self.hashes.get(i).copied()
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod lanes;

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2654435761) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn reference(data: &[u8]) -> Vec<Hash> {
        data.chunks(PAGE as usize)
            .map(|p| *blake3::hash(p).as_bytes())
            .collect()
    }

    /// Every kernel this CPU runs, each forced in turn (the dispatcher's choice would test
    /// one only), on whole groups, partial groups, short last pages and unaligned input.
    #[test]
    fn every_kernel_gives_blake3_of_each_page_at_every_length_and_alignment() {
        let p = PAGE as usize;
        let kernels = Kernel::available();
        eprintln!(
            "kernels on this CPU: {kernels:?}, chosen {:?}",
            Kernel::chosen()
        );
        assert_eq!(kernels.last(), Some(&Kernel::PerPage));
        assert_eq!(kernels[0], Kernel::chosen());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            kernels.contains(&Kernel::Avx2),
            is_x86_feature_detected!("avx2"),
            "the AVX2 kernel runs wherever the CPU has AVX2"
        );
        let mut lengths = vec![0, 1, 512, p - 1, p, p + 1, 37 * p, 64 * p + 3584];
        for lanes in [8, 16] {
            for pages in [lanes - 1, lanes, lanes + 1, 2 * lanes, 3 * lanes - 1] {
                lengths.extend([pages * p, pages * p + 100]);
            }
        }
        let d = noise(64 * p + 3584 + 7, 1);
        for k in &kernels {
            for &n in &lengths {
                // Start 0..7 bytes into the buffer: no kernel may rely on alignment.
                for skew in [0, 1, 4, 7] {
                    let data = &d[skew..skew + n];
                    let mut got = vec![[0xAA; 32]];
                    page_hashes_with(*k, data, &mut got);
                    assert_eq!(got[0], [0xAA; 32], "{k:?} keeps what `out` held");
                    assert_eq!(&got[1..], reference(data), "{k:?}, {n} bytes at +{skew}");
                }
            }
        }
        assert_eq!(page_hashes(&d), reference(&d), "the chosen kernel");
        assert_eq!(zero_page_hash(), reference(&[0u8; 4096])[0]);
    }

    /// Lanes must not mix: a changed byte at the start, the middle or the end of any page
    /// of a 16-page group (one group of each kernel or several) changes that page's hash only.
    #[test]
    fn a_changed_byte_changes_only_its_pages_hash_in_every_kernel() {
        let p = PAGE as usize;
        for k in Kernel::available() {
            let mut d = noise(16 * p, 9);
            let mut before = Vec::new();
            page_hashes_with(k, &d, &mut before);
            for page in 0..16 {
                for at in [0, 1000, p - 1] {
                    d[page * p + at] ^= 0x40;
                    let mut after = Vec::new();
                    page_hashes_with(k, &d, &mut after);
                    d[page * p + at] ^= 0x40;
                    let changed: Vec<_> = (0..16).filter(|&i| before[i] != after[i]).collect();
                    assert_eq!(changed, vec![page], "{k:?}, byte {at} of page {page}");
                    assert_eq!(
                        after,
                        reference(&{
                            let mut e = d.clone();
                            e[page * p + at] ^= 0x40;
                            e
                        })
                    );
                }
            }
        }
    }

    #[test]
    fn pieces_cut_at_disk_page_boundaries() {
        let p = PAGE;
        // Aligned: the pieces are the pages.
        let d = noise(3 * p as usize, 3);
        let x = Pieces::of(8 * p, &d);
        assert_eq!(x.hashes(), reference(&d).as_slice());
        assert_eq!(x.piece(9 * p, 10 * p), Some(reference(&d)[1]));
        assert_eq!(x.piece(7 * p, 8 * p), None);
        assert_eq!(x.piece(11 * p, 12 * p), None);
        assert_eq!(x.piece(8 * p + 512, 9 * p), None);
        // Unaligned at both ends: a 512-byte head, two pages, a 1 KiB tail.
        let d = noise(512 + 2 * p as usize + 1024, 4);
        let x = Pieces::of(5 * p - 512, &d);
        let h = |s: &[u8]| *blake3::hash(s).as_bytes();
        let (a, b) = (512usize, 512 + p as usize);
        assert_eq!(
            x.hashes(),
            &[
                h(&d[..a]),
                h(&d[a..b]),
                h(&d[b..b + p as usize]),
                h(&d[b + p as usize..])
            ]
        );
        assert_eq!(x.piece(5 * p, 6 * p), Some(h(&d[a..b])));
        assert_eq!(x.piece(6 * p, 7 * p), Some(h(&d[b..b + p as usize])));
        // The tail is a piece of its own but not a whole page.
        assert_eq!(x.piece(7 * p, 8 * p), None);
        assert_eq!(x.piece(7 * p, 7 * p + 1024), Some(h(&d[b + p as usize..])));
        // Inside one page.
        let d = noise(1024, 5);
        let x = Pieces::of(p + 1024, &d);
        assert_eq!(x.hashes(), &[h(&d)]);
        assert_eq!(x.piece(p, 2 * p), None);
    }

    /// Cuts `d` at `cuts` (sorted offsets, repeats make empty slices).
    fn split<'a>(d: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut v = Vec::new();
        let mut at = 0;
        for &c in cuts {
            v.push(&d[at..c]);
            at = c;
        }
        v.push(&d[at..]);
        v
    }

    /// Bytes in slices hash as the joined bytes do, whatever the cuts: pages inside one
    /// slice, pages straddling two or three slices, empty slices (first, last, between),
    /// a short last page, a single slice, and nothing at all; every kernel.
    #[test]
    fn pages_hash_the_same_in_slices_as_joined_for_every_kernel() {
        let p = PAGE as usize;
        let d = noise(40 * p + 1000, 11);
        let mut cases: Vec<(usize, Vec<usize>)> = vec![
            (0, vec![]),
            (0, vec![0, 0]),
            (p, vec![]),
            (p, vec![0]),
            (p, vec![p]),
            (p, vec![1, p - 1]),
            (3 * p + 7, vec![p / 2, p / 2, 2 * p + 1]),
            (17 * p, vec![100, 200, 5000, 5000, 9000]),
            (40 * p + 1000, vec![0, 40 * p + 1000]),
        ];
        // Loopback-like and MTU-like chunks (16,330 and 1,410 bytes), all straddling.
        for step in [16_330, 1_410, p, 8 * p] {
            let n = 40 * p + 1000;
            cases.push((n, (step..n).step_by(step).collect()));
        }
        for k in Kernel::available() {
            for (n, cuts) in &cases {
                let data = &d[..*n];
                let sl = split(data, cuts);
                let mut got = vec![[0xAA; 32]];
                page_hashes_parts_with(k, Parts::new(&sl), &mut got);
                assert_eq!(got[0], [0xAA; 32], "{k:?} keeps what `out` held");
                assert_eq!(
                    &got[1..],
                    reference(data),
                    "{k:?}, {n} bytes cut at {cuts:?}"
                );
            }
        }
    }

    #[test]
    fn pieces_of_slices_equal_pieces_of_the_joined_bytes() {
        let p = PAGE;
        let d = noise(20 * p as usize + 1536, 12);
        for offset in [0, 512, p - 512, 7 * p, 7 * p + 3584] {
            for len in [0usize, 512, 4096, 5 * 4096 + 512, d.len()] {
                let data = &d[..len];
                let cuts: Vec<usize> = (1000..len).step_by(1410).collect();
                let sl = split(data, &cuts);
                assert_eq!(
                    Pieces::of_parts(offset, Parts::new(&sl)),
                    Pieces::of(offset, data),
                    "{len} bytes at {offset}"
                );
            }
        }
    }
}

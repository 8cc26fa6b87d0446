//! The hash an extent header carries (`proto/WIRE.md` §5), made by the sender and checked
//! by the receiver with the same functions. Up to protocol version 5 it is BLAKE3 of the
//! extent's bytes; from version 6 ([`ExtentHashing::Pages`]) BLAKE3 over the hashes of the
//! bytes cut at the disk's 4 KiB page boundaries ([`Pieces`]). The receiver hashes its
//! resync index's pages anyway, so with version 6 it hashes each byte once: it checks the
//! extent from its pieces and hands the same pieces to the index. Every byte stays covered
//! by the sender's hash: a changed byte changes its piece's hash and so the extent's.

use vdrep_proto::wire::{ExtentHashing, RESYNC_PAGE};

use super::zero_hash;
use crate::resync::leaves::{zero_page_hash, Pieces};

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The hash of an extent whose bytes are `parts` back to back, each `(disk offset, bytes)`:
/// one part for a write, the carried runs for a packed write.
pub fn extent_hash(hashing: ExtentHashing, parts: &[(u64, &[u8])]) -> Hash {
    let mut h = blake3::Hasher::new();
    for &(offset, bytes) in parts {
        match hashing {
            ExtentHashing::Whole => h.update(bytes),
            ExtentHashing::Pages => h.update(Pieces::of(offset, bytes).hashes().as_flattened()),
        };
    }
    *h.finalize().as_bytes()
}

/// The version-6 hash of an extent from its parts' pieces, already computed.
pub fn pieces_hash<'a>(parts: impl IntoIterator<Item = &'a Pieces>) -> Hash {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.hashes().as_flattened());
    }
    *h.finalize().as_bytes()
}

/// The hash of `len` zero bytes at disk offset `offset`: what a clear carries. With page
/// hashes a clear of 1 GiB hashes 8 MiB of repeated page hashes, not 1 GiB of zeros.
pub fn zero_extent_hash(hashing: ExtentHashing, offset: u64, len: u32) -> Hash {
    if hashing == ExtentHashing::Whole {
        return zero_hash(len);
    }
    static ZEROS: [u8; RESYNC_PAGE as usize] = [0; RESYNC_PAGE as usize];
    let zeros = |n: u64| *blake3::hash(&ZEROS[..n as usize]).as_bytes();
    let len = len as u64;
    let head = ((RESYNC_PAGE - offset % RESYNC_PAGE) % RESYNC_PAGE).min(len);
    let pages = (len - head) / RESYNC_PAGE;
    let tail = len - head - pages * RESYNC_PAGE;
    let mut h = blake3::Hasher::new();
    if head > 0 {
        h.update(&zeros(head));
    }
    // The zero page's hash 2,048 times over: 64 KiB per update.
    const RUN: u64 = 2048;
    let run: Vec<u8> = zero_page_hash().repeat(RUN.min(pages) as usize);
    let mut left = pages;
    while left > 0 {
        let n = left.min(RUN);
        h.update(&run[..(n * 32) as usize]);
        left -= n;
    }
    if tail > 0 {
        h.update(&zeros(tail));
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_data::noise;

    fn by_definition(offset: u64, data: &[u8]) -> Hash {
        // Cut at every multiple of 4 KiB of the disk, hash each piece, hash the hashes.
        let mut cuts = vec![0usize];
        let mut at = offset - offset % RESYNC_PAGE + RESYNC_PAGE;
        while at < offset + data.len() as u64 {
            cuts.push((at - offset) as usize);
            at += RESYNC_PAGE;
        }
        cuts.push(data.len());
        let mut cat = Vec::new();
        for w in cuts.windows(2) {
            cat.extend_from_slice(blake3::hash(&data[w[0]..w[1]]).as_bytes());
        }
        *blake3::hash(&cat).as_bytes()
    }

    #[test]
    fn page_hashing_follows_its_definition_at_any_512_byte_alignment() {
        let data = noise(300 << 10, 7);
        for (offset, len) in [
            (0u64, 4096usize),
            (0, 300 << 10),
            (512, 4096),
            (3584, 1024),
            (1 << 30, 64 << 10),
            ((1 << 20) + 512, (128 << 10) - 1024),
            (4096 * 7 + 1024, 512),
        ] {
            let d = &data[..len];
            let got = extent_hash(ExtentHashing::Pages, &[(offset, d)]);
            assert_eq!(got, by_definition(offset, d), "{offset} + {len}");
            assert_eq!(pieces_hash([&Pieces::of(offset, d)]), got);
            assert_ne!(got, extent_hash(ExtentHashing::Whole, &[(offset, d)]));
        }
        assert_eq!(
            extent_hash(
                ExtentHashing::Whole,
                &[(0, &data[..5000]), (9 << 20, &data[5000..9000])]
            ),
            *blake3::hash(&data[..9000]).as_bytes()
        );
        // The hash depends on where the bytes lie on the page grid, not only on them.
        let d = &data[..8192];
        assert_ne!(
            extent_hash(ExtentHashing::Pages, &[(0, d)]),
            extent_hash(ExtentHashing::Pages, &[(512, d)])
        );
    }

    #[test]
    fn a_clear_hashes_as_its_zeros_would() {
        for (offset, len) in [
            (0u64, 4096u32),
            (512, 512),
            (512, 4096),
            (4096, 3 << 20),
            (1536, (5 << 20) + 1024),
            (0, 2049 * 4096),
        ] {
            let z = vec![0u8; len as usize];
            for hashing in [ExtentHashing::Whole, ExtentHashing::Pages] {
                assert_eq!(
                    zero_extent_hash(hashing, offset, len),
                    extent_hash(hashing, &[(offset, &z)]),
                    "{hashing:?} {offset} + {len}"
                );
            }
        }
    }
}

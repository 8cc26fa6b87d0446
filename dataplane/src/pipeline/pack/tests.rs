use super::*;
use crate::codec::test_data::{noise, words};
use crate::pipeline::prepare::prepare;
use crate::pipeline::WorkItem;
use std::io::Write;

const Z: usize = ZERO_BLOCK;

/// Text-like bytes: words from a small vocabulary.
fn text(n: usize, seed: u64) -> Vec<u8> {
    words(n, seed, 700)
}

fn prepared(content: &[u8], zeros: Zeros, level: i32) -> Vec<Prepared> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![0u8; 1 << 20]).unwrap();
    f.write_all(content).unwrap();
    let d = crate::disk::raw::RawDisk::new(crate::io::open(f.path()).unwrap()).unwrap();
    let item = WorkItem::Read {
        offset: 1 << 20,
        len: content.len() as u32,
    };
    prepare(
        &d,
        item,
        zeros,
        &AdaptiveLevel::new(level, false),
        &Stats::default(),
    )
    .unwrap()
}

#[test]
fn the_sample_entropy_tells_random_from_text_and_leaves_short_blocks_to_zstd() {
    assert!(incompressible(&noise(Z, 7)));
    assert!(!incompressible(&text(Z, 7)));
    // zstd's own output is not worth compressing again.
    let c = zstd::bulk::compress(&text(8 * Z, 3), 19).unwrap();
    assert!(incompressible(&c[..Z.min(c.len())]), "{} bytes", c.len());
    // Half random, half zero (a partly filled page of a random file) compresses 2×.
    let mut half = noise(Z, 9);
    half[Z / 2..].fill(0);
    assert!(!incompressible(&half));
    assert!(!incompressible(&noise(8 << 10, 3)));
}

#[test]
fn a_mixed_read_becomes_one_packed_write_raw_writes_and_zero_runs() {
    // zero | text | random | text text | zero | random
    let mut c = vec![0u8; 7 * Z];
    c[Z..2 * Z].copy_from_slice(&text(Z, 1));
    c[2 * Z..3 * Z].copy_from_slice(&noise(Z, 2));
    c[3 * Z..5 * Z].copy_from_slice(&text(2 * Z, 3));
    c[6 * Z..].copy_from_slice(&noise(Z, 4));
    let base = 1u64 << 20;
    for known_empty in [true, false] {
        let v = prepared(&c, Zeros::Pack { known_empty }, 9);
        let ops: Vec<_> = v
            .iter()
            .map(|p| {
                (
                    p.offset - base,
                    p.source_len,
                    p.header.map(|h| (h.op, h.codec)),
                )
            })
            .collect();
        let zero = |at: usize| {
            let h = (!known_empty).then_some((ExtentOp::Clear, Codec::Raw));
            (at as u64, Z as u64, h)
        };
        let raw = Some((ExtentOp::Write, Codec::Raw));
        assert_eq!(
            ops,
            vec![
                zero(0),
                (
                    Z as u64,
                    3 * Z as u64,
                    Some((ExtentOp::WritePacked, Codec::Zstd))
                ),
                (2 * Z as u64, Z as u64, raw),
                zero(5 * Z),
                (6 * Z as u64, Z as u64, raw),
            ]
        );
        // The packed write spans its first to last text block and carries only those.
        let p = &v[1];
        let h = p.header.unwrap();
        assert_eq!((h.offset, h.length), (base + Z as u64, 4 * Z as u32));
        let (map, frame) = PackedMap::split(h.length, &p.payload).unwrap();
        assert_eq!(
            map.runs(),
            vec![(0, Z as u32), (2 * Z as u32, 4 * Z as u32)]
        );
        let carried = [&c[Z..2 * Z], &c[3 * Z..5 * Z]].concat();
        assert_eq!(
            zstd::bulk::decompress(frame, carried.len()).unwrap(),
            carried
        );
        assert_eq!(h.hash, *blake3::hash(&carried).as_bytes());
        assert_eq!(h.payload_len as usize, p.payload.len());
        // Raw writes are the read's bytes, and every source byte counts once.
        assert_eq!(&v[2].payload[..], &c[2 * Z..3 * Z]);
        // ... copied out of the read buffer, not slices of it (which would keep the whole
        // buffer alive while QUIC holds them): two slices would lie 4 blocks apart.
        let (a, b) = (
            v[2].payload.as_ptr() as usize,
            v[4].payload.as_ptr() as usize,
        );
        assert_ne!(b.wrapping_sub(a), 4 * Z, "raw runs share the read buffer");
        assert_eq!(v.iter().map(|p| p.source_len).sum::<u64>(), c.len() as u64);
    }
}

#[test]
fn an_incompressible_read_is_never_compressed_and_uncompressible_text_goes_raw() {
    let c = noise(4 * Z, 11);
    let v = prepared(&c, Zeros::Pack { known_empty: true }, 9);
    assert_eq!(v.len(), 1);
    let h = v[0].header.unwrap();
    assert_eq!(
        (h.op, h.codec, h.length),
        (ExtentOp::Write, Codec::Raw, 4 * Z as u32)
    );
    assert_eq!(h.hash, *blake3::hash(&c).as_bytes());
    // Bytes of a 6.5-bit alphabet without repeats: below the entropy mark, so they are tried
    // in a frame; packed or raw, the extents must give back the read.
    let c: Vec<u8> = noise(2 * Z, 5).iter().map(|b| b % 91 + 32).collect();
    let v = prepared(&c, Zeros::Pack { known_empty: true }, 1);
    let back: Vec<u8> = v
        .iter()
        .flat_map(|p| {
            let h = p.header.unwrap();
            match h.op {
                ExtentOp::WritePacked => {
                    let (m, f) = PackedMap::split(h.length, &p.payload).unwrap();
                    zstd::bulk::decompress(f, m.carried_len() as usize).unwrap()
                }
                _ => p.payload.to_vec(),
            }
        })
        .collect();
    assert_eq!(back, c);
}

#[test]
fn without_compression_pack_mode_sends_plain_runs() {
    let mut c = text(3 * Z, 8);
    c[Z..2 * Z].fill(0);
    let v = prepared(&c, Zeros::Pack { known_empty: false }, 0);
    let ops: Vec<_> = v.iter().map(|p| p.header.unwrap().op).collect();
    assert_eq!(ops, vec![ExtentOp::Write, ExtentOp::Clear, ExtentOp::Write]);
    assert!(v.iter().all(|p| p.header.unwrap().codec == Codec::Raw));
}

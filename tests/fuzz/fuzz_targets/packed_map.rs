//! `PackedMap::split` on an extent length and payload from the input, then what the receiver
//! does with an accepted map: its runs, the bytes they carry, and the bounded decompression of
//! the frame into exactly that many bytes (`zstd_ctx::with_decompressed`). Bytes 0..4 are the
//! extent length (LE, capped at the 1 MiB frame limit the wire allows), the rest the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep::codec::zstd_ctx;
use vdrep_proto::wire::{PackedMap, PACK_BLOCK};

fuzz_target!(|data: &[u8]| {
    let Some((len, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let length = u32::from_le_bytes(*len) % ((4 << 20) + 1);
    let Ok((map, frame)) = PackedMap::split(length, payload) else {
        return;
    };
    assert!(!frame.is_empty());
    assert_eq!(map.as_bytes().len(), PackedMap::encoded_len(length));
    assert_eq!(
        map.as_bytes().len() + frame.len(),
        payload.len(),
        "split loses bytes"
    );
    let runs = map.runs();
    assert!(!runs.is_empty(), "an accepted map carries a block");
    let mut prev_end = None;
    for &(a, b) in &runs {
        assert!(a < b && b <= length, "run {a}..{b} outside {length}");
        assert_eq!(a % PACK_BLOCK, 0);
        if let Some(p) = prev_end {
            assert!(p < a, "runs not maximal and ordered");
        }
        prev_end = Some(b);
    }
    let carried = map.carried_len();
    assert_eq!(carried, runs.iter().map(|r| r.1 - r.0).sum::<u32>());
    assert!(carried <= length);
    zstd_ctx::with_decompressed(frame, carried as usize, |out| {
        if let Some(out) = out {
            assert_eq!(out.len(), carried as usize);
        }
    });
    // The map re-encodes to the bytes it came from.
    let again = PackedMap::new(length, |i| map.carries(i));
    assert_eq!(again, map);
});

//! The VHD dynamic header, BAT, locator and bitmap decoders on any bytes; whatever decodes
//! must survive encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep_proto::formats::vhd::dynamic::{
    bitmap_bit, bitmap_runs, decode_bat, decode_locator_path, encode_bat, encode_locator_path,
    DynamicHeader, HEADER_COOKIE, HEADER_SIZE,
};
use vdrep_proto::formats::vhd::footer::vhd_checksum;

fuzz_target!(|data: &[u8]| {
    let _ = DynamicHeader::decode(data);
    if data.len() >= HEADER_SIZE {
        let mut b = data[..HEADER_SIZE].to_vec();
        b[..8].copy_from_slice(HEADER_COOKIE);
        let sum = vhd_checksum(&b, 36);
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        if let Ok(h) = DynamicHeader::decode(&b) {
            let _ = h.bitmap_bytes();
            for l in &h.parent_locators {
                let _ = l.space_bytes();
            }
            assert_eq!(DynamicHeader::decode(&h.encode()).unwrap(), h);
        }
    }
    let n = data.first().map_or(0, |&x| usize::from(x) * 3);
    if let Ok(bat) = decode_bat(data, n) {
        assert_eq!(bat.len(), n);
        assert_eq!(decode_bat(&encode_bat(&bat), n).unwrap(), bat);
    }
    if let Ok(p) = decode_locator_path(data) {
        assert_eq!(decode_locator_path(&encode_locator_path(&p)).unwrap(), p);
    }
    let sectors = (data.len() as u64 * 8).min(1 << 16);
    let runs = bitmap_runs(data, sectors);
    for r in runs.iter().take(64) {
        assert!(r.start < r.end && r.end <= sectors);
        assert!(bitmap_bit(data, r.start) && bitmap_bit(data, r.end - 1));
    }
});

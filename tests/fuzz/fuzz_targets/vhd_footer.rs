//! `Footer::decode` on any bytes; whatever decodes must survive encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep_proto::formats::vhd::footer::vhd_checksum;
use vdrep_proto::formats::vhd::{Footer, FOOTER_SIZE};

fuzz_target!(|data: &[u8]| {
    let _ = Footer::decode(data);
    // Sealed with a correct checksum, so the fields behind it are reached too.
    if data.len() >= FOOTER_SIZE {
        let mut b = data[..FOOTER_SIZE].to_vec();
        b[..8].copy_from_slice(b"conectix");
        let sum = vhd_checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        if let Ok(f) = Footer::decode(&b) {
            let _ = f.virtual_size();
            assert_eq!(Footer::decode(&f.encode()).unwrap(), f);
        }
    }
});

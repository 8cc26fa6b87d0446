//! `vdrep::sink::local::state::decode`, the local store's `NAME.state` record. First byte 0:
//! the rest is the record as is; otherwise the rest patches a valid record (so the decoder's
//! field checks are reached past its checksum, which is re-sealed). A decoded record must
//! re-encode to a record that decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep::sink::local::state::{decode, encode};
use vdrep_fuzz::{patch, reseal_state, valid_state_record};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode == 0 {
        rest.to_vec()
    } else {
        let mut b = valid_state_record(mode);
        let n = b.len();
        patch(&mut b, rest, &[(0, n)]);
        if mode & 1 == 1 {
            reseal_state(&mut b);
        }
        b
    };
    if let Ok(rec) = decode(&bytes) {
        let again = encode(&rec);
        let back = decode(&again).expect("a decoded record re-encodes to a valid one");
        assert_eq!(format!("{back:?}"), format!("{rec:?}"));
    }
});

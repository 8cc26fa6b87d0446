//! A control or data stream as the receiver and sender read it: frames split off one after
//! another, each body decoded by its kind (control messages, batch start, batch result).
//! Whatever decodes must survive encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep_proto::wire::{
    decode_frame, BatchResult, BatchStart, Control, FRAME_HEADER_LEN, K_BATCH_RESULT,
    K_BATCH_START, MAX_CONTROL_BODY,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((kind, body, used))) = decode_frame(buf, MAX_CONTROL_BODY) {
        assert!(used >= FRAME_HEADER_LEN && used <= buf.len());
        assert_eq!(used - FRAME_HEADER_LEN, body.len());
        match kind {
            K_BATCH_START => {
                if let Ok(m) = BatchStart::decode(body) {
                    assert_eq!(
                        BatchStart::decode(&m.encode()[FRAME_HEADER_LEN..]).unwrap(),
                        m
                    );
                }
            }
            K_BATCH_RESULT => {
                if let Ok(m) = BatchResult::decode(body) {
                    assert_eq!(
                        BatchResult::decode(&m.encode()[FRAME_HEADER_LEN..]).unwrap(),
                        m
                    );
                }
            }
            k => {
                if let Ok(m) = Control::decode(k, body) {
                    let f = m.encode();
                    assert_eq!(f[0], k);
                    assert_eq!(Control::decode(k, &f[FRAME_HEADER_LEN..]).unwrap(), m);
                }
            }
        }
        buf = &buf[used..];
    }
});

//! Extent frames as the receiver reads them: the frame header, then the fixed extent header
//! validated against the frame length. A valid header must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep_proto::wire::{
    decode_frame, ExtentHeader, EXTENT_HEADER_LEN, FRAME_HEADER_LEN, MAX_EXTENT_PAYLOAD,
};

fuzz_target!(|data: &[u8]| {
    // The fixed header alone, with a frame length taken from the input.
    if data.len() >= 4 {
        let frame_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let h = &data[4..];
        if let Ok(x) = ExtentHeader::decode(h, frame_len) {
            let f = x.encode_frame_prefix();
            assert_eq!(&f[FRAME_HEADER_LEN..], &h[..EXTENT_HEADER_LEN]);
            assert_eq!(u32::from_le_bytes([f[1], f[2], f[3], f[4]]), frame_len);
            assert!(x.offset.checked_add(u64::from(x.length)).is_some());
        }
    }
    // A stream of extent frames, as a data stream carries them after the batch start.
    let mut buf = data;
    while let Ok(Some((_, body, used))) =
        decode_frame(buf, MAX_EXTENT_PAYLOAD + EXTENT_HEADER_LEN as u32)
    {
        let head = body.get(..EXTENT_HEADER_LEN).unwrap_or(body);
        if let Ok(x) = ExtentHeader::decode(head, body.len() as u32) {
            assert_eq!(body.len(), EXTENT_HEADER_LEN + x.payload_len as usize);
        }
        buf = &buf[used..];
    }
});

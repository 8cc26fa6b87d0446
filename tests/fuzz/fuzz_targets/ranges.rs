//! `RangeSet::decode` and `decode_prefix`: only canonical sets decode, and they re-encode to
//! exactly the bytes they came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdrep_proto::RangeSet;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = RangeSet::decode(data) {
        assert_eq!(s.encode(), data);
        let v: Vec<_> = s.iter().collect();
        for w in v.windows(2) {
            assert!(w[0].end < w[1].start);
        }
        assert_eq!(
            s.covered_len(),
            v.iter().map(|r| r.end - r.start).sum::<u64>()
        );
    }
    if let Ok((s, used)) = RangeSet::decode_prefix(data) {
        assert!(used <= data.len());
        assert_eq!(s.encode(), &data[..used]);
    }
});

//! The [MS-HRL] checksum: a 32-bit wrapping sum of bytes, with the structure's own checksum
//! field counted as zero, bit-inverted.
//!
//! Checked against the spec's example: block #2's header (`PreviousMetadataLocation` 324096,
//! 58 valid entries) sums to 304 and stores `!304`; the example's entries sum to exactly the
//! bytes of `ByteOffset`, `DataLength`, `TimeStamp` and `MetaOperation`, so an entry's
//! checksum covers all 32 bytes (its `DataChecksum` included, 0 there). The header's
//! checksum covers the whole 4096-byte header (reserved bytes are zero, so this equals the
//! sum over its fields).

/// Running byte sum, so that data can be checksummed in bounded chunks as it streams past.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteSum(pub u32);

impl ByteSum {
    /// Adds `buf`'s bytes.
    pub fn update(&mut self, buf: &[u8]) {
        // Sum in u64 per chunk (no overflow below 2^56 bytes), then fold: same result as
        // byte-by-byte wrapping addition, faster.
        let s: u64 = buf.iter().map(|&b| b as u64).sum();
        self.0 = self.0.wrapping_add(s as u32);
    }

    /// The checksum of everything added: the inverted sum.
    pub fn finish(&self) -> u32 {
        !self.0
    }
}

/// Checksum of `buf` with the four bytes at `skip` (the checksum field) counted as zero.
pub fn checksum_skipping(buf: &[u8], skip: usize) -> u32 {
    let mut s = ByteSum::default();
    for (i, &b) in buf.iter().enumerate() {
        if i < skip || i >= skip.saturating_add(4) {
            s.0 = s.0.wrapping_add(b as u32);
        }
    }
    s.finish()
}

/// Checksum of an entry's data (`DataChecksum`). A stored value of 0 means "not recorded".
pub fn data_checksum(data: &[u8]) -> u32 {
    let mut s = ByteSum::default();
    s.update(data);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_inverted_wrapping_byte_sum_without_own_field() {
        let buf = [1u8, 2, 0xff, 0xff, 0xff, 0xff, 3];
        assert_eq!(checksum_skipping(&buf, 2), !6);
        assert_eq!(data_checksum(&[]), !0);
        // Wrapping: 2^24 + 1 bytes of 0xff.
        let mut s = ByteSum::default();
        let chunk = vec![0xffu8; 1 << 20];
        for _ in 0..(1 << 4) {
            s.update(&chunk);
        }
        assert_eq!(s.0, 0xffu32.wrapping_mul(1 << 24));
    }

    #[test]
    fn streaming_sum_equals_one_shot_sum() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut s = ByteSum::default();
        for c in data.chunks(333) {
            s.update(c);
        }
        assert_eq!(s.finish(), data_checksum(&data));
    }
}

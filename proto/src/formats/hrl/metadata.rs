//! Metadata blocks: a 32-byte block header, then 32-byte entries, padded to `MetadataSize`.

use super::checksum::checksum_skipping;
use super::{Defect, Structure};
use crate::error::Cursor;
use crate::FormatError;

/// `MetadataSize` Hyper-V uses.
pub const DEFAULT_METADATA_SIZE: u32 = 4096;
/// Size of a metadata block's header.
pub const BLOCK_HEADER_SIZE: usize = 32;
/// Size of one metadata entry.
pub const ENTRY_SIZE: usize = 32;
/// `MetaOperation` of a write, the only operation [MS-HRL] defines.
pub const OP_WRITE: u8 = 1;

const BLOCK_CHECKSUM_OFFSET: usize = 12;
const ENTRY_CHECKSUM_OFFSET: usize = 8;

/// The header of a metadata block. Its checksum covers these 32 bytes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockHeader {
    /// Distance in bytes back to the previous block's start; 0 for the first block.
    pub previous_metadata_location: u64,
    /// Number of entries in use, from slot 0.
    pub valid_metadata_entries: u32,
    /// `Checksum` as stored.
    pub checksum: u32,
}

impl BlockHeader {
    /// Reads the fields; fails only on a short buffer.
    pub fn parse(buf: &[u8]) -> Result<BlockHeader, FormatError> {
        let c = Cursor::new(buf, "HRL metadata block header");
        Ok(BlockHeader {
            previous_metadata_location: c.le_u64(0)?,
            valid_metadata_entries: c.le_u32(8)?,
            checksum: c.le_u32(12)?,
        })
    }

    /// Checksum of the 32 raw bytes `buf` (its own field counted as zero).
    pub fn compute_checksum(buf: &[u8]) -> u32 {
        checksum_skipping(
            buf.get(..BLOCK_HEADER_SIZE).unwrap_or(buf),
            BLOCK_CHECKSUM_OFFSET,
        )
    }

    /// Checks the checksum of the raw bytes and the entry count against the block's
    /// capacity. The defect's offset is relative to the block.
    pub fn validate(&self, buf: &[u8], capacity: u32) -> Result<(), (u64, Defect)> {
        let computed = Self::compute_checksum(buf);
        if computed != self.checksum {
            return Err((
                BLOCK_CHECKSUM_OFFSET as u64,
                Defect::Checksum {
                    structure: Structure::BlockHeader,
                    stored: self.checksum,
                    computed,
                },
            ));
        }
        if self.valid_metadata_entries > capacity {
            return Err((
                8,
                Defect::TooManyEntries {
                    count: self.valid_metadata_entries,
                    capacity,
                },
            ));
        }
        Ok(())
    }

    /// Encodes the 32 bytes with a fresh checksum.
    pub fn encode(&mut self) -> [u8; BLOCK_HEADER_SIZE] {
        let mut b = [0u8; BLOCK_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.previous_metadata_location.to_le_bytes());
        b[8..12].copy_from_slice(&self.valid_metadata_entries.to_le_bytes());
        self.checksum = checksum_skipping(&b, BLOCK_CHECKSUM_OFFSET);
        b[12..16].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }
}

/// One metadata entry: a write of `data_length` bytes at `byte_offset` of the virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetadataEntry {
    /// Disk offset of the write.
    pub byte_offset: u64,
    /// `Checksum` as stored: covers all 32 bytes, `DataChecksum` included.
    pub checksum: u32,
    /// Bytes written.
    pub data_length: u32,
    /// Time of the write, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// [`OP_WRITE`].
    pub meta_operation: u8,
    /// Checksum of the data; 0 = not recorded.
    pub data_checksum: u32,
    /// `Location` (kept as read; its meaning does not change how vdrep replays).
    pub location: u8,
}

impl MetadataEntry {
    /// Reads the fields; fails only on a short buffer.
    pub fn parse(buf: &[u8]) -> Result<MetadataEntry, FormatError> {
        let c = Cursor::new(buf, "HRL metadata entry");
        Ok(MetadataEntry {
            byte_offset: c.le_u64(0)?,
            checksum: c.le_u32(8)?,
            data_length: c.le_u32(12)?,
            timestamp: c.le_u32(16)?,
            meta_operation: c.u8(20)?,
            data_checksum: c.le_u32(21)?,
            location: c.u8(25)?,
        })
    }

    /// Checksum of the 32 raw bytes `buf` (its own field counted as zero).
    pub fn compute_checksum(buf: &[u8]) -> u32 {
        checksum_skipping(buf.get(..ENTRY_SIZE).unwrap_or(buf), ENTRY_CHECKSUM_OFFSET)
    }

    /// Checks the entry in `slot`: checksum of its raw bytes, operation, length (non-zero,
    /// whole sectors) and, when known, that it stays inside a disk of `disk_size` bytes.
    /// The defect's offset is relative to the entry.
    pub fn validate(
        &self,
        buf: &[u8],
        slot: u32,
        disk_size: Option<u64>,
    ) -> Result<(), (u64, Defect)> {
        let computed = Self::compute_checksum(buf);
        if computed != self.checksum {
            return Err((
                ENTRY_CHECKSUM_OFFSET as u64,
                Defect::Checksum {
                    structure: Structure::Entry { slot },
                    stored: self.checksum,
                    computed,
                },
            ));
        }
        if self.meta_operation != OP_WRITE {
            return Err((
                20,
                Defect::UnknownOperation {
                    slot,
                    op: self.meta_operation,
                },
            ));
        }
        if self.data_length == 0 {
            return Err((12, Defect::ZeroLength { slot }));
        }
        if self.data_length & 511 != 0 {
            return Err((
                12,
                Defect::UnalignedLength {
                    slot,
                    length: self.data_length,
                },
            ));
        }
        if let Some(size) = disk_size {
            let end = self.byte_offset.checked_add(self.data_length as u64);
            if end.is_none_or(|e| e > size) {
                return Err((
                    0,
                    Defect::PastDiskEnd {
                        slot,
                        offset: self.byte_offset,
                        length: self.data_length,
                        disk_size: size,
                    },
                ));
            }
        }
        Ok(())
    }

    /// Encodes the 32 bytes with a fresh checksum (over all 32 bytes, `DataChecksum`
    /// included, as the spec's example shows).
    pub fn encode(&mut self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.byte_offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.data_length.to_le_bytes());
        b[16..20].copy_from_slice(&self.timestamp.to_le_bytes());
        b[20] = self.meta_operation;
        b[21..25].copy_from_slice(&self.data_checksum.to_le_bytes());
        b[25] = self.location;
        self.checksum = checksum_skipping(&b, ENTRY_CHECKSUM_OFFSET);
        b[8..12].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }
}

/// Encodes a whole metadata block of `metadata_size` bytes: header, `entries` in slots
/// `0..n` (oldest first), zero padding. Entry checksums are recomputed.
pub fn encode_block(
    previous_metadata_location: u64,
    entries: &mut [MetadataEntry],
    metadata_size: u32,
) -> Vec<u8> {
    let mut b = vec![0u8; metadata_size as usize];
    let mut h = BlockHeader {
        previous_metadata_location,
        valid_metadata_entries: entries.len() as u32,
        checksum: 0,
    };
    if let Some(dst) = b.get_mut(..BLOCK_HEADER_SIZE) {
        dst.copy_from_slice(&h.encode());
    }
    for (i, e) in entries.iter_mut().enumerate() {
        let at = BLOCK_HEADER_SIZE + i * ENTRY_SIZE;
        if let Some(dst) = b.get_mut(at..at + ENTRY_SIZE) {
            dst.copy_from_slice(&e.encode());
        }
    }
    b
}

/// Decodes and validates a whole block buffer: the header, then each valid entry. Returns the
/// header and the entries in slot order, or the first defect with its offset in the block.
pub fn decode_block(
    buf: &[u8],
    metadata_size: u32,
    disk_size: Option<u64>,
) -> Result<(BlockHeader, Vec<MetadataEntry>), (u64, Defect)> {
    let truncated = |need: usize| {
        (
            0,
            Defect::Truncated {
                need: need as u64,
                len: buf.len() as u64,
            },
        )
    };
    if buf.len() < metadata_size as usize || (metadata_size as usize) < BLOCK_HEADER_SIZE {
        return Err(truncated(metadata_size as usize));
    }
    let raw_h = buf.get(..BLOCK_HEADER_SIZE).ok_or_else(|| truncated(32))?;
    let h = BlockHeader::parse(raw_h).map_err(|_| truncated(32))?;
    let capacity = metadata_size.saturating_sub(32) / 32;
    h.validate(raw_h, capacity)?;
    let mut out = Vec::with_capacity(h.valid_metadata_entries as usize);
    for slot in 0..h.valid_metadata_entries {
        let at = BLOCK_HEADER_SIZE + slot as usize * ENTRY_SIZE;
        let raw = buf
            .get(at..at + ENTRY_SIZE)
            .ok_or_else(|| truncated(at + 32))?;
        let e = MetadataEntry::parse(raw).map_err(|_| truncated(at + 32))?;
        e.validate(raw, slot, disk_size)
            .map_err(|(o, d)| (at as u64 + o, d))?;
        out.push(e);
    }
    Ok((h, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum(b: &[u8]) -> u32 {
        b.iter().map(|&x| x as u32).sum()
    }

    #[test]
    fn spec_example_block_two_header_sums_to_304() {
        // [MS-HRL] §3: the second block sits at 328192, the first at 4096, 58 entries.
        let mut h = BlockHeader {
            previous_metadata_location: 324_096,
            valid_metadata_entries: 58,
            checksum: 0,
        };
        let b = h.encode();
        assert_eq!(sum(&b[..12]) + sum(&b[16..]), 304);
        assert_eq!(h.checksum, !304u32);
        assert_eq!(BlockHeader::parse(&b).unwrap(), h);
        assert!(h.validate(&b, 127).is_ok());
    }

    #[test]
    fn entry_checksum_covers_all_32_bytes_including_data_checksum() {
        // The example's entries carry DataChecksum 0, so their sums are the bytes of
        // ByteOffset + DataLength + TimeStamp + MetaOperation.
        let mut e = MetadataEntry {
            byte_offset: 3_626_340_352,
            checksum: 0,
            data_length: 4096,
            timestamp: 0x1234_5678,
            meta_operation: OP_WRITE,
            data_checksum: 0,
            location: 0,
        };
        let b = e.encode();
        let expect = sum(&3_626_340_352u64.to_le_bytes())
            + sum(&4096u32.to_le_bytes())
            + sum(&0x1234_5678u32.to_le_bytes())
            + 1;
        assert_eq!(e.checksum, !expect);
        // With a DataChecksum, the entry checksum changes by exactly its bytes.
        let mut e2 = e;
        e2.data_checksum = 0x0102_0304;
        e2.encode();
        assert_eq!(e2.checksum, !(expect + 10));
        assert_eq!(MetadataEntry::parse(&b).unwrap(), e);
        assert!(e.validate(&b, 0, Some(4 << 30)).is_ok());
    }

    #[test]
    fn entry_defects_are_named() {
        let mk = |off: u64, len: u32, op: u8| {
            let mut e = MetadataEntry {
                byte_offset: off,
                data_length: len,
                meta_operation: op,
                ..Default::default()
            };
            let b = e.encode();
            e.validate(&b, 3, Some(1 << 20)).unwrap_err().1
        };
        assert_eq!(mk(0, 0, 1), Defect::ZeroLength { slot: 3 });
        assert_eq!(
            mk(0, 1000, 1),
            Defect::UnalignedLength {
                slot: 3,
                length: 1000
            }
        );
        assert_eq!(mk(0, 512, 2), Defect::UnknownOperation { slot: 3, op: 2 });
        assert!(matches!(
            mk((1 << 20) - 512, 1024, 1),
            Defect::PastDiskEnd { .. }
        ));
        assert!(matches!(
            mk(u64::MAX - 10, 1024, 1),
            Defect::PastDiskEnd { .. }
        ));
        let mut e = MetadataEntry {
            data_length: 512,
            meta_operation: 1,
            ..Default::default()
        };
        let mut b = e.encode();
        b[30] = 1; // reserved byte: covered by the checksum
        assert!(matches!(
            e.validate(&b, 0, None).unwrap_err().1,
            Defect::Checksum {
                structure: Structure::Entry { slot: 0 },
                ..
            }
        ));
    }

    #[test]
    fn block_round_trips_and_rejects_too_many_entries() {
        let mut es: Vec<MetadataEntry> = (0..5)
            .map(|i| MetadataEntry {
                byte_offset: i * 512,
                data_length: 512,
                timestamp: i as u32,
                meta_operation: OP_WRITE,
                data_checksum: 77,
                ..Default::default()
            })
            .collect();
        let b = encode_block(8192, &mut es, 4096);
        let (h, got) = decode_block(&b, 4096, None).unwrap();
        assert_eq!(h.previous_metadata_location, 8192);
        assert_eq!(got, es);
        let mut h = BlockHeader {
            previous_metadata_location: 0,
            valid_metadata_entries: 128,
            checksum: 0,
        };
        let mut big = vec![0u8; 4096];
        big[..32].copy_from_slice(&h.encode());
        assert_eq!(
            decode_block(&big, 4096, None).unwrap_err().1,
            Defect::TooManyEntries {
                count: 128,
                capacity: 127
            }
        );
    }

    proptest! {
        #[test]
        fn block_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4200),
                                      msize in prop_oneof![Just(0u32), Just(32), Just(512), Just(4096), any::<u32>()]) {
            let _ = decode_block(&bytes, msize, Some(1 << 30));
            let _ = BlockHeader::parse(&bytes);
            let _ = MetadataEntry::parse(&bytes);
        }

        #[test]
        fn mutated_block_never_panics(pos in 0usize..4096, val in any::<u8>(), n in 0usize..127) {
            let mut es: Vec<MetadataEntry> = (0..n as u64)
                .map(|i| MetadataEntry { byte_offset: i * 512, data_length: 512, meta_operation: 1, ..Default::default() })
                .collect();
            let mut b = encode_block(4096, &mut es, 4096);
            b[pos] = val;
            let _ = decode_block(&b, 4096, Some(1 << 20));
        }
    }

    proptest! {
        #[test]
        fn mutated_and_resized_blocks_never_panic_and_round_trip(
            ms in crate::mutate::mutations(), n in 0usize..20, fix in any::<bool>(),
            msize in prop_oneof![Just(4096u32), Just(512)],
        ) {
            let mut es: Vec<MetadataEntry> = (0..n as u64)
                .map(|i| MetadataEntry { byte_offset: i * 512, data_length: 512, meta_operation: OP_WRITE, data_checksum: i as u32, ..Default::default() })
                .collect();
            let n = n.min(msize as usize / ENTRY_SIZE - 1);
            let mut b = crate::mutate::mutated(&encode_block(4096, &mut es[..n], msize), &ms);
            if fix {
                // Re-seal every checksum so the field checks behind them are reached.
                if let Some(h) = b.get(..BLOCK_HEADER_SIZE) {
                    let sum = BlockHeader::compute_checksum(h);
                    b[12..16].copy_from_slice(&sum.to_le_bytes());
                }
                let mut at = BLOCK_HEADER_SIZE;
                while at + ENTRY_SIZE <= b.len() {
                    let sum = MetadataEntry::compute_checksum(&b[at..at + ENTRY_SIZE]);
                    b[at + 8..at + 12].copy_from_slice(&sum.to_le_bytes());
                    at += ENTRY_SIZE;
                }
            }
            let _ = MetadataEntry::parse(&b);
            if let Ok((h, mut got)) = decode_block(&b, msize, Some(1 << 20)) {
                prop_assert_eq!(got.len(), h.valid_metadata_entries as usize);
                let again = encode_block(h.previous_metadata_location, &mut got, msize);
                let (h2, got2) = decode_block(&again, msize, Some(1 << 20)).unwrap();
                prop_assert_eq!(h2.previous_metadata_location, h.previous_metadata_location);
                prop_assert_eq!(got2, got);
            }
        }
    }
}

//! BAT entries and geometry ([MS-VHDX] 2.5).
//!
//! The BAT interleaves payload entries with sector-bitmap entries: after every `chunk_ratio`
//! payload entries comes one sector-bitmap entry, where `chunk_ratio = 2^23 * logical sector
//! size / block size` (the number of payload blocks one 1 MiB sector bitmap block describes).

use super::MIB;
use crate::FormatError;

/// Bytes of one BAT entry.
pub const BAT_ENTRY_SIZE: u64 = 8;
/// Sectors one sector-bitmap block describes (2^23 bits in 1 MiB).
pub const SECTORS_PER_BITMAP: u64 = 1 << 23;

/// State of a payload block (bits 0..3 of a payload BAT entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadState {
    /// 0: not in the file (differencing: the parent's data; otherwise reads as zero).
    NotPresent,
    /// 1: contents undefined.
    Undefined,
    /// 2: reads as zeros.
    Zero,
    /// 3: unmapped by the guest (contents undefined).
    Unmapped,
    /// 6: all sectors in the file at `file_offset`.
    FullyPresent,
    /// 7: differencing only: the sector bitmap says which sectors are in this file.
    PartiallyPresent,
    /// 4, 5: reserved values.
    Reserved(u8),
}

impl PayloadState {
    /// The 3-bit code.
    pub fn code(self) -> u8 {
        match self {
            PayloadState::NotPresent => 0,
            PayloadState::Undefined => 1,
            PayloadState::Zero => 2,
            PayloadState::Unmapped => 3,
            PayloadState::FullyPresent => 6,
            PayloadState::PartiallyPresent => 7,
            PayloadState::Reserved(c) => c & 7,
        }
    }

    fn from_code(c: u8) -> Self {
        match c & 7 {
            0 => PayloadState::NotPresent,
            1 => PayloadState::Undefined,
            2 => PayloadState::Zero,
            3 => PayloadState::Unmapped,
            6 => PayloadState::FullyPresent,
            7 => PayloadState::PartiallyPresent,
            c => PayloadState::Reserved(c),
        }
    }
}

/// Sector-bitmap entry state: 6 = present, 0 = not present.
pub const SB_BLOCK_PRESENT: u8 = 6;

/// One BAT entry: a 3-bit state and a file offset in MiB in the top 44 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatEntry(pub u64);

impl BatEntry {
    /// Builds an entry from a state code and a byte offset (must be 1 MiB aligned).
    pub fn new(state: u8, file_offset: u64) -> Self {
        BatEntry(((file_offset / MIB) << 20) | u64::from(state & 7))
    }
    /// The raw 3-bit state.
    pub fn state_code(self) -> u8 {
        (self.0 & 7) as u8
    }
    /// As a payload entry.
    pub fn payload_state(self) -> PayloadState {
        PayloadState::from_code(self.state_code())
    }
    /// File offset in bytes (`FileOffsetMB` × 1 MiB).
    pub fn file_offset(self) -> u64 {
        (self.0 >> 20).saturating_mul(MIB)
    }
    /// Decodes an entry from 8 little-endian bytes.
    pub fn from_le(b: [u8; 8]) -> Self {
        BatEntry(u64::from_le_bytes(b))
    }
}

/// Where the entries of a disk's BAT are, derived from its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatGeometry {
    /// Payload block size.
    pub block_size: u64,
    /// Logical sector size.
    pub logical_sector_size: u64,
    /// Virtual size.
    pub virtual_size: u64,
    /// Differencing disks carry a sector-bitmap entry for every chunk, even the last partial one.
    pub has_parent: bool,
}

impl BatGeometry {
    /// Checks the inputs (block size 1..256 MiB power of two, sector 512/4096, size > 0).
    pub fn new(
        block_size: u64,
        logical_sector_size: u64,
        virtual_size: u64,
        has_parent: bool,
    ) -> Result<Self, FormatError> {
        if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&block_size) {
            return Err(FormatError::new(
                "VHDX BAT geometry",
                0,
                format!("block size {block_size} is not a power of two in 1..=256 MiB"),
            ));
        }
        if logical_sector_size != 512 && logical_sector_size != 4096 {
            return Err(FormatError::new(
                "VHDX BAT geometry",
                0,
                format!("logical sector size {logical_sector_size} is neither 512 nor 4096"),
            ));
        }
        if virtual_size == 0 {
            return Err(FormatError::new("VHDX BAT geometry", 0, "virtual size 0"));
        }
        Ok(BatGeometry {
            block_size,
            logical_sector_size,
            virtual_size,
            has_parent,
        })
    }

    /// Payload blocks per sector-bitmap block.
    pub fn chunk_ratio(&self) -> u64 {
        SECTORS_PER_BITMAP * self.logical_sector_size / self.block_size
    }

    /// Bytes of virtual disk one chunk (one sector-bitmap block) covers.
    pub fn chunk_size(&self) -> u64 {
        SECTORS_PER_BITMAP * self.logical_sector_size
    }

    /// Payload blocks of the virtual disk.
    pub fn data_blocks(&self) -> u64 {
        self.virtual_size.div_ceil(self.block_size)
    }

    /// Sector-bitmap blocks (chunks) of the virtual disk.
    pub fn bitmap_blocks(&self) -> u64 {
        self.data_blocks().div_ceil(self.chunk_ratio())
    }

    /// Entries the BAT must hold ([MS-VHDX] 2.5): dynamic and fixed disks omit the sector
    /// bitmap entry after the last partial chunk, differencing disks do not.
    pub fn total_entries(&self) -> u64 {
        let db = self.data_blocks();
        let cr = self.chunk_ratio();
        if self.has_parent {
            self.bitmap_blocks() * (cr + 1)
        } else {
            db + (db - 1) / cr
        }
    }

    /// Index in the BAT of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio()
    }

    /// Index in the BAT of the sector-bitmap entry of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio() + 1) + self.chunk_ratio()
    }

    /// Whether BAT index `i` is a sector-bitmap entry.
    pub fn is_bitmap_index(&self, i: u64) -> bool {
        i % (self.chunk_ratio() + 1) == self.chunk_ratio()
    }

    /// The payload block that BAT index `i` describes (None for bitmap entries).
    pub fn block_of_index(&self, i: u64) -> Option<u64> {
        let cr = self.chunk_ratio();
        if self.is_bitmap_index(i) {
            None
        } else {
            Some(i / (cr + 1) * cr + i % (cr + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_ratio_and_entry_counts_follow_the_spec() {
        let g = BatGeometry::new(32 * MIB, 512, 127 << 30, false).unwrap();
        assert_eq!(g.chunk_ratio(), 128);
        assert_eq!(g.data_blocks(), 4064);
        assert_eq!(g.total_entries(), 4064 + 4063 / 128);
        let d = BatGeometry::new(32 * MIB, 512, 127 << 30, true).unwrap();
        assert_eq!(d.total_entries(), 32 * 129);
        let g = BatGeometry::new(MIB, 4096, 1 << 30, false).unwrap();
        assert_eq!(g.chunk_ratio(), 32768);
        assert_eq!(g.payload_index(128), 128);
        let g = BatGeometry::new(32 * MIB, 512, 1 << 40, false).unwrap();
        assert_eq!(g.payload_index(128), 129);
        assert_eq!(g.bitmap_index(0), 128);
        assert!(g.is_bitmap_index(128));
        assert_eq!(g.block_of_index(129), Some(128));
        assert_eq!(g.block_of_index(128), None);
        assert!(BatGeometry::new(512 * MIB, 512, 1, false).is_err());
        assert!(BatGeometry::new(3 * MIB, 512, 1, false).is_err());
    }

    #[test]
    fn entry_packs_state_low_and_mib_offset_high() {
        let e = BatEntry::new(6, 5 * MIB);
        assert_eq!(e.0, (5 << 20) | 6);
        assert_eq!(e.payload_state(), PayloadState::FullyPresent);
        assert_eq!(e.file_offset(), 5 * MIB);
        assert_eq!(
            BatEntry(7 | (1 << 3)).payload_state(),
            PayloadState::PartiallyPresent
        );
        assert_eq!(BatEntry(4).payload_state(), PayloadState::Reserved(4));
    }

    proptest! {
        #[test]
        fn index_mapping_is_consistent(bs_log in 20u32..=28, lss in prop_oneof![Just(512u64), Just(4096)],
                                       block in 0u64..1_000_000) {
            let g = BatGeometry::new(1 << bs_log, lss, 1 << 45, false).unwrap();
            let i = g.payload_index(block);
            prop_assert!(!g.is_bitmap_index(i));
            prop_assert_eq!(g.block_of_index(i), Some(block));
        }

        #[test]
        fn entries_never_panic(raw in any::<u64>()) {
            let e = BatEntry(raw);
            let _ = e.payload_state();
            let _ = e.file_offset();
        }
    }
}

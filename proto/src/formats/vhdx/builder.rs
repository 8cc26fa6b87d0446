//! Assembles whole VHDX images in memory, for tests and fixtures: qemu-img cannot make
//! differencing VHDX files, 4 KiB-sector disks or dirty logs, and a reader's error paths need
//! images that are wrong in exactly one way.
//!
//! Layout: identifier, two headers, two region tables, the log at 1 MiB (1 MiB), the BAT at
//! 2 MiB, metadata at 2 MiB + BAT size, blocks appended after that in the order they are set.

use super::bat::{BatEntry, BatGeometry, SB_BLOCK_PRESENT};
use super::header::{encode_identifier, Header};
use super::log::{encode_entry, LogEntry};
use super::metadata::{encode_metadata, vhdx_locator_type_guid, ParentLocator, VhdxMetadata};
use super::region::{bat_region_guid, encode_region_table, metadata_region_guid, RegionEntry};
use super::{HEADER_OFFSETS, MIB, REGION_TABLE_OFFSETS};
use crate::Guid;

/// Offset of the log in built images.
pub const LOG_OFFSET: u64 = MIB;
/// Offset of the BAT in built images.
pub const BAT_OFFSET: u64 = 2 * MIB;

/// A VHDX image under construction.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    /// The metadata written to the metadata region.
    pub meta: VhdxMetadata,
    /// The header written to both header slots (sequence numbers 1 and 2).
    pub header: Header,
    /// BAT geometry of `meta`.
    pub geo: BatGeometry,
    bat: Vec<u64>,
    blocks: Vec<u8>,
    blocks_base: u64,
    log: Vec<u8>,
}

impl ImageBuilder {
    /// A dynamic disk of `virtual_size` bytes with `block_size` blocks and 512-byte sectors;
    /// every block not present.
    pub fn new(virtual_size: u64, block_size: u32) -> Self {
        Self::with_sectors(virtual_size, block_size, 512, 512)
    }

    /// Like [`ImageBuilder::new`] with explicit logical and physical sector sizes.
    pub fn with_sectors(virtual_size: u64, block_size: u32, lss: u32, pss: u32) -> Self {
        let meta = VhdxMetadata {
            block_size,
            leave_blocks_allocated: false,
            has_parent: false,
            virtual_size,
            virtual_disk_id: Guid([0x5a; 16]),
            logical_sector_size: lss,
            physical_sector_size: pss,
            parent_locator: None,
        };
        let geo = BatGeometry {
            block_size: u64::from(block_size),
            logical_sector_size: u64::from(lss),
            virtual_size,
            has_parent: false,
        };
        let header = Header {
            sequence_number: 1,
            file_write_guid: Guid([0x11; 16]),
            data_write_guid: Guid([0x22; 16]),
            log_guid: Guid::NIL,
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: LOG_OFFSET,
        };
        let mut b = ImageBuilder {
            meta,
            header,
            geo,
            bat: Vec::new(),
            blocks: Vec::new(),
            blocks_base: 0,
            log: vec![0u8; MIB as usize],
        };
        b.relayout();
        b
    }

    fn relayout(&mut self) {
        self.geo.has_parent = self.meta.has_parent;
        let n = self.geo.total_entries() as usize;
        self.bat.resize(n, 0);
        let bat_len = ((n as u64) * 8).div_ceil(MIB).max(1) * MIB;
        self.blocks_base = BAT_OFFSET + bat_len + MIB;
    }

    /// Makes the disk a differencing disk whose parent has DataWriteGuid `linkage` (written in
    /// upper case, braced, as the spec's example does) and sits at `relative_path`.
    pub fn differencing(mut self, linkage: Guid, relative_path: &str) -> Self {
        self.meta.has_parent = true;
        let text = format!("{{{linkage}}}").to_uppercase();
        self.meta.parent_locator = Some(ParentLocator {
            locator_type: vhdx_locator_type_guid(),
            entries: vec![
                ("parent_linkage".into(), text),
                ("relative_path".into(), relative_path.into()),
            ],
        });
        self.relayout();
        self
    }

    /// Sets this image's DataWriteGuid (what children link to).
    pub fn data_write_guid(mut self, g: Guid) -> Self {
        self.header.data_write_guid = g;
        self
    }

    /// Sets payload block `block` to `state`; with `data`, appends a block holding it (padded
    /// with zeros) and points the entry at it.
    pub fn block(&mut self, block: u64, state: u8, data: Option<&[u8]>) -> &mut Self {
        let off = data
            .map(|d| self.append(d, self.geo.block_size))
            .unwrap_or(0);
        let i = self.geo.payload_index(block) as usize;
        if let Some(e) = self.bat.get_mut(i) {
            *e = BatEntry::new(state, off).0;
        }
        self
    }

    /// Gives chunk `chunk` a sector bitmap (LSB first), padded to 1 MiB.
    pub fn bitmap(&mut self, chunk: u64, bits: &[u8]) -> &mut Self {
        let off = self.append(bits, MIB);
        let i = self.geo.bitmap_index(chunk) as usize;
        if let Some(e) = self.bat.get_mut(i) {
            *e = BatEntry::new(SB_BLOCK_PRESENT, off).0;
        }
        self
    }

    /// Sets a raw BAT entry (to build corrupt images).
    pub fn raw_bat_entry(&mut self, index: u64, raw: u64) -> &mut Self {
        if let Some(e) = self.bat.get_mut(index as usize) {
            *e = raw;
        }
        self
    }

    /// The file offset the next appended block will get.
    pub fn next_block_offset(&self) -> u64 {
        self.blocks_base + self.blocks.len() as u64
    }

    fn append(&mut self, data: &[u8], len: u64) -> u64 {
        let off = self.next_block_offset();
        let mut d = data.to_vec();
        d.resize(len.max(data.len() as u64).next_multiple_of(MIB) as usize, 0);
        self.blocks.extend_from_slice(&d);
        off
    }

    /// Puts `entries` into the log (back to back from its start) and sets the header's
    /// LogGuid to theirs, as a host that crashed before flushing leaves the file.
    pub fn log_entries(&mut self, entries: &[LogEntry]) -> &mut Self {
        let mut pos = 0usize;
        for e in entries {
            let b = encode_entry(e);
            if let Some(dst) = self.log.get_mut(pos..pos + b.len()) {
                dst.copy_from_slice(&b);
            }
            pos += b.len();
            self.header.log_guid = e.log_guid;
        }
        self
    }

    /// Offset in the file of BAT entry `index`.
    pub fn bat_entry_offset(&self, index: u64) -> u64 {
        BAT_OFFSET + index * 8
    }

    /// The finished file.
    pub fn build(&self) -> Vec<u8> {
        let bat_len = self.blocks_base - BAT_OFFSET - MIB;
        let meta_off = BAT_OFFSET + bat_len;
        let mut f = vec![0u8; self.blocks_base as usize];
        f[..64 << 10].copy_from_slice(&encode_identifier("vdrep ImageBuilder"));
        for (i, off) in HEADER_OFFSETS.iter().enumerate() {
            let mut h = self.header.clone();
            h.sequence_number = self.header.sequence_number + i as u64;
            let b = h.encode();
            f[*off as usize..*off as usize + b.len()].copy_from_slice(&b);
        }
        let rt = encode_region_table(&[
            RegionEntry {
                guid: bat_region_guid(),
                file_offset: BAT_OFFSET,
                length: bat_len as u32,
                required: true,
            },
            RegionEntry {
                guid: metadata_region_guid(),
                file_offset: meta_off,
                length: MIB as u32,
                required: true,
            },
        ]);
        for off in REGION_TABLE_OFFSETS {
            f[off as usize..off as usize + rt.len()].copy_from_slice(&rt);
        }
        f[LOG_OFFSET as usize..(LOG_OFFSET + MIB) as usize].copy_from_slice(&self.log);
        for (i, e) in self.bat.iter().enumerate() {
            let at = BAT_OFFSET as usize + i * 8;
            f[at..at + 8].copy_from_slice(&e.to_le_bytes());
        }
        let m = encode_metadata(&self.meta);
        f[meta_off as usize..meta_off as usize + m.len()].copy_from_slice(&m);
        f.extend_from_slice(&self.blocks);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::vhdx::{
        header::current_header, metadata::decode_metadata, region::decode_region_table,
    };

    #[test]
    fn built_image_decodes() {
        let mut b = ImageBuilder::new(8 * MIB, MIB as u32).differencing(Guid([3; 16]), "p.vhdx");
        b.block(0, 6, Some(&[1, 2, 3]));
        let f = b.build();
        let (h, i) = current_header(&f[64 << 10..], &f[128 << 10..]).unwrap();
        assert_eq!(i, 1);
        assert_eq!(h.data_write_guid, Guid([0x22; 16]));
        let r = decode_region_table(&f[192 << 10..]).unwrap();
        let m = decode_metadata(&f[r.metadata.file_offset as usize..]).unwrap();
        assert!(m.has_parent);
        assert_eq!(
            m.parent_locator.unwrap().parent_linkage(),
            Some(Guid([3; 16]))
        );
    }
}

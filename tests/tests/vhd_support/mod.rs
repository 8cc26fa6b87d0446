//! A tiny builder of dynamic and differencing VHDs for tests that need exact control over
//! bitmaps, locators and BAT entries (qemu cannot write differencing VHDs, and its dynamic
//! disks always have full bitmaps). The layout is the one Hyper-V uses: footer copy at 0,
//! dynamic header at 512, BAT at 1536, locator data, then blocks (bitmap + data), footer.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use vdrep_proto::formats::vhd::dynamic::{
    encode_bat, encode_locator_path, set_bitmap_bit, DynamicHeader, ParentLocator, PlatformCode,
    BAT_ABSENT, LOCATORS,
};
use vdrep_proto::formats::vhd::{chs_geometry, DiskType, Footer};
use vdrep_proto::Guid;

pub const HEADER_AT: u64 = 512;
pub const BAT_AT: u64 = 1536;

/// A VHD being described.
pub struct Fixture {
    pub size: u64,
    pub block: u64,
    pub kind: DiskType,
    pub uid: Guid,
    pub parent_uid: Guid,
    pub parent_name: String,
    pub locators: Vec<(PlatformCode, String)>,
    /// Block index -> (bitmap, data).
    pub blocks: BTreeMap<u64, (Vec<u8>, Vec<u8>)>,
    /// Overrides the header's max table entries (to build corrupt files).
    pub max_entries: Option<u32>,
}

/// The bytes of a built fixture and where things landed.
pub struct Built {
    pub bytes: Vec<u8>,
    pub bat_at: u64,
    /// Block index -> file offset of its bitmap.
    pub block_at: BTreeMap<u64, u64>,
}

impl Built {
    pub fn save(&self, path: &Path) {
        std::fs::write(path, &self.bytes).unwrap();
    }
    /// Overwrites BAT entry `i` (big-endian sector number).
    pub fn set_bat(&mut self, i: u64, sector: u32) {
        let at = (self.bat_at + 4 * i) as usize;
        self.bytes[at..at + 4].copy_from_slice(&sector.to_be_bytes());
    }
}

/// The unique id in the footer at the end of a VHD file.
pub fn footer_uid(path: &Path) -> Guid {
    let b = std::fs::read(path).unwrap();
    Footer::decode(&b[b.len() - 512..]).unwrap().unique_id
}

impl Fixture {
    pub fn dynamic(size: u64, block: u64, uid: u8) -> Fixture {
        Fixture {
            size,
            block,
            kind: DiskType::Dynamic,
            uid: Guid([uid; 16]),
            parent_uid: Guid::NIL,
            parent_name: String::new(),
            locators: Vec::new(),
            blocks: BTreeMap::new(),
            max_entries: None,
        }
    }

    /// A differencing child of `parent` (same folder), located by a `W2ru` locator.
    pub fn differencing(size: u64, block: u64, uid: u8, parent: &Path) -> Fixture {
        let name = parent.file_name().unwrap().to_str().unwrap().to_string();
        let mut f = Fixture::dynamic(size, block, uid);
        f.kind = DiskType::Differencing;
        f.parent_uid = footer_uid(parent);
        f.locators = vec![(PlatformCode::W2ru, format!(r".\{name}"))];
        f.parent_name = name;
        f
    }

    /// Stores `data` at virtual offset `voff` (whole sectors), allocating blocks and setting
    /// their bitmap bits.
    pub fn write(&mut self, voff: u64, data: &[u8]) {
        assert!(voff.is_multiple_of(512) && data.len().is_multiple_of(512));
        let bm_len = (self.block / 512).div_ceil(8).div_ceil(512) as usize * 512;
        for (k, sector) in data.chunks(512).enumerate() {
            let v = voff + 512 * k as u64;
            let idx = v / self.block;
            let in_block = (v % self.block) as usize;
            let block = self.block as usize;
            let (bm, d) = self
                .blocks
                .entry(idx)
                .or_insert_with(|| (vec![0; bm_len], vec![0; block]));
            set_bitmap_bit(bm, in_block as u64 / 512, true);
            d[in_block..in_block + 512].copy_from_slice(sector);
        }
    }

    pub fn footer(&self) -> Footer {
        let (cylinders, heads, sectors_per_track) = chs_geometry(self.size);
        Footer {
            features: 2,
            format_version: 0x0001_0000,
            data_offset: HEADER_AT,
            timestamp: 1000,
            creator_app: *b"win ",
            creator_version: 0x000a_0000,
            creator_os: u32::from_be_bytes(*b"Wi2k"),
            original_size: self.size,
            current_size: self.size,
            cylinders,
            heads,
            sectors_per_track,
            disk_type: self.kind,
            unique_id: self.uid,
            saved_state: 0,
        }
    }

    pub fn build(&self) -> Built {
        let entries = self.size.div_ceil(self.block);
        let bat_bytes = encode_bat(&vec![BAT_ABSENT; entries as usize]).len() as u64;
        let mut pos = BAT_AT + bat_bytes;
        let mut locs = [ParentLocator::EMPTY; LOCATORS];
        let mut loc_data = Vec::new();
        for (i, (code, p)) in self.locators.iter().enumerate() {
            let d = encode_locator_path(p);
            let space = (d.len() as u64).div_ceil(512).max(1) * 512;
            locs[i] = ParentLocator {
                platform_code: *code,
                data_space: space as u32,
                data_length: d.len() as u32,
                data_offset: pos,
            };
            loc_data.push((pos, d));
            pos += space;
        }
        let mut bat = vec![BAT_ABSENT; entries as usize];
        let mut block_at = BTreeMap::new();
        let mut body = Vec::new();
        for (&idx, (bm, d)) in &self.blocks {
            bat[idx as usize] = (pos / 512) as u32;
            block_at.insert(idx, pos);
            body.push((pos, bm.clone(), d.clone()));
            pos += (bm.len() + d.len()) as u64;
        }
        let header = DynamicHeader {
            data_offset: u64::MAX,
            table_offset: BAT_AT,
            header_version: 0x0001_0000,
            max_table_entries: self.max_entries.unwrap_or(entries as u32),
            block_size: self.block as u32,
            parent_unique_id: self.parent_uid,
            parent_timestamp: 0,
            parent_name: self.parent_name.clone(),
            parent_locators: locs,
        };
        let footer = self.footer().encode();
        let mut bytes = vec![0u8; pos as usize + 512];
        bytes[..512].copy_from_slice(&footer);
        bytes[512..1536].copy_from_slice(&header.encode());
        let bat = encode_bat(&bat);
        bytes[BAT_AT as usize..BAT_AT as usize + bat.len()].copy_from_slice(&bat);
        for (at, d) in loc_data {
            bytes[at as usize..at as usize + d.len()].copy_from_slice(&d);
        }
        for (at, bm, d) in body {
            let at = at as usize;
            bytes[at..at + bm.len()].copy_from_slice(&bm);
            bytes[at + bm.len()..at + bm.len() + d.len()].copy_from_slice(&d);
        }
        bytes[pos as usize..].copy_from_slice(&footer);
        Built {
            bytes,
            bat_at: BAT_AT,
            block_at,
        }
    }
}

//! Sample images of each format in memory and the queries every opened reader must survive:
//! the readers' property tests (`disk::tests`) and the fuzz targets (`tests/fuzz`) both use
//! these, so the two cannot drift apart. Not part of vdrep's interface.

use std::io;
use std::path::{Path, PathBuf};

use vdrep_proto::formats::vhd::dynamic::{
    encode_bat, set_bitmap_bit, DynamicHeader, ParentLocator, BAT_ABSENT, LOCATORS,
};
use vdrep_proto::formats::vhd::{DiskType, Footer};
use vdrep_proto::formats::vhdx::builder::{ImageBuilder, BAT_OFFSET, LOG_OFFSET};
use vdrep_proto::formats::vhdx::log::{LogEntry, LogOp};
use vdrep_proto::formats::vhdx::MIB;
use vdrep_proto::Guid;

use super::VirtualDisk;
use crate::io::ReadAt;

/// `buf.len()` bytes of `data` at `offset`, as a file in memory reads them: past the end is
/// an `UnexpectedEof`, never a panic.
pub fn read_mem(data: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let src = usize::try_from(offset)
        .ok()
        .and_then(|s| data.get(s..s.checked_add(buf.len())?))
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    buf.copy_from_slice(src);
    Ok(())
}

/// An image in memory.
pub struct Mem(pub Vec<u8>, pub PathBuf);

impl ReadAt for Mem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        read_mem(&self.0, offset, buf)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn path(&self) -> &Path {
        &self.1
    }
}

/// `bytes` as a file whose folder does not exist, so a (mutated) differencing image never
/// finds a parent: neither the tests nor the fuzzer wander the file system.
pub fn mem(bytes: Vec<u8>) -> Box<dyn ReadAt> {
    Box::new(Mem(bytes, PathBuf::from("/nonexistent/vdrep-fuzz/image")))
}

const BLOCK: u32 = 4096;
const BLOCKS: u32 = 16;

/// A dynamic VHD of 16 blocks of 4 KiB with blocks 0 and 3 allocated (block 3 only partly
/// present in its bitmap), footer copy at 0, header at 512, BAT at 1536.
pub fn dynamic_vhd() -> Vec<u8> {
    let size = u64::from(BLOCK * BLOCKS);
    let mut footer = Footer::hyperv_fixed(size, Guid([1; 16]), 100);
    footer.disk_type = DiskType::Dynamic;
    footer.data_offset = 512;
    let header = DynamicHeader {
        data_offset: u64::MAX,
        table_offset: 1536,
        header_version: 0x0001_0000,
        max_table_entries: BLOCKS,
        block_size: BLOCK,
        parent_unique_id: Guid::NIL,
        parent_timestamp: 0,
        parent_name: String::new(),
        parent_locators: [ParentLocator::EMPTY; LOCATORS],
    };
    let mut bat = vec![BAT_ABSENT; BLOCKS as usize];
    let mut f = footer.encode().to_vec();
    f.extend_from_slice(&header.encode());
    let blocks_at = 1536 + encode_bat(&bat).len();
    let block_bytes = 512 + BLOCK as usize;
    bat[0] = (blocks_at / 512) as u32;
    bat[3] = ((blocks_at + block_bytes) / 512) as u32;
    f.extend_from_slice(&encode_bat(&bat));
    for (fill, sectors) in [(0x5a_u8, 0..8u64), (0xc3, 2..5)] {
        let mut bitmap = vec![0u8; 512];
        for s in sectors {
            set_bitmap_bit(&mut bitmap, s, true);
        }
        f.extend_from_slice(&bitmap);
        f.extend_from_slice(&vec![fill; BLOCK as usize]);
    }
    f.extend_from_slice(&footer.encode());
    f
}

/// A fixed VHD of 64 KiB of 0x77.
pub fn fixed_vhd() -> Vec<u8> {
    let mut f = vec![0x77u8; 64 << 10];
    f.extend_from_slice(&Footer::hyperv_fixed(64 << 10, Guid([2; 16]), 5).encode());
    f
}

/// A dynamic VHDX (1 MiB blocks, 8 MiB) with two blocks, optionally with a dirty log of two
/// entries that the reader must replay in memory.
pub fn vhdx(with_log: bool) -> Vec<u8> {
    let mut b = ImageBuilder::new(8 * MIB, MIB as u32);
    b.block(0, 6, Some(&[0x11; 4096]));
    b.block(5, 6, Some(&[0x22; 8192]));
    if with_log {
        let last = b.next_block_offset();
        let mk = |seq: u64, ops: Vec<LogOp>| LogEntry {
            sequence_number: seq,
            tail: 0,
            entry_length: 0,
            log_guid: Guid([0x42; 16]),
            flushed_file_offset: last,
            last_file_offset: last,
            ops,
        };
        let bat_page = b.bat_entry_offset(0) & !4095;
        b.log_entries(&[
            mk(
                1,
                vec![LogOp::Data {
                    file_offset: bat_page,
                    data: vec![0; 4096],
                }],
            ),
            mk(
                2,
                vec![LogOp::Zero {
                    file_offset: last - 4096,
                    length: 4096,
                }],
            ),
        ]);
    }
    b.build()
}

/// Windows (start, length) of a VHDX built by [`vhdx`] that hold structures: identifier,
/// both headers, both region tables, log, BAT, metadata table and items. Mutations aimed at
/// them land on what the reader checks rather than mostly on padding.
pub const VHDX_FOCUS: [(usize, usize); 9] = [
    (0, 512),
    (64 << 10, 128),
    (128 << 10, 128),
    (192 << 10, 256),
    (256 << 10, 256),
    (LOG_OFFSET as usize, 8192),
    (BAT_OFFSET as usize, 64),
    (3 * MIB as usize, 512),
    ((3 * MIB + (64 << 10)) as usize, 256),
];

/// Queries an opened disk the way the pipeline does, inside bounded windows at both ends of
/// the virtual size; errors are fine (the bytes may be corrupt on purpose), panics and
/// out-of-window answers are not.
pub fn exercise(d: &dyn VirtualDisk) {
    let size = d.info().virtual_size;
    const WINDOW: u64 = 16 << 20;
    for (a, b) in [(0, size.min(WINDOW)), (size.saturating_sub(WINDOW), size)] {
        if let Ok(ext) = d.extents_in(a, b) {
            for w in ext.windows(2) {
                assert!(w[0].end() <= w[1].offset, "extents overlap: {w:?}");
            }
            for e in ext.iter().take(4) {
                assert!(e.offset >= a && e.end() <= b, "{e:?} outside [{a}, {b})");
                let _ = d.read_at(e.offset, e.length.min(64 << 10) as usize);
            }
        }
    }
    let _ = d.read_at(0, size.min(4096) as usize);
    let _ = d.read_at(size.saturating_sub(512), size.min(512) as usize);
    assert!(
        d.read_at(size, 1).is_err(),
        "a read past the virtual size must fail"
    );
}

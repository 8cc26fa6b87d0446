//! [`open_from`] and [`open`] against random and mutated images of every format: no panic,
//! and whatever opens answers extent and read queries inside its virtual size without
//! panicking either (errors are fine: the bytes are corrupt on purpose).

use std::io;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use vdrep_proto::formats::vhd::dynamic::{
    encode_bat, set_bitmap_bit, DynamicHeader, ParentLocator, BAT_ABSENT, LOCATORS,
};
use vdrep_proto::formats::vhd::{DiskType, Footer};
use vdrep_proto::formats::vhdx::builder::{ImageBuilder, BAT_OFFSET, LOG_OFFSET};
use vdrep_proto::formats::vhdx::log::{LogEntry, LogOp};
use vdrep_proto::formats::vhdx::MIB;
use vdrep_proto::Guid;

use super::{open, open_from, DiskFormat, OpenOptions, VirtualDisk};
use crate::io::ReadAt;

/// An image in memory.
struct Mem(Vec<u8>, PathBuf);

impl ReadAt for Mem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|s| self.0.get(s..s.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn path(&self) -> &Path {
        &self.1
    }
}

fn mem(bytes: Vec<u8>) -> Box<dyn ReadAt> {
    // A path that cannot exist, so a mutated differencing image never finds a parent.
    Box::new(Mem(bytes, PathBuf::from("/nonexistent/vdrep-fuzz/image")))
}

const BLOCK: u32 = 4096;
const BLOCKS: u32 = 16;

/// A dynamic VHD of 16 blocks of 4 KiB with blocks 0 and 3 allocated (block 3 only partly
/// present in its bitmap), footer copy at 0, header at 512, BAT at 1536.
fn dynamic_vhd() -> Vec<u8> {
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

fn fixed_vhd() -> Vec<u8> {
    let mut f = vec![0x77u8; 64 << 10];
    f.extend_from_slice(&Footer::hyperv_fixed(64 << 10, Guid([2; 16]), 5).encode());
    f
}

/// A dynamic VHDX (1 MiB blocks) with two blocks and a dirty log of two entries to replay.
fn vhdx(with_log: bool) -> Vec<u8> {
    let mut b = ImageBuilder::new(8 * MIB, MIB as u32);
    b.block(0, 6, Some(&[0x11; 4096]));
    b.block(5, 6, Some(&[0x22; 8192]));
    if with_log {
        let log_guid = Guid([0x42; 16]);
        let mk = |seq: u64, ops: Vec<LogOp>| LogEntry {
            sequence_number: seq,
            tail: 0,
            entry_length: 0,
            log_guid,
            flushed_file_offset: 0,
            last_file_offset: 0,
            ops,
        };
        let last = b.next_block_offset();
        let mut e1 = mk(
            1,
            vec![LogOp::Data {
                file_offset: b.bat_entry_offset(0) & !4095,
                data: vec![0; 4096],
            }],
        );
        let mut e2 = mk(
            2,
            vec![LogOp::Zero {
                file_offset: last - 4096,
                length: 4096,
            }],
        );
        e1.flushed_file_offset = last;
        e1.last_file_offset = last;
        e2.flushed_file_offset = last;
        e2.last_file_offset = last;
        b.log_entries(&[e1, e2]);
    }
    b.build()
}

/// Windows of the interesting structures of each image, so mutations of multi-MiB VHDX files
/// land on headers, tables, log and BAT rather than mostly on padding.
fn focus(kind: usize, len: usize) -> Vec<(usize, usize)> {
    match kind {
        0 | 1 => vec![(0, len)],
        _ => vec![
            (0, 512),
            (64 << 10, 128),
            (128 << 10, 128),
            (192 << 10, 256),
            (256 << 10, 256),
            (LOG_OFFSET as usize, 8192),
            (BAT_OFFSET as usize, 64),
            (3 * MIB as usize, 512),
            ((3 * MIB + (64 << 10)) as usize, 256),
        ],
    }
}

/// Applies `(kind, position, value)` mutations like `vdrep_proto`'s test helper, with each
/// position inside one of the `focus` windows (HRL tests use it too).
pub(crate) fn mutate(buf: &mut Vec<u8>, ms: &[(u8, usize, u8)], focus: &[(usize, usize)]) {
    for &(kind, p, v) in ms {
        let (base, span) = focus[p % focus.len()];
        let len = buf.len();
        let at = (base + (p / focus.len()) % span.max(1)).min(len);
        match kind {
            0..=7 if at < len => buf[at] ^= v | 1,
            8..=11 if at < len => buf[at] = v,
            12..=14 => {
                buf.splice(at..at, std::iter::repeat_n(v, usize::from(v % 8) + 1));
            }
            15..=17 if at < len => {
                buf.drain(at..(at + usize::from(v % 16) + 1).min(len));
            }
            18.. => buf.truncate(at),
            _ => {}
        }
    }
}

/// Queries an opened disk the way the pipeline does, within bounded windows at both ends.
fn exercise(d: &dyn VirtualDisk) {
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

#[test]
fn every_sample_image_opens_as_its_format() {
    for (bytes, want) in [
        (fixed_vhd(), DiskFormat::VhdFixed),
        (dynamic_vhd(), DiskFormat::VhdDynamic),
        (vhdx(false), DiskFormat::VhdxDynamic),
        (vhdx(true), DiskFormat::VhdxDynamic),
    ] {
        let d = open_from(mem(bytes), OpenOptions::default()).unwrap();
        assert_eq!(d.info().format, want);
        exercise(d.as_ref());
    }
    let d = open_from(mem(dynamic_vhd()), OpenOptions::default()).unwrap();
    assert_eq!(&d.read_at(0, 4).unwrap()[..], &[0x5a; 4]);
    assert_eq!(&d.read_at(3 * 4096 + 2 * 512, 4).unwrap()[..], &[0xc3; 4]);
    // Unallocated blocks read as zeros (a dynamic disk's bitmap does not hide data, as in qemu).
    assert_eq!(&d.read_at(4096, 4).unwrap()[..], &[0; 4]);
}

#[test]
fn reads_into_reused_buffers_still_see_zeros_where_the_disk_holds_none() {
    // `read_at` hands out pooled 1 MiB buffers that hold an earlier extent's bytes: every
    // reader must write each byte, unallocated ones included.
    let d = open_from(mem(vhdx(false)), OpenOptions::default()).unwrap();
    let mib = MIB as usize;
    for _ in 0..3 {
        let mut dirty = crate::memory::PooledBuf::for_overwrite(mib);
        dirty.fill(0xee);
        drop(dirty);
        // Block 2 is unallocated; block 5 holds 8 KiB of 0x22 and zeros after them.
        let b = d.read_at(2 * MIB, mib).unwrap();
        assert!(
            b.iter().all(|&x| x == 0),
            "an unallocated block read stale bytes"
        );
        drop(b);
        let mut dirty = crate::memory::PooledBuf::for_overwrite(mib);
        dirty.fill(0xee);
        drop(dirty);
        let b = d.read_at(5 * MIB, mib).unwrap();
        assert!(
            !b.contains(&0xee),
            "a partly written block read stale bytes"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn mutated_images_of_every_format_never_panic_the_readers(
        kind in 0usize..4,
        ms in proptest::collection::vec((0u8..20, any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut img = match kind {
            0 => fixed_vhd(),
            1 => dynamic_vhd(),
            2 => vhdx(false),
            _ => vhdx(true),
        };
        let f = focus(kind, img.len());
        mutate(&mut img, &ms, &f);
        if let Ok(d) = open_from(mem(img), OpenOptions { allow_4k_logical: true }) {
            exercise(d.as_ref());
        }
    }

    #[test]
    fn random_files_never_panic_open(
        head in prop_oneof![Just(&b""[..]), Just(&b"vhdxfile"[..]), Just(&b"conectix"[..])],
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        footer_cookie_at_end in any::<bool>(),
    ) {
        let mut img = head.to_vec();
        img.extend_from_slice(&bytes);
        if footer_cookie_at_end && img.len() >= 512 {
            let at = img.len() - 512;
            img[at..at + 8].copy_from_slice(b"conectix");
        }
        // Through a real file too: `open` and `open_from` share the detection.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("random.img");
        std::fs::write(&p, &img).unwrap();
        if let Ok(d) = open(&p, OpenOptions::default()) {
            exercise(d.as_ref());
        }
        if let Ok(d) = open_from(mem(img), OpenOptions::default()) {
            exercise(d.as_ref());
        }
    }
}

#[test]
fn a_failed_disk_read_names_the_file_and_offset_and_keeps_the_errno() {
    use crate::io::fault::FaultyReadAt;
    use crate::io::PreadFile;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    std::fs::write(&path, vec![0x5a; 1 << 20]).unwrap();
    let faulty = FaultyReadAt::new(PreadFile::open(&path).unwrap()).fail_reads_overlapping(
        500_000..500_001,
        libc::EIO,
        None,
    );
    let disk = super::raw::RawDisk::new(Box::new(faulty)).unwrap();
    disk.read_at(0, 4096).unwrap();
    let err = disk.read_at(450_000, 100_000).unwrap_err();
    match &err {
        super::DiskError::Io {
            path: p,
            offset,
            source,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*offset, 450_000);
            assert_eq!(source.raw_os_error(), Some(libc::EIO));
        }
        other => panic!("expected an IO error, got {other}"),
    }
}

//! Reader behaviour on images built by hand: differencing chains with LSB-first sector
//! bitmaps, log replay, and every corruption the reader must name precisely.

use std::path::{Path, PathBuf};

use vdrep_proto::formats::vhdx::bat::{BatEntry, BatGeometry};
use vdrep_proto::formats::vhdx::builder::{ImageBuilder, BAT_OFFSET, LOG_OFFSET};
use vdrep_proto::formats::vhdx::log::{LogEntry, LogOp};
use vdrep_proto::formats::vhdx::{crc32c_with_zeroed_field, MIB};
use vdrep_proto::Guid;

use crate::disk::{all_extents, open, DiskError, DiskFormat, Extent, ExtentKind, OpenOptions};

const FULL: u8 = 6;
const PARTIAL: u8 = 7;
const ZERO: u8 = 2;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err(p: &Path) -> String {
    match open(p, OpenOptions::default()) {
        Ok(_) => panic!("{} opened but should not", p.display()),
        Err(e) => e.to_string(),
    }
}

fn read_all(p: &Path) -> Vec<u8> {
    let d = open(p, OpenOptions::default()).unwrap();
    let n = d.info().virtual_size as usize;
    d.read_at(0, n).unwrap().to_vec()
}

fn parent_guid() -> Guid {
    Guid([0xab; 16])
}

/// Parent: 4 MiB, block 0 = 0x11, block 1 = 0x22, blocks 2-3 not present.
fn parent(dir: &Path) -> PathBuf {
    let mut b = ImageBuilder::new(4 * MIB, MIB as u32).data_write_guid(parent_guid());
    b.block(0, FULL, Some(&vec![0x11; MIB as usize]));
    b.block(1, FULL, Some(&vec![0x22; MIB as usize]));
    write(dir, "base.vhdx", &b.build())
}

#[test]
fn differencing_partially_present_block_reads_sectors_lsb_first() {
    let t = tempfile::tempdir().unwrap();
    parent(t.path());
    let mut c = ImageBuilder::new(4 * MIB, MIB as u32).differencing(parent_guid(), r".\base.vhdx");
    c.block(0, PARTIAL, Some(&vec![0xcc; MIB as usize]));
    c.bitmap(0, &[0b0000_0101, 0, 0x80]); // sectors 0, 2 and 23 from the child
    c.block(1, ZERO, None);
    c.block(3, FULL, Some(&vec![0xdd; MIB as usize]));
    let cp = write(t.path(), "child.vhdx", &c.build());
    let d = open(&cp, OpenOptions::default()).unwrap();
    assert_eq!(d.info().format, DiskFormat::VhdxDifferencing);
    assert_eq!(d.info().identity, Some(Guid([0x22; 16])));
    assert!(d.info().parent.as_ref().unwrap().ends_with("base.vhdx"));
    let v = read_all(&cp);
    let sector = |i: usize| &v[i * 512..(i + 1) * 512];
    for (i, want) in [
        (0, 0xcc),
        (1, 0x11),
        (2, 0xcc),
        (3, 0x11),
        (22, 0x11),
        (23, 0xcc),
        (24, 0x11),
    ] {
        assert!(sector(i).iter().all(|&b| b == want), "sector {i}");
    }
    assert!(
        v[MIB as usize..2 * MIB as usize].iter().all(|&b| b == 0),
        "ZERO block hides the parent"
    );
    assert!(v[2 * MIB as usize..3 * MIB as usize]
        .iter()
        .all(|&b| b == 0));
    assert!(v[3 * MIB as usize..].iter().all(|&b| b == 0xdd));
    // Unaligned read across the partial sectors.
    let r = d.read_at(1000, 100).unwrap();
    assert_eq!(r[0], 0x11);
    assert_eq!(r[99], 0xcc);
    let r = d.read_at(1020, 8).unwrap();
    assert_eq!(&r[..], &[0x11, 0x11, 0x11, 0x11, 0xcc, 0xcc, 0xcc, 0xcc]);
    let ex = all_extents(d.as_ref()).unwrap();
    assert_eq!(
        ex,
        vec![
            Extent {
                offset: 0,
                length: MIB,
                kind: ExtentKind::Data
            },
            Extent {
                offset: MIB,
                length: MIB,
                kind: ExtentKind::Zero
            },
            Extent {
                offset: 3 * MIB,
                length: MIB,
                kind: ExtentKind::Data
            },
        ]
    );
}

#[test]
fn chunk_without_sector_bitmap_reads_everything_from_the_parent() {
    let t = tempfile::tempdir().unwrap();
    parent(t.path());
    let mut c = ImageBuilder::new(4 * MIB, MIB as u32).differencing(parent_guid(), "base.vhdx");
    c.block(0, PARTIAL, Some(&vec![0xcc; MIB as usize]));
    let cp = write(t.path(), "child.vhdx", &c.build());
    let v = read_all(&cp);
    assert!(v[..MIB as usize].iter().all(|&b| b == 0x11));
}

#[test]
fn parent_linkage_mismatch_is_a_broken_chain() {
    let t = tempfile::tempdir().unwrap();
    parent(t.path());
    let c = ImageBuilder::new(4 * MIB, MIB as u32).differencing(Guid([0xee; 16]), "base.vhdx");
    let cp = write(t.path(), "child.vhdx", &c.build());
    match open(&cp, OpenOptions::default()) {
        Err(DiskError::BrokenChain { problem, .. }) => {
            assert!(
                problem.contains("eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee"),
                "{problem}"
            );
            assert!(problem.contains("abababab"), "{problem}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened"),
    }
}

#[test]
fn missing_parent_is_a_broken_chain() {
    let t = tempfile::tempdir().unwrap();
    let c = ImageBuilder::new(4 * MIB, MIB as u32).differencing(parent_guid(), r".\gone.vhdx");
    let cp = write(t.path(), "child.vhdx", &c.build());
    let e = err(&cp);
    assert!(
        e.contains("broken differencing chain") && e.contains("gone.vhdx"),
        "{e}"
    );
}

fn log_guid() -> Guid {
    Guid([0x77; 16])
}

#[test]
fn log_is_replayed_in_memory_and_the_file_is_not_changed() {
    let t = tempfile::tempdir().unwrap();
    let mut b = ImageBuilder::new(4 * MIB, MIB as u32);
    let data_off = b.next_block_offset();
    b.block(1, ZERO, Some(&vec![0x5e; MIB as usize])); // block data exists, BAT still says ZERO
                                                       // The log's BAT sector makes block 1 fully present at data_off.
    let mut bat_sector = vec![0u8; 4096];
    let geo = b.geo;
    bat_sector[geo.payload_index(1) as usize * 8..][..8]
        .copy_from_slice(&BatEntry::new(FULL, data_off).0.to_le_bytes());
    let end = data_off + MIB;
    b.log_entries(&[LogEntry {
        sequence_number: 9,
        tail: 0,
        entry_length: 0,
        log_guid: log_guid(),
        flushed_file_offset: end,
        last_file_offset: end,
        ops: vec![LogOp::Data {
            file_offset: BAT_OFFSET,
            data: bat_sector,
        }],
    }]);
    let bytes = b.build();
    let p = write(t.path(), "dirty.vhdx", &bytes);
    let v = read_all(&p);
    assert!(v[MIB as usize..2 * MIB as usize].iter().all(|&x| x == 0x5e));
    assert!(v[..MIB as usize].iter().all(|&x| x == 0));
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bytes,
        "the file must not change"
    );
    // A log entry from another session (other LogGuid) is not replayed.
    let mut other = bytes.clone();
    other[LOG_OFFSET as usize + 32] ^= 1; // entry's LogGuid
    let p2 = write(t.path(), "stale.vhdx", &other);
    assert!(read_all(&p2)[MIB as usize..2 * MIB as usize]
        .iter()
        .all(|&x| x == 0));
}

#[test]
fn every_block_present_without_leave_allocated_is_still_dynamic() {
    let t = tempfile::tempdir().unwrap();
    let mut b = ImageBuilder::new(2 * MIB + 512, MIB as u32);
    for i in 0..3 {
        b.block(i, FULL, Some(&vec![i as u8 + 1; MIB as usize]));
    }
    let p = write(t.path(), "f.vhdx", &b.build());
    let d = open(&p, OpenOptions::default()).unwrap();
    assert_eq!(d.info().format, DiskFormat::VhdxDynamic);
    assert_eq!(d.read_at(2 * MIB, 512).unwrap()[511], 3);
    assert!(
        d.read_at(2 * MIB, 513).is_err(),
        "reads past the virtual size fail"
    );
}

#[test]
fn logical_sector_4096_is_reported_and_refused_for_replication() {
    let t = tempfile::tempdir().unwrap();
    let b = ImageBuilder::with_sectors(8 * MIB, MIB as u32, 4096, 4096);
    let p = write(t.path(), "4k.vhdx", &b.build());
    let e = err(&p);
    assert!(e.contains("logical sector size 4096"), "{e}");
    let d = open(
        &p,
        OpenOptions {
            allow_4k_logical: true,
        },
    )
    .unwrap();
    assert_eq!(d.info().logical_sector_size, 4096);
}

fn sample() -> (ImageBuilder, Vec<u8>) {
    let mut b = ImageBuilder::new(4 * MIB, MIB as u32);
    b.block(0, FULL, Some(&[1]));
    b.block(1, FULL, Some(&[2]));
    let f = b.build();
    (b, f)
}

fn set_bat(f: &mut [u8], b: &ImageBuilder, block: u64, raw: u64) {
    let at = b.bat_entry_offset(b.geo.payload_index(block)) as usize;
    f[at..at + 8].copy_from_slice(&raw.to_le_bytes());
}

#[test]
fn corrupt_images_are_reported_with_offset_and_problem() {
    let t = tempfile::tempdir().unwrap();
    let (b, good) = sample();
    let case = |name: &str, f: &[u8], want: &[&str]| {
        let p = write(t.path(), name, f);
        let e = err(&p);
        for w in want {
            assert!(e.contains(w), "{name}: {e:?} lacks {w:?}");
        }
        assert!(e.contains(name), "{name}: {e} lacks the file name");
    };
    case("trunc.vhdx", &good[..200 << 10], &["truncated"]);
    // A wrong identifier: `open` detects by content (and would read the file as raw), so the
    // VHDX reader itself is asked.
    let mut f = good.clone();
    f[7] = b'X';
    let p = write(t.path(), "ident.vhdx", &f);
    let file = crate::io::open(&p).unwrap();
    let e = super::VhdxDisk::open(file, &mut crate::disk::OpenContext::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a VHDX") && e.contains("offset 0"), "{e}");
    let mut f = good.clone();
    f[(64 << 10) + 100] ^= 1;
    f[(128 << 10) + 100] ^= 1;
    case(
        "headers.vhdx",
        &f,
        &["both headers are invalid", "CRC-32C", "65540", "131076"],
    );
    let mut f = good.clone();
    f[(192 << 10) + 100] ^= 1;
    f[(256 << 10) + 100] ^= 1;
    case("regions.vhdx", &f, &["both copies are invalid", "CRC-32C"]);
    let mut f = good.clone();
    set_bat(&mut f, &b, 2, BatEntry::new(FULL, 64 * MIB).0);
    let at = b.bat_entry_offset(2);
    case(
        "pasteof.vhdx",
        &f,
        &["passes the end", &format!("offset {at}")],
    );
    let mut f = good.clone();
    let first = BatEntry::from_le(f[BAT_OFFSET as usize..][..8].try_into().unwrap());
    set_bat(&mut f, &b, 2, first.0);
    case(
        "overlap.vhdx",
        &f,
        &["payload block 2", "overlaps payload block 0"],
    );
    let mut f = good.clone();
    set_bat(&mut f, &b, 2, BatEntry::new(FULL, BAT_OFFSET).0);
    case("overbat.vhdx", &f, &["overlaps the BAT region"]);
    let mut f = good.clone();
    set_bat(&mut f, &b, 2, 4);
    case("reserved.vhdx", &f, &["reserved state 4"]);
    let mut f = good.clone();
    set_bat(&mut f, &b, 2, BatEntry::new(PARTIAL, 0).0);
    case("partial.vhdx", &f, &["only differencing disks"]);
}

#[test]
fn one_bad_header_or_region_table_is_survived() {
    let t = tempfile::tempdir().unwrap();
    let (_, good) = sample();
    let mut f = good.clone();
    f[(128 << 10) + 100] ^= 1; // the newer header is bad: the older one is used
    let p = write(t.path(), "h.vhdx", &f);
    assert_eq!(read_all(&p)[0], 1);
    let mut f = good.clone();
    f[(192 << 10) + 100] ^= 1;
    let p = write(t.path(), "r.vhdx", &f);
    assert_eq!(read_all(&p)[MIB as usize], 2);
}

#[test]
fn bat_region_too_small_for_the_virtual_size_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (b, mut f) = sample();
    // Grow the virtual size so the BAT (1 MiB = 131072 entries) is too small.
    let mo = (BAT_OFFSET + MIB) as usize;
    let geo = BatGeometry::new(MIB, 512, 1 << 40, false).unwrap();
    assert!(geo.total_entries() > 131072);
    let vs_item = mo + (64 << 10) + 8; // second item (virtual size) in encode_metadata's order
    f[vs_item..vs_item + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let _ = b;
    let p = write(t.path(), "small.vhdx", &f);
    let e = err(&p);
    assert!(e.contains("BAT region") && e.contains("needs"), "{e}");
}

#[test]
fn crc_helper_matches_headers_written_by_the_builder() {
    let (_, f) = sample();
    let h = &f[64 << 10..(64 << 10) + 4096];
    let stored = u32::from_le_bytes(h[4..8].try_into().unwrap());
    assert_eq!(stored, crc32c_with_zeroed_field(h, 4));
}

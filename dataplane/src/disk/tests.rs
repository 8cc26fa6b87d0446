//! [`open_from`] and [`open`] against random and mutated images of every format: no panic,
//! and whatever opens answers extent and read queries inside its virtual size without
//! panicking either (errors are fine: the bytes are corrupt on purpose).

use proptest::prelude::*;
use vdrep_proto::formats::vhdx::MIB;

use super::fuzzing::{dynamic_vhd, exercise, fixed_vhd, mem, vhdx, VHDX_FOCUS};
use super::{open, open_from, DiskFormat, OpenOptions, VirtualDisk};

/// Windows of the interesting structures of each image, so mutations of multi-MiB VHDX files
/// land on headers, tables, log and BAT rather than mostly on padding.
fn focus(kind: usize, len: usize) -> Vec<(usize, usize)> {
    match kind {
        0 | 1 => vec![(0, len)],
        _ => VHDX_FOCUS.to_vec(),
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

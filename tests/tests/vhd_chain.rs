//! VHD differencing semantics and corrupt-input handling, on small hand-built images
//! (`vhd_support`): MSB-first sector bitmaps with partial overrides inside a block, parent
//! resolution by locator, and one precise error (exit 1, file and offset named, no panic)
//! per kind of damage.

mod vhd_support;

use std::path::Path;

use vdrep_proto::formats::vhd::dynamic::PlatformCode;
use vdrep_proto::Guid;
use vdrep_tests::*;
use vhd_support::{Fixture, BAT_AT, HEADER_AT};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

/// A 4 MiB dynamic parent (1 MiB blocks) with data in blocks 0, 1 and 3, and its bytes.
fn parent(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let mut p = Fixture::dynamic(4 * MIB, MIB, 0xAA);
    let mut model = vec![0u8; 4 * MIB as usize];
    for (off, len, seed) in [(0, 2 * MIB, 1u8), (3 * MIB + 4096, 8192, 2)] {
        let d = pattern(seed, len as usize);
        p.write(off, &d);
        model[off as usize..(off + len) as usize].copy_from_slice(&d);
    }
    let path = dir.join("base.vhd");
    p.build().save(&path);
    (path, model)
}

/// Runs `vdrep inspect` expecting failure; returns stderr after checking exit 1 and that it
/// names the file.
fn fails(img: &Path) -> String {
    let out = vdrep(&["inspect", img.to_str().unwrap(), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "exit 1 expected: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(img.file_name().unwrap().to_str().unwrap()),
        "names the file: {err}"
    );
    err
}

fn cat(img: &Path) -> Vec<u8> {
    vdrep_ok(&["cat", img.to_str().unwrap()]).stdout
}

#[test]
fn differencing_sectors_with_set_bits_come_from_the_child_msb_first() {
    let dir = tempfile::tempdir().unwrap();
    let (base, mut model) = parent(dir.path());
    let mut c = Fixture::differencing(4 * MIB, MIB, 0xC1, &base);
    // Block 0: sector 0 (bit 7 of byte 0), sector 7 (bit 0 of byte 0) and sector 9; the
    // sectors between them must still come from the parent.
    // Block 2 (unallocated in the parent): sectors 100..103. Block 3: its last sector.
    let writes = [
        (0u64, 512usize),
        (7 * 512, 512),
        (9 * 512, 512),
        (2 * MIB + 100 * 512, 3 * 512),
        (4 * MIB - 512, 512),
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let d = vec![0xE0 + i as u8; len];
        c.write(off, &d);
        model[off as usize..off as usize + len].copy_from_slice(&d);
    }
    let child = dir.path().join("child.vhd");
    let built = c.build();
    // The bitmap of block 0 is MSB-first: 0b1000_0001, 0b0100_0000.
    let bm = built.block_at[&0] as usize;
    assert_eq!(&built.bytes[bm..bm + 2], &[0x81, 0x40]);
    built.save(&child);

    assert!(cat(&child) == model, "child reads differ from the model");
    let v = inspect_json(&child);
    assert_eq!(v["format"], "vhd-differencing");
    assert_eq!(v["block_size"], MIB);
    assert_eq!(
        v["parent"].as_str().unwrap(),
        base.canonicalize().unwrap().to_str().unwrap()
    );
    // The parent's allocated blocks 0, 1 and 3 are data whole (a dynamic disk's block is
    // read whole, as qemu does); the child's sectors in block 2 add one run.
    let ext: Vec<(u64, u64)> = v["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        ext,
        vec![(0, 2 * MIB), (2 * MIB + 100 * 512, 3 * 512), (3 * MIB, MIB)]
    );
    // Unaligned slices across child/parent seams.
    for (off, len) in [(3500u64, 2000u64), (MIB - 10, 20), (2 * MIB + 51_000, 2000)] {
        let out = vdrep_ok(&[
            "cat",
            child.to_str().unwrap(),
            "--offset",
            &off.to_string(),
            "--length",
            &len.to_string(),
        ]);
        assert!(out.stdout == model[off as usize..(off + len) as usize]);
    }
    // The replica of the chain is the merged disk.
    let replica = dir.path().join("r.vhd");
    vdrep_ok(&[
        "convert",
        child.to_str().unwrap(),
        replica.to_str().unwrap(),
    ]);
    let r = std::fs::read(&replica).unwrap();
    assert!(r[..model.len()] == model[..]);
}

#[test]
fn parent_is_found_by_absolute_locator_or_header_name_when_relative_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (base, model) = parent(dir.path());
    for locs in [
        vec![
            (PlatformCode::W2ru, r".\gone\base.vhd".to_string()),
            (PlatformCode::W2ku, r"C:\Hyper-V\Disks\base.vhd".to_string()),
        ],
        vec![],
    ] {
        let mut c = Fixture::differencing(4 * MIB, MIB, 0xC2, &base);
        c.locators = locs;
        let child = dir.path().join("child2.vhd");
        c.build().save(&child);
        assert!(cat(&child) == model);
    }
}

#[test]
fn a_missing_parent_is_a_broken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = parent(dir.path());
    let mut c = Fixture::differencing(4 * MIB, MIB, 0xC3, &base);
    c.locators = vec![(PlatformCode::W2ru, r".\elsewhere.vhd".into())];
    c.parent_name = "elsewhere.vhd".into();
    let child = dir.path().join("orphan.vhd");
    c.build().save(&child);
    let err = fails(&child);
    assert!(
        err.contains("broken differencing chain") && err.contains("elsewhere.vhd"),
        "{err}"
    );
}

#[test]
fn a_parent_with_another_unique_id_is_a_broken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = parent(dir.path());
    let mut c = Fixture::differencing(4 * MIB, MIB, 0xC4, &base);
    c.parent_uid = Guid([0x5A; 16]);
    let child = dir.path().join("stale.vhd");
    c.build().save(&child);
    let err = fails(&child);
    assert!(
        err.contains("broken differencing chain")
            && err.contains(&format!("offset {}", HEADER_AT + 40))
            && err.contains(&Guid([0x5A; 16]).to_string()),
        "{err}"
    );
}

#[test]
fn cyclic_parents_are_a_broken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.vhd");
    let b = dir.path().join("b.vhd");
    let mk = |uid: u8, parent_uid: u8, parent: &str| {
        let mut f = Fixture::dynamic(4 * MIB, MIB, uid);
        f.kind = vdrep_proto::formats::vhd::DiskType::Differencing;
        f.parent_uid = Guid([parent_uid; 16]);
        f.locators = vec![(PlatformCode::W2ru, format!(r".\{parent}"))];
        f.build()
    };
    mk(1, 2, "b.vhd").save(&a);
    mk(2, 1, "a.vhd").save(&b);
    let err = fails(&a);
    assert!(err.contains("cycle"), "{err}");
}

#[test]
fn a_truncated_dynamic_disk_names_the_block_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = parent(dir.path());
    let mut b = std::fs::read(&base).unwrap();
    b.truncate(b.len() - 512 - 4096); // footer and the tail of block 3 gone
    let img = dir.path().join("cut.vhd");
    std::fs::write(&img, &b).unwrap();
    let err = fails(&img);
    assert!(
        err.contains(&format!("offset {}", BAT_AT + 4 * 3)) && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn a_bad_footer_checksum_is_reported_at_the_checksum_field() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fixed.vhd");
    qemu_img_create(&img, "vpc", "subformat=fixed", "4M");
    let mut b = std::fs::read(&img).unwrap();
    let n = b.len();
    b[n - 512 + 120] ^= 1;
    std::fs::write(&img, &b).unwrap();
    let err = fails(&img);
    assert!(
        err.contains(&format!("VHD footer at offset {}", n - 512 + 64)) && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn a_wrong_dynamic_header_cookie_or_checksum_is_reported_at_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = parent(dir.path());
    for (at, what, field) in [
        (HEADER_AT, "cxsparse", HEADER_AT),
        (HEADER_AT + 600, "checksum", HEADER_AT + 36),
    ] {
        let mut b = std::fs::read(&base).unwrap();
        b[at as usize] ^= 0x20;
        let img = dir.path().join("hdr.vhd");
        std::fs::write(&img, &b).unwrap();
        let err = fails(&img);
        assert!(
            err.contains(&format!("VHD dynamic header at offset {field}")) && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn a_bat_entry_past_the_end_of_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Fixture::dynamic(4 * MIB, MIB, 1);
    p.write(0, &[1; 512]);
    let mut built = p.build();
    built.set_bat(2, 0x0100_0000);
    let img = dir.path().join("far.vhd");
    built.save(&img);
    let err = fails(&img);
    assert!(
        err.contains(&format!("VHD BAT at offset {}", BAT_AT + 8)),
        "{err}"
    );
}

#[test]
fn overlapping_bat_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Fixture::dynamic(4 * MIB, MIB, 1);
    p.write(0, &[1; 512]);
    p.write(MIB, &[2; 512]);
    let mut built = p.build();
    let first = (built.block_at[&0] / 512) as u32;
    built.set_bat(1, first + 8); // block 1 starts inside block 0
    let img = dir.path().join("overlap.vhd");
    built.save(&img);
    let err = fails(&img);
    assert!(
        err.contains(&format!("VHD BAT at offset {}", BAT_AT + 4)) && err.contains("overlap"),
        "{err}"
    );
}

#[test]
fn a_block_over_the_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Fixture::dynamic(4 * MIB, MIB, 1);
    p.write(0, &[1; 512]);
    let mut built = p.build();
    built.set_bat(0, 1); // bitmap at offset 512: the dynamic header
    let img = dir.path().join("meta.vhd");
    built.save(&img);
    let err = fails(&img);
    assert!(err.contains("overlapping the dynamic header"), "{err}");
}

#[test]
fn a_bat_larger_than_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Fixture::dynamic(4 * MIB, MIB, 1);
    p.max_entries = Some(100_000_000);
    let img = dir.path().join("bigbat.vhd");
    p.build().save(&img);
    let err = fails(&img);
    assert!(
        err.contains(&format!("VHD BAT at offset {BAT_AT}")) && err.contains("past the end"),
        "{err}"
    );
}

#[test]
fn too_few_bat_entries_for_the_virtual_size_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Fixture::dynamic(4 * MIB, MIB, 1);
    p.max_entries = Some(3);
    let img = dir.path().join("short.vhd");
    p.build().save(&img);
    let err = fails(&img);
    assert!(err.contains(&format!("offset {}", HEADER_AT + 28)), "{err}");
}

#[test]
fn random_damage_never_panics_and_exits_cleanly() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = parent(dir.path());
    let good = std::fs::read(&base).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let img = dir.path().join("fuzz.vhd");
    for _ in 0..40 {
        let mut b = good.clone();
        // Damage the metadata region (footers, header, BAT, bitmaps).
        for _ in 0..rng.gen_range(1..6) {
            let i = if rng.gen_bool(0.5) {
                rng.gen_range(0..4096)
            } else {
                b.len() - rng.gen_range(1..=512)
            };
            b[i] = rng.gen();
        }
        std::fs::write(&img, &b).unwrap();
        let out = vdrep(&["cat", img.to_str().unwrap(), "--out", "/dev/null"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(matches!(out.status.code(), Some(0) | Some(1)), "{err}");
    }
}

#[test]
fn a_child_larger_than_its_parent_reads_zeros_past_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let (base, mut model) = parent(dir.path());
    let mut c = Fixture::differencing(6 * MIB, MIB, 0xC5, &base);
    c.write(5 * MIB, &[0x99; 1024]);
    let child = dir.path().join("grown.vhd");
    c.build().save(&child);
    model.resize(6 * MIB as usize, 0);
    model[5 * MIB as usize..5 * MIB as usize + 1024].fill(0x99);
    assert!(cat(&child) == model);
    assert_eq!(inspect_json(&child)["virtual_size"], 6 * MIB);
}

#[test]
fn a_child_over_a_qemu_written_parent_overrides_single_sectors() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("qbase.vhd");
    qemu_img_create(&base, "vpc", "subformat=dynamic", "8M");
    qemu_io_write(&base, "vhd", 0x42, 1000, 3 * MIB);
    let qraw = dir.path().join("q.raw");
    qemu_to_raw(&base, "vhd", &qraw);
    let mut model = std::fs::read(&qraw).unwrap();
    let size = model.len() as u64;
    let mut c = Fixture::differencing(size, 2 * MIB, 0xC6, &base);
    for off in [512u64, 2 * MIB - 512, 2 * MIB, size - 512] {
        c.write(off, &[0xEE; 512]);
        model[off as usize..off as usize + 512].fill(0xEE);
    }
    let child = dir.path().join("qchild.vhd");
    c.build().save(&child);
    assert!(cat(&child) == model, "child over qemu parent differs");
}

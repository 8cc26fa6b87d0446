//! VHD reader end to end: real images from Hyper-V, Virtual PC and Disk2VHD, and images
//! written by qemu, read through the `vdrep` binary and compared with qemu.

use std::path::Path;
use std::process::Command;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use vdrep_tests::*;

fn extents(v: &Value) -> Vec<(u64, u64, String)> {
    v["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn hyperv_2012r2_dynamic_disk_reports_footer_size_and_no_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let img = testdata_image("hyperv2012r2-dynamic.vhd", dir.path());
    let v = inspect_json(&img);
    assert_eq!(v["format"], "vhd-dynamic");
    assert_eq!(v["virtual_size"], 136365211648u64);
    assert_eq!(v["block_size"], 2097152);
    assert_eq!(v["allocated_bytes"], 0);
    assert!(extents(&v).is_empty());
    // Unallocated bytes read as zeros, up to the last byte.
    let out = vdrep_ok(&[
        "cat",
        img.to_str().unwrap(),
        "--offset",
        &(136365211648u64 - 4096).to_string(),
    ]);
    assert_eq!(out.stdout, vec![0u8; 4096]);
}

#[test]
fn virtual_pc_dynamic_disk_takes_its_size_from_chs_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let img = testdata_image("virtualpc-dynamic.vhd", dir.path());
    let v = inspect_json(&img);
    assert_eq!(v["format"], "vhd-dynamic");
    assert_eq!(v["virtual_size"], 136363130880u64);
    assert_eq!(v["block_size"], 2097152);
    assert_eq!(v["allocated_bytes"], 0);
    // One byte past the CHS size is outside the disk: exit 1, not zeros.
    let out = vdrep(&[
        "cat",
        img.to_str().unwrap(),
        "--offset",
        "136363130880",
        "--length",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn disk2vhd_dynamic_disk_has_every_block_allocated_and_the_known_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let img = testdata_image("d2v-zerofilled.vhd", dir.path());
    let v = inspect_json(&img);
    assert_eq!(v["format"], "vhd-dynamic");
    assert_eq!(v["virtual_size"], 263454720u64);
    assert_eq!(v["block_size"], 2097152);
    assert_eq!(v["allocated_bytes"], 263454720u64);
    assert_eq!(extents(&v), vec![(0, 263454720, "data".to_string())]);
    let raw = dir.path().join("d2v.raw");
    vdrep_ok(&["cat", img.to_str().unwrap(), "--out", raw.to_str().unwrap()]);
    assert_eq!(
        sha256_file(&raw),
        "1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143"
    );
}

fn qemu_virtual_size(img: &Path) -> u64 {
    let out = run(Command::new("qemu-img").args([
        "info",
        "-f",
        "vpc",
        "--output=json",
        img.to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// Writes at unaligned and block-straddling offsets (and the last sector), then holds vdrep
/// to qemu: whole-disk reads, random slices, and the converted replica.
fn check_against_qemu(subformat: &str, size: &str) {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.vhd");
    qemu_img_create(&img, "vpc", &format!("subformat={subformat}"), size);
    let vsize = qemu_virtual_size(&img);
    let mib = 1u64 << 20;
    let writes = [
        (0x11u8, 0u64, 512u64),
        (0x22, 777, 1000),              // unaligned, inside block 0
        (0x33, 2 * mib - 300, 900),     // straddles the 2 MiB block boundary
        (0x44, vsize / 2 + 13, 70_000), // the middle, unaligned
        (0x55, vsize - 512, 512),       // the last sector
        (0x66, vsize - 1500, 1000),     // unaligned, near the end
    ];
    for &(p, off, len) in &writes {
        if off + len <= vsize {
            qemu_io_write(&img, "vhd", p, off, len);
        }
    }
    let v = inspect_json(&img);
    let fmt = if subformat == "fixed" {
        "vhd-fixed"
    } else {
        "vhd-dynamic"
    };
    assert_eq!(v["format"], fmt);
    assert_eq!(v["virtual_size"].as_u64().unwrap(), vsize, "qemu's size");
    let ext = extents(&v);
    for &(_, off, len) in &writes {
        assert!(
            ext.iter()
                .any(|&(o, l, ref k)| k == "data" && o <= off && off + len <= o + l),
            "write at {off}+{len} not inside a data extent: {ext:?}"
        );
    }
    if subformat == "dynamic" {
        assert_eq!(v["block_size"], 2097152);
        // Exactly the blocks qemu allocated (qemu-img map's data ranges).
        let out = run(Command::new("qemu-img").args([
            "map",
            "-f",
            "vpc",
            "--output=json",
            img.to_str().unwrap(),
        ]));
        let map: Value = serde_json::from_slice(&out.stdout).unwrap();
        let qdata: u64 = map
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["data"] == true)
            .map(|m| m["length"].as_u64().unwrap())
            .sum();
        assert_eq!(v["allocated_bytes"].as_u64().unwrap(), qdata);
    } else {
        assert!(v["block_size"].is_null());
        assert!(v["allocated_bytes"].as_u64().unwrap() < vsize, "holes seen");
    }
    assert_reads_like_qemu(&img, "vhd", dir.path());

    let qraw = std::fs::read(dir.path().join("qemu.raw")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(vsize);
    for _ in 0..12 {
        let off = rng.gen_range(0..vsize);
        let len = rng.gen_range(1..=(vsize - off).min(3 << 20));
        let out = vdrep_ok(&[
            "cat",
            img.to_str().unwrap(),
            "--offset",
            &off.to_string(),
            "--length",
            &len.to_string(),
        ]);
        assert!(
            out.stdout == qraw[off as usize..(off + len) as usize],
            "slice {off}+{len} differs from qemu"
        );
    }

    let replica = dir.path().join("replica.vhd");
    vdrep_ok(&["convert", img.to_str().unwrap(), replica.to_str().unwrap()]);
    run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "vpc",
        "-F",
        "raw",
        replica.to_str().unwrap(),
        dir.path().join("qemu.raw").to_str().unwrap(),
    ]));
}

#[test]
fn qemu_dynamic_vhds_read_like_qemu_at_several_sizes() {
    for size in ["5M", "64M", "100000000", "33M"] {
        check_against_qemu("dynamic", size);
    }
}

#[test]
fn qemu_fixed_vhds_read_like_qemu_at_several_sizes() {
    for size in ["5M", "64M", "100000000", "33M"] {
        check_against_qemu("fixed", size);
    }
}

#[test]
fn a_bad_end_footer_of_a_dynamic_disk_falls_back_to_the_copy_at_offset_zero() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.vhd");
    qemu_img_create(&img, "vpc", "subformat=dynamic", "8M");
    qemu_io_write(&img, "vhd", 0x77, 3 << 20, 5000);
    let qraw = dir.path().join("q.raw");
    qemu_to_raw(&img, "vhd", &qraw);
    let mut b = std::fs::read(&img).unwrap();
    let n = b.len();
    b[n - 512 + 100] ^= 0xFF; // breaks the end footer's checksum only
    std::fs::write(&img, &b).unwrap();
    let out = vdrep_ok(&["cat", img.to_str().unwrap()]);
    assert!(out.stdout == std::fs::read(&qraw).unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("copy at offset 0") && err.contains(&(n as u64 - 512).to_string()),
        "warning names the fallback and the bad offset: {err}"
    );
}

//! VHDX end to end: vdrep reads Hyper-V, Disk2VHD and qemu-made VHDX files byte for byte like
//! qemu (and like the hashes documented for the shared images), replays a dirty log without
//! touching the file, refuses 4K-logical-sector disks for replication, and names the file,
//! offset and problem of every corrupt image it refuses.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};
use vdrep_proto::formats::vhdx::bat::{BatEntry, BatGeometry};
use vdrep_proto::formats::vhdx::builder::ImageBuilder;
use vdrep_proto::formats::vhdx::metadata::decode_metadata;
use vdrep_proto::formats::vhdx::region::decode_region_table;
use vdrep_proto::Guid;
use vdrep_tests::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs vdrep expecting exit 1 and returns stderr.
fn vdrep_fails(args: &[&str]) -> String {
    let out = vdrep(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "vdrep {args:?}: want exit 1, got {:?}: {err}",
        out.status
    );
    err
}

fn cat_sha(img: &Path, dir: &Path) -> String {
    let out = dir.join("cat.raw");
    vdrep_ok(&["cat", s(img), "--out", s(&out)]);
    require_tool("sha256sum", "apt-get install coreutils");
    let o = run(Command::new("sha256sum").arg(&out));
    std::fs::remove_file(&out).unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// SHA-256 of `vdrep cat IMG` streamed from its standard output into `sha256sum` (the
/// debug-built test binary would hash 10 GiB slowly).
fn cat_stdout_sha(img: &Path) -> String {
    require_tool("sha256sum", "apt-get install coreutils");
    let mut cat = vdrep_command()
        .args(["cat", s(img)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new("sha256sum")
        .stdin(cat.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(
        cat.wait().unwrap().success(),
        "vdrep cat {} failed",
        img.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn dirty_log_is_replayed_in_memory_and_the_file_is_left_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let img = testdata_image("iotest-dirtylog-10G-4M.vhdx", t.path());
    let before = sha256_file(&img);
    let j = inspect_json(&img);
    assert_eq!(j["format"], "vhdx-dynamic");
    assert_eq!(j["virtual_size"], 10737418240u64);
    assert_eq!(j["allocated_bytes"], 18 << 20);
    assert_eq!(j["extents"][0]["offset"], 0);
    assert_eq!(j["extents"][0]["length"], 18 << 20);
    let edge = ((18 << 20) - 2).to_string();
    let first = vdrep_ok(&["cat", s(&img), "--offset", &edge, "--length", "4"]);
    assert_eq!(first.stdout, vec![0xa5, 0xa5, 0, 0]);
    // 10 GiB: hashed from `vdrep cat`'s standard output rather than a 10 GiB temp file.
    assert_eq!(
        cat_stdout_sha(&img),
        "179cefe8b0587f123393eedf2aa7aa8d25798591178e6bc3950a09762f38f96f"
    );
    assert_eq!(
        sha256_file(&img),
        before,
        "reading must not replay the log into the file"
    );
}

#[test]
fn hyperv_dynamic_image_reads_like_its_documented_hash() {
    let t = tempfile::tempdir().unwrap();
    let img = testdata_image("iotest-dynamic-1G.vhdx", t.path());
    let j = inspect_json(&img);
    assert_eq!(j["format"], "vhdx-dynamic");
    assert_eq!(j["virtual_size"], 1073741824u64);
    assert_eq!(j["logical_sector_size"], 512);
    assert_eq!(j["physical_sector_size"], 4096);
    assert_eq!(j["block_size"], 32 << 20);
    assert_eq!(j["allocated_bytes"], 96 << 20);
    assert_eq!(
        cat_sha(&img, t.path()),
        "d3d112d8dab7fd360609f7d5a7b769904b7a2a7d7b6b8c535f65a23293c05478"
    );
    let edge = ((33 << 20) - 1).to_string();
    let b = vdrep_ok(&["cat", s(&img), "--offset", &edge, "--length", "2"]);
    assert_eq!(b.stdout, vec![0xa5, 0x96]);
    // 512e (physical 4096) is replicable: convert succeeds and matches.
    let out = t.path().join("out.vhd");
    vdrep_ok(&["convert", s(&img), s(&out)]);
    run(Command::new("qemu-img").args([
        "compare",
        "-q",
        "-f",
        "vpc",
        "-F",
        "vhdx",
        s(&out),
        s(&img),
    ]));
}

#[test]
fn disk2vhd_image_with_identical_headers_reads_like_its_documented_hash() {
    let t = tempfile::tempdir().unwrap();
    let img = testdata_image("test-disk2vhd.vhdx", t.path());
    let j = inspect_json(&img);
    // Every block is present, but LeaveBlockAllocated is clear: a dynamic disk.
    assert_eq!(j["format"], "vhdx-dynamic");
    assert_eq!(j["virtual_size"], 268435456u64);
    assert_eq!(j["block_size"], 2 << 20);
    assert_eq!(
        cat_sha(&img, t.path()),
        "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a"
    );
}

/// Writes at unaligned, block-straddling offsets, the last sector, and zeroes.
fn scribble(img: &Path, bs: u64, size: u64) {
    qemu_io_write(img, "vhdx", 0x5a, 12345, 777);
    qemu_io_write(img, "vhdx", 0xc3, bs - 1000, 5000);
    qemu_io_write(img, "vhdx", 0x3c, size - 512, 512);
    qemu_io_write(img, "vhdx", 0x11, 2 * bs + 4096, 70000);
    qemu_io_write_zeroes(img, "vhdx", 2 * bs, bs); // over data
    qemu_io_write_zeroes(img, "vhdx", 3 * bs, bs); // never written
}

fn random_reads_match(img: &Path, qraw: &[u8], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..12 {
        let len = rng.gen_range(1..300_000u64);
        let off = rng.gen_range(0..qraw.len() as u64 - len);
        let out = vdrep_ok(&[
            "cat",
            s(img),
            "--offset",
            &off.to_string(),
            "--length",
            &len.to_string(),
        ]);
        assert!(
            out.stdout == qraw[off as usize..(off + len) as usize],
            "{}: bytes [{off}, +{len}) differ from qemu",
            img.display()
        );
    }
}

fn check_against_qemu(img: &Path, dir: &Path, seed: u64) {
    assert_reads_like_qemu(img, "vhdx", dir);
    let qraw = std::fs::read(dir.join("qemu.raw")).unwrap();
    random_reads_match(img, &qraw, seed);
    let out = dir.join("converted.vhd");
    vdrep_ok(&["convert", s(img), s(&out)]);
    run(Command::new("qemu-img").args([
        "compare",
        "-q",
        "-f",
        "vpc",
        "-F",
        "vhdx",
        s(&out),
        s(img),
    ]));
}

#[test]
fn qemu_dynamic_images_with_1_to_256_mib_blocks_read_like_qemu() {
    for (i, (bs, size)) in [(1u64, 24u64), (8, 48), (32, 160), (256, 1300)]
        .into_iter()
        .enumerate()
    {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("d.vhdx");
        let (bs, size) = (bs << 20, (size << 20) + 512 * 7);
        qemu_img_create(
            &img,
            "vhdx",
            &format!("subformat=dynamic,block_size={bs}"),
            &size.to_string(),
        );
        scribble(&img, bs, size);
        let j = inspect_json(&img);
        assert_eq!(j["format"], "vhdx-dynamic");
        assert_eq!(j["block_size"], bs);
        assert_eq!(j["virtual_size"], size);
        check_against_qemu(&img, t.path(), i as u64);
    }
}

#[test]
fn qemu_fixed_image_is_vhdx_fixed_and_reads_like_qemu() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("f.vhdx");
    let size = 20u64 << 20;
    qemu_img_create(
        &img,
        "vhdx",
        "subformat=fixed,block_size=1M",
        &size.to_string(),
    );
    scribble(&img, 1 << 20, size);
    let j = inspect_json(&img);
    assert_eq!(j["format"], "vhdx-fixed");
    check_against_qemu(&img, t.path(), 99);
}

#[test]
fn logical_sector_4096_is_inspected_but_refused_by_convert() {
    // qemu-img cannot make 4Kn VHDX files (no logical_sector_size option): build one.
    let t = tempfile::tempdir().unwrap();
    let mut b = ImageBuilder::with_sectors(16 << 20, 1 << 20, 4096, 4096);
    b.block(0, 6, Some(&vec![0x4b; 1 << 20]));
    let img = t.path().join("4k.vhdx");
    std::fs::write(&img, b.build()).unwrap();
    let j = inspect_json(&img);
    assert_eq!(j["logical_sector_size"], 4096);
    assert_eq!(j["physical_sector_size"], 4096);
    let dst = t.path().join("o.vhd");
    let err = vdrep_fails(&["convert", s(&img), s(&dst)]);
    assert!(
        err.contains("logical sector size 4096") && err.contains("4k.vhdx"),
        "{err}"
    );
    assert!(!dst.exists());
}

/// A qemu-made dynamic VHDX with two allocated 1 MiB blocks, and where its BAT is.
fn qemu_image(dir: &Path) -> (PathBuf, u64, BatGeometry) {
    let img = dir.join("q.vhdx");
    qemu_img_create(&img, "vhdx", "subformat=dynamic,block_size=1M", "8M");
    qemu_io_write(&img, "vhdx", 1, 0, 4096);
    qemu_io_write(&img, "vhdx", 2, 1 << 20, 4096);
    let f = std::fs::read(&img).unwrap();
    let r = decode_region_table(&f[192 << 10..]).unwrap();
    let m =
        decode_metadata(&f[r.metadata.file_offset as usize..r.metadata.end() as usize]).unwrap();
    let geo = BatGeometry::new(m.block_size.into(), 512, m.virtual_size, false).unwrap();
    (img, r.bat.file_offset, geo)
}

fn patched(dir: &Path, name: &str, f: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, f).unwrap();
    p
}

#[test]
fn corrupt_vhdx_files_fail_with_the_file_offset_and_problem() {
    let t = tempfile::tempdir().unwrap();
    let (img, bat, geo) = qemu_image(t.path());
    let good = std::fs::read(&img).unwrap();
    let expect = |name: &str, f: &[u8], want: &[&str]| {
        let p = patched(t.path(), name, f);
        let err = vdrep_fails(&["inspect", s(&p)]);
        for w in want {
            assert!(err.contains(w), "{name}: {err:?} lacks {w:?}");
        }
        assert!(err.contains(name), "{name}: {err} does not name the file");
    };
    expect("short.vhdx", &good[..100 << 10], &["truncated"]);
    let mut f = good.clone();
    f[(64 << 10) + 500] ^= 0xff;
    f[(128 << 10) + 500] ^= 0xff;
    expect(
        "headers.vhdx",
        &f,
        &["both headers are invalid", "CRC-32C", "65540", "131076"],
    );
    let mut f = good.clone();
    f[(192 << 10) + 20] ^= 0xff;
    f[(256 << 10) + 20] ^= 0xff;
    expect(
        "regions.vhdx",
        &f,
        &["region tables", "both copies are invalid", "CRC-32C"],
    );
    // The data block of block 1 cut off.
    let e1 = BatEntry::from_le(good[(bat + 8) as usize..][..8].try_into().unwrap());
    let at1 = format!("offset {}", bat + 8);
    expect(
        "cut.vhdx",
        &good[..e1.file_offset() as usize + 4096],
        &["payload block 1", "passes the end", &at1],
    );
    let mut f = good.clone();
    let e0: [u8; 8] = good[bat as usize..][..8].try_into().unwrap();
    let i2 = geo.payload_index(2);
    f[(bat + i2 * 8) as usize..][..8].copy_from_slice(&e0);
    let at2 = format!("offset {}", bat + 16);
    expect(
        "overlap.vhdx",
        &f,
        &["payload block 2", "overlaps payload block 0", &at2],
    );
}

/// `vdrep cat` of `img` equals qemu's reading of `reference`.
fn assert_reads_like(img: &Path, reference: &Path, dir: &Path) {
    let q = dir.join("ref.raw");
    qemu_to_raw(reference, "vhdx", &q);
    let v = dir.join("v.raw");
    vdrep_ok(&["cat", s(img), "--out", s(&v)]);
    assert!(
        std::fs::read(&q).unwrap() == std::fs::read(&v).unwrap(),
        "{} reads differently",
        img.display()
    );
}

#[test]
fn one_bad_header_leaves_the_other_in_charge() {
    let t = tempfile::tempdir().unwrap();
    let (img, _, _) = qemu_image(t.path());
    for (name, at) in [("h1.vhdx", 64usize << 10), ("h2.vhdx", 128 << 10)] {
        let mut f = std::fs::read(&img).unwrap();
        f[at + 500] ^= 0xff;
        let p = patched(t.path(), name, &f);
        assert_reads_like(&p, &img, t.path());
    }
}

#[test]
fn file_without_the_vhdx_identifier_is_read_as_raw() {
    // Formats are detected by content: a file whose first bytes are not `vhdxfile` is not a
    // VHDX to vdrep (the reader's own "not a VHDX file" error is covered by unit tests).
    let t = tempfile::tempdir().unwrap();
    let (img, _, _) = qemu_image(t.path());
    let mut f = std::fs::read(&img).unwrap();
    f[7] = b'X';
    let p = patched(t.path(), "ident.vhdx", &f);
    assert_eq!(inspect_json(&p)["format"], "raw");
}

#[test]
fn differencing_chain_reads_through_and_problems_are_broken_chain_errors() {
    let t = tempfile::tempdir().unwrap();
    let mut base = ImageBuilder::new(4 << 20, 1 << 20).data_write_guid(Guid([0xab; 16]));
    base.block(0, 6, Some(&vec![0x11; 1 << 20]));
    std::fs::write(t.path().join("base.vhdx"), base.build()).unwrap();

    let mut child =
        ImageBuilder::new(4 << 20, 1 << 20).differencing(Guid([0xab; 16]), r".\base.vhdx");
    child.block(0, 7, Some(&vec![0xcc; 1 << 20]));
    child.bitmap(0, &[0b10]); // sector 1 only (LSB first)
    let ok = patched(t.path(), "child.vhdx", &child.build());
    let j = inspect_json(&ok);
    assert_eq!(j["format"], "vhdx-differencing");
    assert!(j["parent"].as_str().unwrap().ends_with("base.vhdx"));
    let b = vdrep_ok(&["cat", s(&ok), "--offset", "510", "--length", "4"]);
    assert_eq!(b.stdout, vec![0x11, 0x11, 0xcc, 0xcc]);
    let out = t.path().join("flat.vhd");
    vdrep_ok(&["convert", s(&ok), s(&out)]);
    let flat = std::fs::read(&out).unwrap();
    assert!(flat[..512].iter().all(|&x| x == 0x11));
    assert!(flat[512..1024].iter().all(|&x| x == 0xcc));
    assert!(flat[1024..1 << 20].iter().all(|&x| x == 0x11));

    let orphan =
        ImageBuilder::new(4 << 20, 1 << 20).differencing(Guid([0xab; 16]), r".\missing.vhdx");
    let p = patched(t.path(), "orphan.vhdx", &orphan.build());
    let err = vdrep_fails(&["inspect", s(&p)]);
    assert!(
        err.contains("broken differencing chain") && err.contains("missing.vhdx"),
        "{err}"
    );

    let wrong = ImageBuilder::new(4 << 20, 1 << 20).differencing(Guid([0xcd; 16]), r".\base.vhdx");
    let p = patched(t.path(), "wrong.vhdx", &wrong.build());
    let err = vdrep_fails(&["convert", s(&p), s(&t.path().join("x.vhd"))]);
    assert!(
        err.contains("broken differencing chain") && err.contains("cdcdcdcd"),
        "{err}"
    );
}

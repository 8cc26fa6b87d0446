//! Packed writes end to end: reads that mix text, incompressible and zero blocks (as real
//! disks do) travel as one frame of their text blocks plus raw writes, bit-exact, and a
//! known-empty replica stays sparse. Images from qemu-img, written by qemu-io from files.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vdrep_tests::bytes::{noise, text};
use vdrep_tests::images::{make_image, Kind};
use vdrep_tests::procs::{assert_replica_identical, certs, Receiver, Send};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const RUN_LIMIT: Duration = Duration::from_secs(50);

/// Writes `blocks` (offset, bytes) into the image with one qemu-io run (`write -s`).
fn qemu_write_files(img: &Path, fmt: &str, scratch: &Path, blocks: &[(u64, Vec<u8>)]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for (i, (off, data)) in blocks.iter().enumerate() {
        let f = scratch.join(format!("b{i}.bin"));
        std::fs::write(&f, data).unwrap();
        c.arg("-c")
            .arg(format!("write -q -s {} {off} {}", f.display(), data.len()));
    }
    let out = c.arg(img).output().expect("qemu-io runs");
    assert!(out.status.success(), "qemu-io: {out:?}");
}

#[test]
fn mixed_reads_travel_as_packed_text_frames_and_raw_blocks_bit_exact_and_sparse() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let img = make_image(d, "mixed", Kind::Vhdx, 32 * MIB, &[]);
    // Per 64 KiB block over 12 MiB: text, random, zero, text, random, text, zero, ...
    let scratch = d.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut blocks = Vec::new();
    let (mut random, mut texts, mut zeros) = (0u64, 0u64, 0u64);
    for k in 0..192u64 {
        let off = k * 64 * KIB;
        match k % 7 {
            1 | 4 => {
                blocks.push((off, noise(k + 1, 64 << 10)));
                random += 64 * KIB;
            }
            2 | 6 => zeros += 64 * KIB,
            _ => {
                blocks.push((off, text(k + 1, 64 << 10)));
                texts += 64 * KIB;
            }
        }
    }
    qemu_write_files(&img, "vhdx", &scratch, &blocks);
    let r = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&img], &d.join("s.log"))
        .arg("--fixed-compression")
        .arg("--compression-level=9")
        .run(RUN_LIMIT);
    let s = r.ok();
    let rep = d.join("store/vm1/mixed.vhd");
    assert_replica_identical(&img, "vhdx", &rep);
    // Random blocks are sent as they are, text shrinks: the payload is the random bytes
    // plus a small share of the text — not a frame per text run, and nothing recompressed.
    let wire = s["wire_bytes"].as_u64().unwrap();
    assert!(wire > random, "{s}");
    assert!(
        wire < random + texts / 5,
        "wire {wire}: random {random} + text {texts}: {s}"
    );
    // Each random block is its own raw write (no two are neighbours); the text blocks of a
    // read (joined up to 4 MiB at level 9) are one packed write: 12 MiB need 3 to 12.
    let extents = s["extents"].as_u64().unwrap();
    let raw_blocks = random / (64 * KIB);
    assert!(
        (raw_blocks + 3..=raw_blocks + 12).contains(&extents),
        "{extents} extents for {raw_blocks} random blocks: {s}"
    );
    // Neither the zero blocks nor the rest of the disk were written into the fresh replica.
    let allocated = std::fs::metadata(&rep).unwrap().blocks() * 512;
    assert!(
        allocated <= 12 * MIB - zeros + MIB,
        "replica allocates {allocated} bytes, data is {} bytes",
        random + texts
    );
    assert_eq!(s["skipped_zero_bytes"].as_u64().unwrap() % (64 * KIB), 0);
}

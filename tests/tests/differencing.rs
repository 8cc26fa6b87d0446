//! Differencing VHD and VHDX chains (depth 3 and 4), checked three ways: the in-memory model
//! of the fixture writer, libvhdi (patched; `bash ops/build-libvhdi.sh`) and vdrep.
//!
//! qemu-img cannot make differencing VHD or VHDX disks, so `vdrep_tests::fixtures` writes
//! them from the specs. The oracle-vs-model tests validate the fixtures before any vdrep
//! assertion relies on them; the base levels are also checked against qemu-img.

use std::path::{Path, PathBuf};
use std::process::Command;

use vdrep_tests::fixtures::scenarios::{vhd_chain, vhdx_chain};
use vdrep_tests::fixtures::{write_raw, Chain, ChainSpec, Format};
use vdrep_tests::{inspect_json, qemu_to_raw, require_qemu, run, vdrep_ok};

const MIB: u64 = 1 << 20;

/// The four chains under test: (name, spec).
fn chains() -> Vec<(&'static str, ChainSpec)> {
    vec![
        ("vhd-depth3-512k", vhd_chain(3, 512 * 1024, 3)),
        ("vhd-depth4-2m", vhd_chain(4, 2 * MIB, 4)),
        ("vhdx-depth3-1m", vhdx_chain(3, MIB, 13)),
        ("vhdx-depth4-2m", vhdx_chain(4, 2 * MIB, 14)),
    ]
}

fn chains_of(format: Format) -> Vec<(&'static str, ChainSpec)> {
    chains()
        .into_iter()
        .filter(|(_, s)| s.format == format)
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python with the patched pyvhdi; fails with the build command if missing.
fn oracle_python() -> PathBuf {
    let py = repo_root().join("ops/.venv/bin/python");
    let ok = py.is_file()
        && Command::new(&py)
            .args(["-c", "import pyvhdi"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    assert!(
        ok,
        "the libvhdi oracle is missing: run `bash ops/build-libvhdi.sh` (builds patched \
         libvhdi-python 20260901 into ops/.venv)"
    );
    py
}

/// The whole virtual disk of `chain.levels[level]` as libvhdi reads it, with the chain given
/// explicitly (so the oracle does not share vdrep's locator mapping).
fn oracle_read(chain: &Chain, level: usize, out: &Path) -> Vec<u8> {
    let py = oracle_python();
    let mut c = Command::new(py);
    c.arg(repo_root().join("tests/oracle/vhdi_read.py"));
    let lineage = chain.lineage(level);
    c.arg(&lineage[0]).arg(out);
    c.args(&lineage[1..]);
    run(&mut c);
    std::fs::read(out).unwrap()
}

/// Panics at the first differing byte, naming the sector and what each side holds.
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: size differs from the model");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let s = i / 512 * 512;
        panic!(
            "{what}: differs from the model at byte {i} (sector {}, in 1 MiB block {}): got {:02x?}.., model {:02x?}..",
            i / 512,
            i as u64 / MIB,
            &got[s..(s + 16).min(got.len())],
            &want[s..(s + 16).min(want.len())]
        );
    }
}

fn check_oracle(format: Format) {
    for (name, spec) in chains_of(format) {
        let dir = tempfile::tempdir().unwrap();
        let chain = spec.build(dir.path());
        for (i, l) in chain.levels.iter().enumerate() {
            let out = dir.path().join(format!("oracle-{i}.raw"));
            let got = oracle_read(&chain, i, &out);
            assert_same(&format!("{name} level {i}: libvhdi"), &got, &l.expected);
        }
    }
}

#[test]
fn libvhdi_reads_every_level_of_the_vhd_chains_as_the_model() {
    check_oracle(Format::Vhd);
}

#[test]
fn libvhdi_reads_every_level_of_the_vhdx_chains_as_the_model() {
    check_oracle(Format::Vhdx);
}

#[test]
fn qemu_reads_the_fixture_bases_as_the_model() {
    require_qemu();
    for (name, spec) in chains() {
        let dir = tempfile::tempdir().unwrap();
        let chain = spec.build(dir.path());
        let fmt = match spec.format {
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
        };
        let out = dir.path().join("qemu.raw");
        qemu_to_raw(&chain.levels[0].path, fmt, &out);
        let got = std::fs::read(&out).unwrap();
        assert_same(
            &format!("{name} base: qemu-img"),
            &got,
            &chain.levels[0].expected,
        );
    }
}

#[test]
fn the_models_hold_what_each_level_wrote() {
    // Sanity of the model itself: every child changes what its parent showed, and the chains
    // contain the traps they are meant to (sectors shown through from two levels up).
    for (name, spec) in chains() {
        let dir = tempfile::tempdir().unwrap();
        let chain = spec.build(dir.path());
        assert!(chain.levels.len() >= 3, "{name}: depth");
        for w in chain.levels.windows(2) {
            assert_ne!(
                w[0].expected, w[1].expected,
                "{name}: a child that changes nothing"
            );
            assert!(
                w[1].expected_extents.iter().map(|e| e.1 - e.0).sum::<u64>()
                    >= w[0].expected_extents.iter().map(|e| e.1 - e.0).sum::<u64>(),
                "{name}: extents only grow down the chain"
            );
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn the_fixtures_contain_the_cases_that_upstream_libvhdi_misreads() {
    // Read back with a tiny parse of our own, so editing the scenarios cannot silently drop
    // the cases that ops/patches/*.patch exist for.
    for (name, spec) in chains() {
        let dir = tempfile::tempdir().unwrap();
        let chain = spec.build(dir.path());
        let child1 = std::fs::read(&chain.levels[1].path).unwrap();
        let child2 = std::fs::read(&chain.levels[2].path).unwrap();
        match spec.format {
            Format::Vhd => {
                // Block 0's bitmap starts 0b0111_1110: set bits followed by clear ones.
                let bat = u64::from_be_bytes(child1[512 + 16..512 + 24].try_into().unwrap());
                let b0 = be32(&child1, bat as usize) as usize * 512;
                assert_eq!(child1[b0], 0x7E, "{name}: child1 bitmap byte 0");
                // Locator data space in sectors in child1, in bytes in child2.
                assert_eq!(&child1[512 + 576..512 + 580], b"W2ru");
                assert_eq!(be32(&child1, 512 + 580), 1, "{name}: sectors");
                assert_eq!(&child2[512 + 576..512 + 580], b"W2ku");
                assert_eq!(be32(&child2, 512 + 580), 512, "{name}: bytes");
            }
            Format::Vhdx => {
                // child2: block 0 NOT_PRESENT and no sector bitmap block in chunk 0.
                let ratio = vdrep_tests::fixtures::vhdx::chunk_ratio(spec.block_size) as usize;
                let bat = 3 << 20;
                assert_eq!(le64(&child2, bat) & 7, 0, "{name}: child2 block 0 state");
                assert_eq!(le64(&child2, bat + ratio * 8), 0, "{name}: child2 SB entry");
                assert!(
                    (0..spec.block_count() as usize).any(|b| le64(&child2, bat + b * 8) & 7 == 6),
                    "{name}: child2 has fully present blocks"
                );
                // child1 has partially present blocks and a present sector bitmap block.
                assert_eq!(le64(&child1, bat) & 7, 7, "{name}: child1 block 0 state");
                assert_eq!(
                    le64(&child1, bat + ratio * 8) & 7,
                    6,
                    "{name}: child1 SB entry"
                );
                // child2's current header is the second one; its parent_linkage is upper case.
                let seq = |at: usize| le64(&child2, at + 8);
                assert!(seq(128 << 10) > seq(64 << 10), "{name}: header order");
                let text = String::from_utf16_lossy(
                    &child2[2 << 20..3 << 20]
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect::<Vec<_>>(),
                );
                let at = text.find('{').expect("parent_linkage");
                let guid = &text[at..at + 38];
                assert_eq!(guid, guid.to_uppercase(), "{name}: linkage case");
            }
        }
    }
}

fn check_vdrep_cat(format: Format) {
    for (name, spec) in chains_of(format) {
        let dir = tempfile::tempdir().unwrap();
        let chain = spec.build(dir.path());
        for (i, l) in chain.levels.iter().enumerate() {
            let out = dir.path().join(format!("vdrep-{i}.raw"));
            vdrep_ok(&[
                "cat",
                l.path.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ]);
            let got = std::fs::read(&out).unwrap();
            assert_same(&format!("{name} level {i}: vdrep cat"), &got, &l.expected);
        }
    }
}

#[test]
fn vdrep_cat_reads_every_level_of_the_vhd_chains_as_the_model() {
    check_vdrep_cat(Format::Vhd);
}

#[test]
fn vdrep_cat_reads_every_level_of_the_vhdx_chains_as_the_model() {
    check_vdrep_cat(Format::Vhdx);
}

/// Merges adjacent data extents from `inspect --json` into `[start, end)` ranges.
fn data_ranges(v: &serde_json::Value) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in v["extents"].as_array().expect("extents array") {
        assert_eq!(e["kind"], "data", "fixtures hold no zero-state blocks: {e}");
        let off = e["offset"].as_u64().unwrap();
        let end = off + e["length"].as_u64().unwrap();
        match out.last_mut() {
            Some(last) if last.1 == off => last.1 = end,
            _ => out.push((off, end)),
        }
    }
    out
}

fn check_vdrep_inspect(format: Format) {
    let (fmt_name, base_name) = match format {
        Format::Vhd => ("vhd-differencing", "vhd-dynamic"),
        Format::Vhdx => ("vhdx-differencing", "vhdx-dynamic"),
    };
    for (name, spec) in chains_of(format) {
        let dir = tempfile::tempdir().unwrap();
        let chain = spec.build(dir.path());
        for (i, l) in chain.levels.iter().enumerate() {
            let v = inspect_json(&l.path);
            let what = format!("{name} level {i}");
            assert_eq!(v["virtual_size"], spec.size, "{what}: virtual size");
            if i == 0 {
                assert_eq!(v["format"], base_name, "{what}: format");
                assert!(v["parent"].is_null(), "{what}: a base has no parent");
            } else {
                assert_eq!(v["format"], fmt_name, "{what}: format");
                let parent = &chain.levels[i - 1].path;
                assert_eq!(
                    v["parent"].as_str(),
                    Some(parent.to_str().unwrap()),
                    "{what}: parent must be the resolved absolute path"
                );
            }
            assert_eq!(
                data_ranges(&v),
                l.expected_extents,
                "{what}: extents must cover exactly what some level of the chain holds"
            );
        }
    }
}

#[test]
fn vdrep_inspect_reports_vhd_differencing_parent_and_chain_extents() {
    check_vdrep_inspect(Format::Vhd);
}

#[test]
fn vdrep_inspect_reports_vhdx_differencing_parent_and_chain_extents() {
    check_vdrep_inspect(Format::Vhdx);
}

fn check_convert(format: Format) {
    require_qemu();
    for (name, spec) in chains_of(format) {
        let dir = tempfile::tempdir().unwrap();
        let chain = spec.build(dir.path());
        let top = chain.top();
        let model = dir.path().join("model.raw");
        write_raw(&model, &top.expected);
        let fixed = dir.path().join("converted.vhd");
        vdrep_ok(&[
            "convert",
            top.path.to_str().unwrap(),
            fixed.to_str().unwrap(),
        ]);
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "vpc", "-F", "raw"])
            .arg(&fixed)
            .arg(&model)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: qemu-img compare of vdrep's conversion with the model failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn vdrep_convert_of_the_deepest_vhd_child_matches_the_model_in_qemu_img_compare() {
    check_convert(Format::Vhd);
}

#[test]
fn vdrep_convert_of_the_deepest_vhdx_child_matches_the_model_in_qemu_img_compare() {
    check_convert(Format::Vhdx);
}

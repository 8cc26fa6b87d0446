//! `vdrep inspect` on Hyper-V Replica Logs, built by an encoder written here from [MS-HRL]
//! (independent of vdrep's writer) and by vdrep's own writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use vdrep::hrl::{HrlError, HrlLog, HrlWriter, ReadOptions, WriterOptions};
use vdrep_proto::Guid;
use vdrep_tests::{inspect_json, vdrep};

const M: usize = 4096;

fn cs(b: &[u8], skip: usize) -> u32 {
    let s: u32 = b
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < skip || *i >= skip + 4)
        .fold(0u32, |a, (_, &x)| a.wrapping_add(x as u32));
    !s
}

fn data_cs(d: &[u8]) -> u32 {
    !d.iter().fold(0u32, |a, &x| a.wrapping_add(x as u32))
}

/// One entry as the test encodes it: `len` is the DataLength field, `data` what lies in the
/// file (normally `len` bytes).
#[derive(Clone)]
struct E {
    off: u64,
    len: u32,
    op: u8,
    data: Vec<u8>,
    with_data_checksum: bool,
}

fn e(off: u64, data: Vec<u8>) -> E {
    E {
        off,
        len: data.len() as u32,
        op: 1,
        data,
        with_data_checksum: true,
    }
}

fn entry_bytes(x: &E, ts: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&x.off.to_le_bytes());
    b[12..16].copy_from_slice(&x.len.to_le_bytes());
    b[16..20].copy_from_slice(&ts.to_le_bytes());
    b[20] = x.op;
    if x.with_data_checksum {
        b[21..25].copy_from_slice(&data_cs(&x.data).to_le_bytes());
    }
    let c = cs(&b, 8);
    b[8..12].copy_from_slice(&c.to_le_bytes());
    b
}

fn block_bytes(prev: u64, entries: &[E], first_ts: u32) -> Vec<u8> {
    let mut b = vec![0u8; M];
    b[0..8].copy_from_slice(&prev.to_le_bytes());
    b[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    let c = cs(&b[..32], 12);
    b[12..16].copy_from_slice(&c.to_le_bytes());
    for (i, x) in entries.iter().enumerate() {
        b[32 + 32 * i..64 + 32 * i].copy_from_slice(&entry_bytes(x, first_ts + i as u32));
    }
    b
}

struct Spec {
    version: u32,
    disk_size: u64,
    closed: bool,
    uid: Guid,
    prev: Guid,
}

fn spec() -> Spec {
    Spec {
        version: 0x0002_0000,
        disk_size: 1 << 30,
        closed: true,
        uid: "6b7a1c2d-0e9f-4a8b-9c7d-112233445566".parse().unwrap(),
        prev: "0a0b0c0d-0e0f-4011-8213-141516171819".parse().unwrap(),
    }
}

/// Header, an empty first block at 4096, then per block its data and the block.
fn build(s: &Spec, blocks: &[Vec<E>]) -> Vec<u8> {
    let mut f = vec![0u8; 4096];
    f.extend(block_bytes(0, &[], 0));
    let mut last = 4096u64;
    let mut total = 0u64;
    for blk in blocks {
        for x in blk {
            f.extend(&x.data);
        }
        let pos = f.len() as u64;
        f.extend(block_bytes(pos - last, blk, 100 + total as u32));
        last = pos;
        total += blk.len() as u64;
    }
    let h = &mut f[..4096];
    h[0..8].copy_from_slice(b"msctlog\0");
    h[8..12].copy_from_slice(&s.version.to_le_bytes());
    h[12..16].copy_from_slice(&1000u32.to_le_bytes());
    h[16..18].copy_from_slice(b"ct");
    h[24..32].copy_from_slice(&s.disk_size.to_le_bytes());
    h[32..40].copy_from_slice(&s.disk_size.to_le_bytes());
    let eol = if s.closed { last + M as u64 } else { 0 };
    h[44..52].copy_from_slice(&eol.to_le_bytes());
    h[56..60].copy_from_slice(&(M as u32).to_le_bytes());
    h[60..76].copy_from_slice(&s.uid.0);
    h[76..92].copy_from_slice(&s.prev.0);
    h[96..104].copy_from_slice(&total.to_le_bytes());
    if s.version == 0x0002_0000 {
        h[110..126].copy_from_slice(&[0x42; 16]);
    }
    let c = cs(h, 40);
    h[40..44].copy_from_slice(&c.to_le_bytes());
    f
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed ^ (i as u8)).collect()
}

fn extents(v: &serde_json::Value) -> Vec<(u64, u64)> {
    v["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["offset"].as_u64().unwrap(), x["length"].as_u64().unwrap()))
        .collect()
}

/// `vdrep inspect` fails with exit 1 and one line naming the problem.
fn assert_refused(path: &Path, needle: &str) {
    let out = vdrep(&["inspect", path.to_str().unwrap(), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        err.contains(path.to_str().unwrap()),
        "names the file: {err}"
    );
}

#[test]
fn inspect_describes_a_version_2_log_from_an_independent_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cycle.hrl");
    std::fs::write(&p, build(&spec(), &[vec![e(0, pattern(1024, 1))]])).unwrap();
    let v = inspect_json(&p);
    assert_eq!(v["format"], "hrl");
    assert_eq!(v["version"], "2.0");
    assert_eq!(v["unique_id"], "6b7a1c2d-0e9f-4a8b-9c7d-112233445566");
    assert_eq!(
        v["previous_unique_id"],
        "0a0b0c0d-0e0f-4011-8213-141516171819"
    );
    assert_eq!(v["closed"], true);
    assert_eq!(v["entries"], 1);
    assert_eq!(v["data_bytes"], 1024);
    assert_eq!(extents(&v), vec![(0, 1024)]);
}

#[test]
fn inspect_reads_version_1_logs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v1.hrl");
    let mut s = spec();
    s.version = 0x0001_0000;
    std::fs::write(&p, build(&s, &[vec![e(512, pattern(512, 1))]])).unwrap();
    let v = inspect_json(&p);
    assert_eq!(v["version"], "1.0");
    assert_eq!(v["vhd2_data_write_guid"], serde_json::Value::Null);
    assert_eq!(extents(&v), vec![(512, 512)]);
}

#[test]
fn logs_from_vdreps_writer_round_trip_through_inspect_and_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.hrl");
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let uid: Guid = "11111111-2222-4333-8444-555555555555".parse().unwrap();
    let mut w = HrlWriter::create(&p, &WriterOptions::new(uid, Guid::NIL, 1 << 30, now)).unwrap();
    w.append(
        &[(4096, pattern(4096, 3).into()), (0, pattern(512, 4).into())],
        now,
    )
    .unwrap();
    w.append(&[(512, pattern(512, 5).into())], now).unwrap();
    w.close(now).unwrap();
    let v = inspect_json(&p);
    assert_eq!(v["unique_id"], uid.to_string());
    assert_eq!(v["entries"], 3);
    assert_eq!(extents(&v), vec![(0, 1024), (4096, 4096)]);
    let log = HrlLog::open(&p, &ReadOptions::default()).unwrap();
    assert_eq!(log.read_data(&log.entries()[2]).unwrap(), pattern(512, 5));
}

#[test]
fn overlapping_rewritten_and_adjacent_writes_coalesce_last_writer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.hrl");
    let blocks = vec![
        vec![
            e(0, pattern(2048, 1)),    // [0, 2048)
            e(8192, pattern(512, 2)),  // [8192, 8704)
            e(1024, pattern(2048, 3)), // overlaps: [1024, 3072)
        ],
        vec![
            e(8192, pattern(512, 4)),  // same offset again
            e(3072, pattern(1024, 5)), // adjacent: joins [0, 4096)
            e(65536, pattern(512, 6)),
            e(66048, pattern(512, 7)), // adjacent: [65536, 66560)
        ],
    ];
    std::fs::write(&p, build(&spec(), &blocks)).unwrap();
    let v = inspect_json(&p);
    assert_eq!(v["entries"], 7);
    assert_eq!(extents(&v), vec![(0, 4096), (8192, 512), (65536, 1024)]);
    // The bytes behind the extents are the last writer's.
    let log = HrlLog::open(&p, &ReadOptions::default()).unwrap();
    let x = vdrep::hrl::coalesce_log(&log);
    let p8192 = &x[1].pieces[0];
    assert_eq!(
        log.read_range(p8192.file_offset, p8192.length as usize)
            .unwrap(),
        pattern(512, 4)
    );
}

#[test]
fn a_byte_exact_replica_of_the_spec_example_gives_the_spec_numbers() {
    // [MS-HRL] §3: header at 0, empty block at 4096, data 8192..328192, a 58-entry block at
    // 328192 (PreviousMetadataLocation 324096), EOL 332288; offset 3626340352 written twice;
    // the example's entries record no DataChecksum.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("example.hrl");
    let mut s = spec();
    s.disk_size = 127 << 30;
    let mut entries = Vec::new();
    for i in 0..58u64 {
        let len = if i < 45 { 5632 } else { 5120 };
        let off = if i == 10 || i == 40 {
            3_626_340_352
        } else {
            3_600_000_000 + i * 65536
        };
        let mut x = e(off, pattern(len, i as u8));
        x.with_data_checksum = false;
        entries.push(x);
    }
    let f = build(&s, &[entries.clone()]);
    assert_eq!(f.len(), 332_288);
    let bh = &f[328_192..328_224];
    assert_eq!(u64::from_le_bytes(bh[..8].try_into().unwrap()), 324_096);
    let sum: u32 = bh[..12].iter().chain(&bh[16..]).map(|&b| b as u32).sum();
    assert_eq!(sum, 304);
    assert_eq!(u32::from_le_bytes(bh[12..16].try_into().unwrap()), !304);
    std::fs::write(&p, &f).unwrap();
    let v = inspect_json(&p);
    assert_eq!(v["eol_location"], 332_288);
    assert_eq!(v["entries"], 58);
    assert_eq!(v["data_bytes"], 320_000);
    // Independent model: the last writer of every sector.
    let mut sectors: BTreeMap<u64, ()> = BTreeMap::new();
    for x in &entries {
        for k in 0..(x.len as u64 / 512) {
            sectors.insert(x.off / 512 + k, ());
        }
    }
    let mut want: Vec<(u64, u64)> = Vec::new();
    for &sec in sectors.keys() {
        match want.last_mut() {
            Some((o, l)) if *o + *l == sec * 512 => *l += 512,
            _ => want.push((sec * 512, 512)),
        }
    }
    assert_eq!(extents(&v), want);
    let log = HrlLog::open(&p, &ReadOptions::default()).unwrap();
    let rewritten: Vec<u32> = log
        .entries()
        .iter()
        .filter(|x| x.disk_offset == 3_626_340_352)
        .map(|x| x.timestamp)
        .collect();
    assert!(rewritten[0] < rewritten[1], "slot order is chronological");
}

#[test]
fn checksum_failures_in_each_structure_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = build(
        &spec(),
        &[vec![e(0, pattern(1024, 1)), e(4096, pattern(512, 2))]],
    );
    // header 0, empty block 4096, data 8192..9728, block 9728.
    let cases: [(&str, usize, &str); 4] = [
        ("header", 200, "log header checksum mismatch"),
        ("block", 9728 + 4, "metadata block header checksum mismatch"),
        (
            "entry",
            9728 + 64 + 16,
            "metadata entry in slot 1 checksum mismatch",
        ),
        (
            "data",
            8192 + 1024 + 7,
            "data of the metadata entry in slot 1 checksum mismatch",
        ),
    ];
    for (name, at, needle) in cases {
        let p = dir.path().join(format!("{name}.hrl"));
        let mut f = good.clone();
        f[at] ^= 0x40;
        std::fs::write(&p, f).unwrap();
        assert_refused(&p, needle);
    }
}

#[test]
fn structural_defects_are_refused_with_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut zero = e(0, vec![]);
    zero.len = 0;
    assert_refused(
        &write("zero.hrl", build(&spec(), &[vec![zero]])),
        "DataLength 0",
    );
    assert_refused(
        &write("odd.hrl", build(&spec(), &[vec![e(0, pattern(1000, 1))]])),
        "not a multiple of 512",
    );
    let mut op = e(0, pattern(512, 1));
    op.op = 7;
    assert_refused(
        &write("op.hrl", build(&spec(), &[vec![op]])),
        "unknown MetaOperation 7",
    );
    let mut small = spec();
    small.disk_size = 1 << 20;
    assert_refused(
        &write(
            "past.hrl",
            build(&small, &[vec![e((1 << 20) - 512, pattern(1024, 1))]]),
        ),
        "past the disk's end",
    );
    let good = build(&spec(), &[vec![e(0, pattern(512, 1))]]);
    assert_refused(
        &write("trunc.hrl", good[..good.len() - 100].to_vec()),
        "truncated",
    );
    assert_refused(&write("short.hrl", good[..2000].to_vec()), "truncated");
    // PreviousMetadataLocation pointing before the header: block at 8704, distance 8192.
    let mut f = good.clone();
    let blk = 8192 + 512;
    f[blk..blk + 8].copy_from_slice(&8192u64.to_le_bytes());
    let c = cs(&f[blk..blk + 32], 12);
    f[blk + 12..blk + 16].copy_from_slice(&c.to_le_bytes());
    assert_refused(&write("outside.hrl", f), "points outside the log");
    // EOLLocation past the end of the file.
    let mut f = good.clone();
    f[44..52].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let c = cs(&f[..4096], 40);
    f[40..44].copy_from_slice(&c.to_le_bytes());
    assert_refused(&write("eol.hrl", f), "truncated");
}

#[test]
fn an_unclosed_log_is_refused_by_the_reader_and_shown_as_not_closed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("open.hrl");
    let mut s = spec();
    s.closed = false;
    let mut f = build(
        &s,
        &[vec![e(0, pattern(512, 1))], vec![e(512, pattern(512, 2))]],
    );
    f.extend(pattern(1024, 9)); // a torn third append
    std::fs::write(&p, f).unwrap();
    let err = HrlLog::open(&p, &ReadOptions::default()).unwrap_err();
    assert!(matches!(err, HrlError::NotClosed { .. }), "{err}");
    let v = inspect_json(&p);
    assert_eq!(v["closed"], false);
    assert_eq!(v["entries"], 2);
    assert_eq!(v["trailing_bytes"], 1024);
    assert_eq!(extents(&v), vec![(0, 1024)]);
}

#[test]
fn files_without_the_cookie_are_still_inspected_as_disks() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    std::fs::write(&p, vec![0x11u8; 1 << 20]).unwrap();
    let v = inspect_json(&p);
    assert_eq!(v["format"], "raw");
}

//! Reader, writer, scan and chain against each other and against hand-made corruption.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use vdrep_proto::formats::hrl::{Defect, LogHeader, Structure, VERSION_1};
use vdrep_proto::Guid;

use super::*;
use crate::error::Classify;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}
fn gid(n: u8) -> Guid {
    Guid([n; 16])
}
fn data(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| seed.wrapping_add(i as u8))
            .collect::<Vec<_>>(),
    )
}
fn write_log(path: &Path, id: u8, prev: u8, writes: &[(u64, Bytes)]) -> u64 {
    let mut w = HrlWriter::create(
        path,
        &WriterOptions::new(gid(id), gid(prev), 1 << 30, now()),
    )
    .unwrap();
    w.append(writes, now()).unwrap();
    w.close(now()).unwrap()
}
fn corrupt_at(path: &Path, at: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[byte], at).unwrap();
}
fn defect(path: &Path) -> Defect {
    HrlLog::open(path, &ReadOptions::default())
        .unwrap_err()
        .defect()
        .cloned()
        .expect("a corruption error")
}

#[test]
fn fifty_eight_writes_in_one_append_reproduce_the_spec_example_layout() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.hrl");
    // 625 sectors (320000 bytes) over 58 entries, like the example's block #2.
    let writes: Vec<(u64, Bytes)> = (0..58u64)
        .map(|i| (i * 8192, data(if i < 45 { 5632 } else { 5120 }, i as u8)))
        .collect();
    let eol = write_log(&p, 1, 0, &writes);
    assert_eq!(eol, 332_288);
    let log = HrlLog::open(&p, &ReadOptions::default()).unwrap();
    assert_eq!(log.entries().len(), 58);
    assert_eq!(log.entries()[0].file_offset, 8192);
    assert_eq!(log.entries()[57].block_offset, 328_192);
    assert_eq!(log.data_bytes(), 320_000);
    let raw = std::fs::read(&p).unwrap();
    let bh = &raw[328_192..328_192 + 32];
    let sum: u32 = bh[..12].iter().chain(&bh[16..]).map(|&b| b as u32).sum();
    assert_eq!(sum, 304);
    for (e, (off, d)) in log.entries().iter().zip(&writes) {
        assert_eq!(e.disk_offset, *off);
        assert_eq!(log.read_data(e).unwrap(), *d);
    }
}

#[test]
fn appends_larger_than_a_block_span_several_blocks_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.hrl");
    let mut w = HrlWriter::create(&p, &WriterOptions::new(gid(1), gid(0), 1 << 30, now())).unwrap();
    let first: Vec<(u64, Bytes)> = (0..300u64).map(|i| (i * 512, data(512, i as u8))).collect();
    w.append(&first, now()).unwrap();
    w.append(&[(0, data(1024, 99))], now()).unwrap();
    w.close(now()).unwrap();
    let log = HrlLog::open(&p, &ReadOptions::default()).unwrap();
    assert_eq!(log.entries().len(), 301);
    assert!(log.entries().windows(2).all(|p| p[0].seq + 1 == p[1].seq));
    let x = coalesce_log(&log);
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].offset, x[0].length), (0, 300 * 512));
    assert_eq!(x[0].pieces[0].file_offset, log.entries()[300].file_offset);
}

#[test]
fn version_one_logs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v1.hrl");
    let mut o = WriterOptions::new(gid(5), gid(4), 1 << 20, now());
    o.version = VERSION_1;
    let mut w = HrlWriter::create(&p, &o).unwrap();
    w.append(&[(512, data(512, 1))], now()).unwrap();
    w.close(now()).unwrap();
    let log = HrlLog::open(&p, &ReadOptions::default()).unwrap();
    assert_eq!(log.header().version, VERSION_1);
    assert_eq!(log.header().vhd2_data_write_guid, None);
    assert_eq!(log.header().previous_unique_id, gid(4));
}

#[test]
fn unclosed_log_is_refused_but_its_valid_prefix_is_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("open.hrl");
    let mut w = HrlWriter::create(&p, &WriterOptions::new(gid(1), gid(0), 1 << 30, now())).unwrap();
    w.append(&[(0, data(1024, 1))], now()).unwrap();
    w.append(&[(4096, data(512, 2)), (8192, data(512, 3))], now())
        .unwrap();
    drop(w); // crash: never closed
             // A torn third append: data written, block not.
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[7u8; 1536]).unwrap();
    }
    let err = HrlLog::open(&p, &ReadOptions::default()).unwrap_err();
    assert!(matches!(err, HrlError::NotClosed { .. }), "{err}");
    let s = scan_valid_prefix(&p, &ReadOptions::default()).unwrap();
    assert!(!s.closed);
    assert_eq!(s.trailing_bytes, 1536);
    let offs: Vec<u64> = s.log.entries().iter().map(|e| e.disk_offset).collect();
    assert_eq!(offs, vec![0, 4096, 8192]);
    assert_eq!(s.log.read_data(&s.log.entries()[2]).unwrap(), data(512, 3));
}

#[test]
fn scan_rejects_a_block_whose_data_was_torn() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("torn.hrl");
    let mut w = HrlWriter::create(&p, &WriterOptions::new(gid(1), gid(0), 1 << 30, now())).unwrap();
    w.append(&[(0, data(512, 1))], now()).unwrap();
    w.append(&[(512, data(512, 2))], now()).unwrap();
    drop(w);
    // Second append's data lie at 8192 + 512 + 4096.
    corrupt_at(&p, 8192 + 512 + 4096 + 10, 0xEE);
    let s = scan_valid_prefix(&p, &ReadOptions::default()).unwrap();
    assert_eq!(s.log.entries().len(), 1);
}

#[test]
fn corruption_is_reported_with_structure_and_absolute_offset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.hrl");
    let make = || write_log(&p, 1, 0, &[(0, data(1024, 1)), (4096, data(512, 2))]);
    // Layout: header 0, empty block 4096, data 8192..9728, block 9728, EOL 13824.
    make();
    corrupt_at(&p, 100, 0x55);
    assert!(matches!(
        defect(&p),
        Defect::Checksum {
            structure: Structure::Header,
            ..
        }
    ));
    make();
    corrupt_at(&p, 9728 + 20, 0x55);
    assert!(matches!(
        defect(&p),
        Defect::Checksum {
            structure: Structure::BlockHeader,
            ..
        }
    ));
    make();
    corrupt_at(&p, 9728 + 32 + 32 + 30, 0x55);
    let e = HrlLog::open(&p, &ReadOptions::default()).unwrap_err();
    assert!(matches!(
        e.defect(),
        Some(Defect::Checksum {
            structure: Structure::Entry { slot: 1 },
            ..
        })
    ));
    assert!(e.to_string().contains("offset 9800"), "{e}");
    assert!(!e.is_transient());
    make();
    corrupt_at(&p, 8192 + 1024 + 3, 0x55);
    let e = HrlLog::open(&p, &ReadOptions::default()).unwrap_err();
    assert!(matches!(
        e.defect(),
        Some(Defect::Checksum {
            structure: Structure::Data { slot: 1 },
            ..
        })
    ));
    assert!(e.to_string().contains("offset 9216"), "{e}");
    make();
    corrupt_at(&p, 0, b'X');
    assert!(matches!(defect(&p), Defect::BadCookie(_)));
    make();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(12_000)
        .unwrap();
    assert!(matches!(
        defect(&p),
        Defect::Truncated {
            need: 13_824,
            len: 12_000
        }
    ));
}

#[test]
fn entries_past_the_disk_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.hrl");
    write_log(&p, 1, 0, &[(1 << 20, data(512, 1))]);
    let opts = ReadOptions {
        disk_size: Some(1 << 20),
        ..Default::default()
    };
    let e = HrlLog::open(&p, &opts).unwrap_err();
    assert!(
        matches!(e.defect(), Some(Defect::PastDiskEnd { .. })),
        "{e}"
    );
    assert!(HrlLog::open(&p, &ReadOptions::default()).is_ok());
}

#[test]
fn writer_refuses_unaligned_empty_and_out_of_disk_writes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.hrl");
    let mut w = HrlWriter::create(&p, &WriterOptions::new(gid(1), gid(0), 1 << 20, now())).unwrap();
    for (off, len) in [(0u64, 0usize), (0, 100), (1 << 20, 512)] {
        let e = w.append(&[(off, data(len, 0))], now()).unwrap_err();
        assert!(matches!(e, HrlError::InvalidWrite { .. }), "{e}");
    }
}

#[test]
fn chain_orders_logs_and_names_missing_links_and_forks() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, id: u8, prev: u8| {
        let p = dir.path().join(name);
        write_log(&p, id, prev, &[(0, data(512, id))]);
        HrlLog::open(&p, &ReadOptions::default()).unwrap()
    };
    let a = open("a", 1, 0);
    let b = open("b", 2, 1);
    let c = open("c", 3, 2);
    let chain = HrlChain::new(vec![c.clone(), a.clone(), b.clone()], Some(gid(0))).unwrap();
    let ids: Vec<Guid> = chain.logs().iter().map(|l| l.header().unique_id).collect();
    assert_eq!(ids, vec![gid(1), gid(2), gid(3)]);
    let x = coalesce_chain(&chain);
    assert_eq!(x[0].pieces[0].source, 2, "the newest log wins");
    let gap = HrlChain::new(vec![a.clone(), c.clone()], None).unwrap_err();
    assert!(
        matches!(
            gap,
            HrlError::BrokenChain {
                problem: ChainProblem::MissingLink { .. },
                ..
            }
        ),
        "{gap}"
    );
    let b2 = open("b2", 9, 1);
    let fork = HrlChain::new(vec![a.clone(), b.clone(), b2], None).unwrap_err();
    assert!(
        matches!(
            fork,
            HrlError::BrokenChain {
                problem: ChainProblem::Fork { .. },
                ..
            }
        ),
        "{fork}"
    );
    let start = HrlChain::new(vec![b.clone(), c.clone()], Some(gid(0))).unwrap_err();
    assert!(
        matches!(
            start,
            HrlError::BrokenChain {
                problem: ChainProblem::WrongStart { .. },
                ..
            }
        ),
        "{start}"
    );
    let dup = HrlChain::new(vec![a.clone(), a], None).unwrap_err();
    assert!(matches!(
        dup,
        HrlError::BrokenChain {
            problem: ChainProblem::DuplicateId(_),
            ..
        }
    ));
}

#[test]
fn header_written_by_the_writer_decodes_with_the_proto_decoder() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.hrl");
    write_log(&p, 1, 0, &[(0, data(512, 1))]);
    let raw = std::fs::read(&p).unwrap();
    let h = LogHeader::decode(&raw[..4096]).unwrap();
    assert_eq!(h.eol_location, raw.len() as u64);
    assert_eq!(h.total_metadata_entries, 1);
    assert_eq!(&h.creator_application[..2], b"ct");
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn mutated_logs_never_panic_the_reader_or_the_scan(
            flips in proptest::collection::vec((0usize..20_000, any::<u8>()), 1..6),
            closed in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("m.hrl");
            let mut w = HrlWriter::create(&p, &WriterOptions::new(gid(1), gid(0), 1 << 30, now())).unwrap();
            w.append(&[(0, data(1024, 1)), (512, data(512, 2))], now()).unwrap();
            w.append(&[(4096, data(2048, 3))], now()).unwrap();
            if closed {
                w.close(now()).unwrap();
            } else {
                drop(w);
            }
            let mut raw = std::fs::read(&p).unwrap();
            let n = raw.len();
            for (at, v) in flips {
                raw[at % n] = v;
            }
            std::fs::write(&p, &raw).unwrap();
            let _ = HrlLog::open(&p, &ReadOptions::default());
            if let Ok(s) = scan_valid_prefix(&p, &ReadOptions::default()) {
                let _ = coalesce_log(&s.log);
            }
        }

        #[test]
        fn resized_and_random_logs_never_panic_and_what_opens_reads_inside_the_file(
            ms in proptest::collection::vec((0u8..20, any::<usize>(), any::<u8>()), 1..6),
            closed in any::<bool>(),
            random in proptest::option::weighted(0.2, proptest::collection::vec(any::<u8>(), 0..9000)),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("r.hrl");
            let raw = match random {
                Some(bytes) => {
                    // A valid header followed by noise, so the block walk is reached.
                    let mut h = LogHeader::decode(&{
                        write_log(&p, 1, 0, &[(0, data(512, 1))]);
                        std::fs::read(&p).unwrap()
                    }[..4096]).unwrap();
                    h.eol_location = if closed { 4096 + bytes.len() as u64 } else { 0 };
                    let mut raw = h.encode();
                    raw.extend_from_slice(&bytes);
                    raw
                }
                None => {
                    let mut w = HrlWriter::create(&p, &WriterOptions::new(gid(1), gid(0), 1 << 30, now())).unwrap();
                    w.append(&[(0, data(1024, 1)), (512, data(512, 2))], now()).unwrap();
                    w.append(&[(4096, data(2048, 3))], now()).unwrap();
                    if closed {
                        w.close(now()).unwrap();
                    } else {
                        drop(w);
                    }
                    let mut raw = std::fs::read(&p).unwrap();
                    // Header fields, the first block's header and entries, the data, the end.
                    let n = raw.len();
                    let focus = [(0, 128), (4096, 4096), (8192, 4096), (n.saturating_sub(4096), 4096)];
                    crate::disk::tests::mutate(&mut raw, &ms, &focus);
                    raw
                }
            };
            std::fs::write(&p, &raw).unwrap();
            for opts in [ReadOptions::default(), ReadOptions { disk_size: Some(1 << 20), verify_data: true }] {
                if let Ok(log) = HrlLog::open(&p, &opts) {
                    prop_assert!(log.valid_end() <= raw.len() as u64);
                    for e in log.entries() {
                        prop_assert!(e.file_offset + e.length as u64 <= raw.len() as u64);
                        let _ = log.read_data(e);
                    }
                    let _ = coalesce_log(&log);
                }
                if let Ok(s) = scan_valid_prefix(&p, &opts) {
                    prop_assert!(s.log.valid_end() + s.trailing_bytes <= raw.len() as u64);
                    let _ = coalesce_log(&s.log);
                }
            }
        }
    }
}

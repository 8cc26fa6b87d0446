//! `vdrep::hrl::HrlLog::open` and `scan_valid_prefix` on a file. First byte 0: the rest is
//! the file, with its header checksum re-sealed when it is long enough, so the block walk is
//! reached. Otherwise the rest patches a valid closed (odd) or unclosed (even) log written by
//! `HrlWriter`. Whatever opens must describe data inside the file.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use vdrep::hrl::{coalesce_log, scan_valid_prefix, HrlLog, HrlWriter, ReadOptions, WriterOptions};
use vdrep_fuzz::patch;
use vdrep_proto::formats::hrl::checksum::checksum_skipping;
use vdrep_proto::Guid;

/// A scratch file per fuzzing process (in memory when /dev/shm exists).
fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("vdrep-fuzz-hrl-{}.hrl", std::process::id()))
    })
}

fn base(closed: bool) -> Vec<u8> {
    let p = scratch();
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let opts = WriterOptions::new(Guid([1; 16]), Guid([0; 16]), 1 << 30, now);
    let mut w = HrlWriter::create(p, &opts).unwrap();
    let d =
        |n: usize, s: u8| Bytes::from((0..n).map(|i| s.wrapping_add(i as u8)).collect::<Vec<_>>());
    w.append(&[(0, d(1024, 1)), (512, d(512, 2))], now).unwrap();
    w.append(&[(4096, d(2048, 3))], now).unwrap();
    if closed {
        w.close(now).unwrap();
    } else {
        drop(w);
    }
    std::fs::read(p).unwrap()
}

static BASES: OnceLock<[Vec<u8>; 2]> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bases = BASES.get_or_init(|| [base(false), base(true)]);
    let file = if mode == 0 {
        let mut f = rest.to_vec();
        if f.len() >= 4096 {
            f[..8].copy_from_slice(b"msctlog\0");
            let sum = checksum_skipping(&f[..4096], 40);
            f[40..44].copy_from_slice(&sum.to_le_bytes());
        }
        f
    } else {
        let mut f = bases[usize::from(mode & 1)].clone();
        let n = f.len();
        let focus = [
            (0, 128),
            (4096, 4096),
            (8192, 4096),
            (n.saturating_sub(4096), 4096),
        ];
        patch(&mut f, rest, &focus);
        f
    };
    std::fs::write(scratch(), &file).unwrap();
    let len = file.len() as u64;
    for opts in [
        ReadOptions::default(),
        ReadOptions {
            disk_size: Some(1 << 20),
            verify_data: true,
        },
    ] {
        if let Ok(log) = HrlLog::open(scratch(), &opts) {
            assert!(log.valid_end() <= len);
            for e in log.entries() {
                assert!(
                    e.file_offset + u64::from(e.length) <= len,
                    "{e:?} past the file"
                );
                let _ = log.read_data(e);
            }
            let _ = coalesce_log(&log);
        }
        if let Ok(s) = scan_valid_prefix(scratch(), &opts) {
            assert!(s.log.valid_end() + s.trailing_bytes <= len);
            let _ = coalesce_log(&s.log);
        }
    }
});

//! Every backend returns the same bytes and the same errors as pread; the fault wrapper does
//! what it says.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::fault::{Fault, FaultyReadAt};
use super::uring::{DirectMode, UringFile, UringOptions};
use super::*;

/// A file whose size is deliberately not a multiple of 512 or 4096.
const SIZE: usize = (3 << 20) + 1234;

fn random_file(dir: &Path, size: usize) -> (std::path::PathBuf, Vec<u8>) {
    let mut data = vec![0u8; size];
    StdRng::seed_from_u64(7).fill_bytes(&mut data);
    let path = dir.join("data.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    (path, data)
}

/// pread, io_uring (default and a tiny-piece variant that exercises the refilling queue),
/// io_uring with O_DIRECT (aligned and bounce paths).
fn backends(path: &Path) -> Vec<(String, Box<dyn ReadAt>)> {
    let small = UringOptions {
        depth: 3,
        piece: 4096,
        direct: DirectMode::Off,
    };
    let direct_small = UringOptions {
        direct: DirectMode::Always,
        ..small
    };
    let all: Vec<Box<dyn ReadAt>> = vec![
        open_with(path, Backend::Pread).unwrap(),
        open_with(path, Backend::Uring).unwrap(),
        open_with(path, Backend::UringDirect).unwrap(),
        open_with(path, Backend::UringColdDirect).unwrap(),
        Box::new(UringFile::open_with(path, small).unwrap()),
        Box::new(UringFile::open_with(path, direct_small).unwrap()),
    ];
    all.into_iter()
        .enumerate()
        .map(|(i, b)| (format!("#{i} {}", b.backend()), b))
        .collect()
}

#[test]
fn uring_direct_really_bypasses_the_cache_on_the_test_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), 8192);
    let f = open_with(&path, Backend::UringDirect).unwrap();
    assert_eq!(
        f.backend(),
        "io_uring+O_DIRECT",
        "TMPDIR must be on a filesystem with O_DIRECT (ext4, xfs, tmpfs >= 6.6)"
    );
}

#[test]
fn all_backends_return_the_same_bytes_for_random_unaligned_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = random_file(dir.path(), SIZE);
    let mut rng = StdRng::seed_from_u64(11);
    let mut cases: Vec<(u64, usize)> = vec![
        (0, SIZE),
        (0, 1),
        (SIZE as u64 - 1, 1),
        (4096, 4096),
        (1 << 20, 1 << 20),
    ];
    for _ in 0..200 {
        let len = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..600),
            1 => rng.gen_range(1..70_000),
            2 => rng.gen_range(1..(2 << 20) + 5000),
            _ => 4096 * rng.gen_range(1..300),
        };
        let off = rng.gen_range(0..=(SIZE - len)) as u64;
        cases.push((off, len));
    }
    for (name, b) in backends(&path) {
        assert_eq!(b.len().unwrap(), SIZE as u64, "{name}");
        for &(off, len) in &cases {
            let mut buf = vec![0xAAu8; len];
            b.read_exact_at(&mut buf, off)
                .unwrap_or_else(|e| panic!("{name}: {len} at {off}: {e}"));
            assert!(
                buf == data[off as usize..off as usize + len],
                "{name}: {len} bytes at {off} differ"
            );
        }
    }
}

#[test]
fn aligned_buffers_take_the_zero_copy_direct_path_and_read_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = random_file(dir.path(), SIZE);
    let f = open_with(&path, Backend::UringDirect).unwrap();
    let mut b = direct::aligned_bytes_mut(1 << 20);
    assert!(direct::is_direct_aligned(&b, 2 << 20));
    f.read_exact_at(&mut b, 2 << 20).unwrap();
    assert!(b[..] == data[2 << 20..3 << 20]);
    let mut a = direct::AlignedBuf::new(8192);
    f.read_exact_at(&mut a, 4096).unwrap();
    assert!(a[..] == data[4096..4096 + 8192]);
}

/// A 4 MiB random file in `dir` opened in [`DirectMode::WhenCold`], a plain handle on it (to
/// fill or evict its pages) and its bytes.
fn when_cold_file(dir: &Path) -> (UringFile, std::fs::File, Vec<u8>) {
    let (path, data) = random_file(dir, 4 << 20);
    let opts = UringOptions {
        direct: DirectMode::WhenCold,
        ..Default::default()
    };
    let f = UringFile::open_with(&path, opts).unwrap();
    assert!(f.is_direct(), "TMPDIR must allow O_DIRECT");
    (f, std::fs::File::open(&path).unwrap(), data)
}

#[test]
fn cold_direct_reads_cold_ranges_around_the_page_cache_and_cached_ones_through_it() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (f, plain, data) = when_cold_file(dir.path());
    let mib = 1usize << 20;
    let cached = |off: usize, len: usize| {
        residency::cached_bytes(&plain, off as u64, len as u64)
            .expect("this host's kernel has cachestat (6.5+)")
    };

    // Cold: O_DIRECT, so the read leaves nothing in the page cache.
    direct::evict_cached_pages(&plain).unwrap();
    let mut b = direct::aligned_bytes_mut(mib);
    f.read_exact_at(&mut b, 0).unwrap();
    assert!(b[..] == data[..mib]);
    assert_eq!(f.cold_choices(), (1, 0));
    assert_eq!(cached(0, mib), 0, "an O_DIRECT read caches nothing");

    // Cached (a plain read put the second MiB there): through the page cache.
    plain.read_exact_at(&mut vec![0; mib], mib as u64).unwrap();
    assert_eq!(cached(mib, mib), mib as u64);
    f.read_exact_at(&mut b, mib as u64).unwrap();
    assert!(b[..] == data[mib..2 * mib]);
    assert_eq!(f.cold_choices(), (1, 1));

    // Small reads (metadata) always go through the cache; they are not counted.
    direct::evict_cached_pages(&plain).unwrap();
    let mut small = vec![0u8; 4096];
    f.read_exact_at(&mut small, (3 * mib) as u64).unwrap();
    assert!(small[..] == data[3 * mib..3 * mib + 4096]);
    assert_eq!(f.cold_choices(), (1, 1));

    // A cold, unaligned read goes direct through the bounce buffer.
    direct::evict_cached_pages(&plain).unwrap();
    let (off, len) = (2 * mib + 1000, 300_000);
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, off as u64).unwrap();
    assert!(v[..] == data[off..off + len]);
    assert_eq!(f.cold_choices(), (2, 1));
    assert_eq!(cached(2 * mib, mib), 0);
}

#[test]
fn cold_direct_judges_a_range_from_its_first_middle_and_last_32_kib() {
    use std::os::unix::fs::FileExt;
    let kib = 1u64 << 10;
    assert_eq!(
        uring::cold_probes(1 << 20, 1 << 20),
        [
            (1 << 20, 32 * kib),
            ((1 << 20) + 496 * kib, 32 * kib),
            (2016 * kib, 32 * kib)
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let (f, plain, data) = when_cold_file(dir.path());
    let mib = 1usize << 20;
    let mut b = direct::aligned_bytes_mut(mib);

    // Only the first 64 KiB cached: one sample of three, cold, read direct.
    direct::evict_cached_pages(&plain).unwrap();
    plain.read_exact_at(&mut vec![0; 64 << 10], 0).unwrap();
    f.read_exact_at(&mut b, 0).unwrap();
    assert!(b[..] == data[..mib]);
    assert_eq!(f.cold_choices(), (1, 0));

    // The three samples cached and nothing else: the range counts as cached.
    direct::evict_cached_pages(&plain).unwrap();
    for (o, l) in uring::cold_probes(mib as u64, mib as u64) {
        plain.read_exact_at(&mut vec![0; l as usize], o).unwrap();
    }
    f.read_exact_at(&mut b, mib as u64).unwrap();
    assert!(b[..] == data[mib..2 * mib]);
    assert_eq!(f.cold_choices(), (1, 1));
}

#[test]
fn reads_past_the_end_are_unexpected_eof_and_empty_reads_succeed_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), SIZE);
    let end = SIZE as u64;
    for (name, b) in backends(&path) {
        for (off, len) in [
            (end - 10, 11),
            (end - 4096, 8192),
            (end, 1),
            (end + 5000, 100),
            (0, SIZE + 1),
            (end - 1234, 2 << 20),
        ] {
            let mut buf = vec![0u8; len];
            let err = b
                .read_exact_at(&mut buf, off)
                .expect_err(&format!("{name}: {len} at {off}"));
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "{name}: {len} at {off}: {err}"
            );
        }
        for off in [0, 17, end, end + (1 << 30)] {
            b.read_exact_at(&mut [], off)
                .unwrap_or_else(|e| panic!("{name}: empty read at {off}: {e}"));
        }
    }
}

#[test]
fn concurrent_reads_from_several_threads_return_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = random_file(dir.path(), SIZE);
    let data = Arc::new(data);
    for (name, b) in backends(&path) {
        let b: Arc<dyn ReadAt> = Arc::from(b);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (b, data, name) = (b.clone(), data.clone(), name.clone());
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(100 + t);
                    for _ in 0..60 {
                        let len = rng.gen_range(1..(1 << 20) + 3000);
                        let off = rng.gen_range(0..=(SIZE - len));
                        let mut buf = vec![0u8; len];
                        b.read_exact_at(&mut buf, off as u64).unwrap();
                        assert!(
                            buf == data[off..off + len],
                            "{name}: thread {t}: {len} at {off}"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

#[test]
fn data_ranges_skip_holes_identically_for_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(16 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[1u8; 65536], 1 << 20).unwrap();
    f.write_all_at(&[2u8; 65536], 8 << 20).unwrap();
    f.sync_all().unwrap();
    let expected = PreadFile::open(&path)
        .unwrap()
        .data_ranges(0, 16 << 20)
        .unwrap();
    let covered = expected.covered_len();
    assert!(covered < 4 << 20, "holes are skipped: {expected:?}");
    assert!(expected.contains_range(1 << 20, (1 << 20) + 65536));
    assert!(expected.contains_range(8 << 20, (8 << 20) + 65536));
    for (name, b) in backends(&path) {
        assert_eq!(b.data_ranges(0, 16 << 20).unwrap(), expected, "{name}");
    }
}

#[test]
fn choice_honours_the_override_and_falls_back_to_pread_only_when_automatic() {
    assert_eq!(Backend::parse("pread").unwrap(), Some(Backend::Pread));
    assert_eq!(Backend::parse("uring").unwrap(), Some(Backend::Uring));
    assert_eq!(
        Backend::parse("uring-direct").unwrap(),
        Some(Backend::UringDirect)
    );
    assert_eq!(
        Backend::parse("uring-cold-direct").unwrap(),
        Some(Backend::UringColdDirect)
    );
    assert_eq!(Backend::parse("auto").unwrap(), None);
    assert_eq!(Backend::parse("").unwrap(), None);
    let bad = Backend::parse("aio").unwrap_err();
    assert_eq!(bad.kind(), io::ErrorKind::InvalidInput);
    assert!(bad.to_string().contains("VDREP_IO"), "{bad}");

    assert_eq!(choose(None, Ok(())).unwrap(), Backend::AUTO_WITH_URING);
    assert_eq!(choose(None, Err("EPERM")).unwrap(), Backend::Pread);
    assert_eq!(
        choose(Some(Backend::Pread), Ok(())).unwrap(),
        Backend::Pread
    );
    assert_eq!(
        choose(Some(Backend::Uring), Ok(())).unwrap(),
        Backend::Uring
    );
    let refused = choose(Some(Backend::Uring), Err("EPERM")).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::Unsupported);
    assert!(refused.to_string().contains("VDREP_IO=pread"), "{refused}");
}

#[test]
fn this_host_allows_io_uring() {
    uring::probe().expect("io_uring should be available on the project's machines");
}

#[test]
fn fault_wrapper_fails_the_chosen_read_with_the_chosen_errno_and_passes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = random_file(dir.path(), 65536);
    let f = FaultyReadAt::new(PreadFile::open(&path).unwrap()).fail_nth_read(1, libc::EIO);
    let mut buf = [0u8; 100];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(
        f.read_exact_at(&mut buf, 0).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    f.read_exact_at(&mut buf, 200).unwrap();
    assert_eq!(buf[..], data[200..300]);
    assert_eq!((f.reads(), f.injected()), (3, 1));
}

#[test]
fn fault_wrapper_fails_reads_of_a_range_a_given_number_of_times_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = random_file(dir.path(), 65536);
    let f = FaultyReadAt::new(open_with(&path, Backend::Uring).unwrap()).fail_reads_overlapping(
        4096..8192,
        libc::EINTR,
        Some(2),
    );
    let mut buf = [0u8; 512];
    f.read_exact_at(&mut buf, 0).unwrap(); // does not overlap
    for _ in 0..2 {
        let e = f.read_exact_at(&mut buf, 8000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
    }
    f.read_exact_at(&mut buf, 8000).unwrap();
    assert_eq!(buf[..], data[8000..8512]);
    assert_eq!(f.injected(), 2);
}

#[test]
fn fault_wrapper_corrupts_exactly_the_bytes_of_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data) = random_file(dir.path(), 65536);
    let f = FaultyReadAt::new(PreadFile::open(&path).unwrap()).corrupt_range(1000..1010);
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    for (i, (&got, &want)) in buf.iter().zip(&data[..4096]).enumerate() {
        if (1000..1010).contains(&i) {
            assert_eq!(got, !want, "byte {i} is inverted");
        } else {
            assert_eq!(got, want, "byte {i} is untouched");
        }
    }
    assert_eq!(f.backend(), "fault");
    let _ = Fault::Corrupt;
}

//! pread versus io_uring for disk reads, cold (page cache evicted, or O_DIRECT) and cached.
//!
//! For each read size and queue depth D it reads the same region of a large file with:
//! - `pread`: D threads, each issuing blocking preads of one read size (depth = threads);
//! - `pread-direct`: the same through an O_DIRECT descriptor into aligned buffers;
//! - `uring`: one thread, one ring, D reads in flight (vdrep's `UringFile` with
//!   `depth = D`, `piece = size`), through the page cache;
//! - `uring-direct`: the same with O_DIRECT.
//!
//! and then "as used": two threads (the pipeline's CPU threads on this 2-core machine) calling
//! `read_exact_at` with 1 MiB buffers through `vdrep::io::open_with`'s default settings.
//!
//! Cold runs evict the file with `posix_fadvise(DONTNEED)` before every repetition, which affects
//! only this file, not other work on the machine (`echo 3 > /proc/sys/vm/drop_caches` would).
//! Medians of `--reps`; results go to `--out`.json and `--out`.md.
//!
//! `cargo run --release -p vdrep-bench --bin io_backends -- [--quick]`

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use vdrep::io::direct::{evict_cached_pages, open_direct, AlignedBuf};
use vdrep::io::uring::{DirectMode, UringFile, UringOptions};
use vdrep::io::{open_with, Backend, ReadAt};

#[derive(Parser, Debug)]
struct Args {
    /// The test file; created (random bytes) if missing or of another size.
    #[arg(long, default_value = "/var/tmp/vdrep-io-bench.dat")]
    file: PathBuf,
    /// File size in GiB.
    #[arg(long, default_value_t = 2)]
    size_gib: u64,
    /// Bytes read per run, in MiB (from the start of the file).
    #[arg(long, default_value_t = 1024)]
    run_mib: u64,
    /// Repetitions per point (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Queue depths.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32")]
    depths: Vec<usize>,
    /// Read sizes in KiB.
    #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
    sizes_kib: Vec<usize>,
    /// Output path without extension.
    #[arg(long, default_value = "bench/results/io_backends")]
    out: PathBuf,
    /// Small and fast: 256 MiB per run, depths 1 and 16, 1 MiB reads, one repetition.
    #[arg(long)]
    quick: bool,
    /// Which cache states to measure.
    #[arg(long, value_delimiter = ',', default_value = "cold,cached")]
    caches: Vec<String>,
    /// Remove the test file afterwards.
    #[arg(long)]
    remove: bool,
}

/// (cache state, method, depth, read size in KiB).
type Key = (&'static str, &'static str, usize, usize);

#[derive(Serialize, Clone)]
struct Point {
    cache: &'static str,
    method: &'static str,
    depth: usize,
    read_kib: usize,
    gb_per_s: f64,
    runs_gb_per_s: Vec<f64>,
}

#[derive(Serialize)]
struct Report {
    what: &'static str,
    host: Host,
    file_gib: u64,
    bytes_per_run: u64,
    reps: usize,
    points: Vec<Point>,
    as_used: Vec<Point>,
}

#[derive(Serialize)]
struct Host {
    kernel: String,
    cpus: usize,
    device: String,
}

fn main() -> Result<()> {
    let mut a = Args::parse();
    if a.quick {
        a.run_mib = 256;
        a.depths = vec![1, 16];
        a.sizes_kib = vec![1024];
        a.reps = 1;
    }
    vdrep::io::uring::probe().context("io_uring is not available here; nothing to compare")?;
    let size = a.size_gib << 30;
    let run = (a.run_mib << 20).min(size);
    ensure_file(&a.file, size)?;
    let evict = File::open(&a.file)?;

    // Repetitions are the outer loop so that load from other work on the machine spreads
    // over all methods instead of skewing one of them.
    let mut runs: Vec<(Key, Vec<f64>)> = Vec::new();
    for rep in 0..a.reps {
        for cache in ["cold", "cached"] {
            if !a.caches.iter().any(|c| c == cache) {
                continue;
            }
            if cache == "cached" {
                warm(&a.file, run)?;
            }
            for &kib in &a.sizes_kib {
                for &depth in &a.depths {
                    let methods: &[&'static str] = if cache == "cold" {
                        &["pread", "pread-direct", "uring", "uring-direct"]
                    } else {
                        &["pread", "uring"]
                    };
                    for &method in methods {
                        if cache == "cold" {
                            evict_cached_pages(&evict)?;
                        }
                        let t = Instant::now();
                        match method {
                            "pread" | "pread-direct" => pread_threads(
                                &a.file,
                                method == "pread-direct",
                                depth,
                                kib << 10,
                                run,
                            )?,
                            _ => uring_depth(
                                &a.file,
                                method == "uring-direct",
                                depth,
                                kib << 10,
                                run,
                            )?,
                        }
                        let gbps = run as f64 / t.elapsed().as_secs_f64() / 1e9;
                        eprintln!("rep {rep} {cache:6} {method:13} depth {depth:2} {kib:5} KiB  {gbps:.2} GB/s");
                        let key = (cache, method, depth, kib);
                        match runs.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, v)) => v.push(gbps),
                            None => runs.push((key, vec![gbps])),
                        }
                    }
                }
            }
        }
    }
    let points: Vec<Point> = runs
        .into_iter()
        .map(|((cache, method, depth, kib), v)| point(cache, method, depth, kib, v))
        .collect();

    let mut as_used = Vec::new();
    for cache in ["cold", "cached"] {
        let backends: &[(&'static str, Backend)] = if cache == "cold" {
            &[
                ("pread", Backend::Pread),
                ("uring", Backend::Uring),
                ("uring-direct", Backend::UringDirect),
            ]
        } else {
            &[("pread", Backend::Pread), ("uring", Backend::Uring)]
        };
        if cache == "cached" {
            warm(&a.file, run)?;
        }
        for &(name, backend) in backends {
            let mut runs = Vec::new();
            for _ in 0..a.reps {
                if cache == "cold" {
                    evict_cached_pages(&evict)?;
                }
                let f = open_with(&a.file, backend)?;
                let t = Instant::now();
                read_exact_threads(&*f, 2, 1 << 20, run)?;
                runs.push(run as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
            let p = point(cache, name, 2, 1024, runs);
            eprintln!(
                "as used {cache:6} {name:13} 2 threads x 1 MiB  {:.2} GB/s",
                p.gb_per_s
            );
            as_used.push(p);
        }
    }

    let report = Report {
        what: "pread vs io_uring disk reads (bench/src/bin/io_backends.rs)",
        host: host(&a.file),
        file_gib: a.size_gib,
        bytes_per_run: run,
        reps: a.reps,
        points,
        as_used,
    };
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        a.out.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(a.out.with_extension("md"), markdown(&report))?;
    eprintln!("wrote {}.{{json,md}}", a.out.display());
    if a.remove {
        std::fs::remove_file(&a.file)?;
    }
    Ok(())
}

fn point(
    cache: &'static str,
    method: &'static str,
    depth: usize,
    read_kib: usize,
    runs: Vec<f64>,
) -> Point {
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    Point {
        cache,
        method,
        depth,
        read_kib,
        gb_per_s: sorted[sorted.len() / 2],
        runs_gb_per_s: runs,
    }
}

/// Creates `path` with `size` pseudo-random (incompressible, never zero) bytes unless it exists.
fn ensure_file(path: &Path, size: u64) -> Result<()> {
    if std::fs::metadata(path)
        .map(|m| m.len() == size)
        .unwrap_or(false)
    {
        return Ok(());
    }
    eprintln!("writing {} ({} GiB)", path.display(), size >> 30);
    let mut f = File::create(path)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; 8 << 20];
    for _ in 0..size / chunk.len() as u64 {
        for w in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            w.copy_from_slice(&state.to_le_bytes());
        }
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Reads the first `run` bytes once so the cached runs start warm.
fn warm(path: &Path, run: u64) -> Result<()> {
    pread_threads(path, false, 2, 1 << 20, run)
}

/// `threads` threads share the region `[0, run)` in `size`-byte reads (an atomic cursor), as
/// a pool of blocking readers would.
fn pread_threads(path: &Path, direct: bool, threads: usize, size: usize, run: u64) -> Result<()> {
    let file = if direct {
        open_direct(path)?
    } else {
        File::open(path)?
    };
    let cursor = AtomicU64::new(0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = AlignedBuf::new(size);
                    loop {
                        let off = cursor.fetch_add(size as u64, Ordering::Relaxed);
                        if off >= run {
                            return Ok(());
                        }
                        let n = size.min((run - off) as usize);
                        file.read_exact_at(&mut buf[..n], off)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("reader thread")?;
        }
        Ok(())
    })
}

/// One thread keeps `depth` reads of `size` bytes in flight on its ring.
fn uring_depth(path: &Path, direct: bool, depth: usize, size: usize, run: u64) -> Result<()> {
    let opts = UringOptions {
        depth: depth as u32,
        piece: size,
        direct: if direct {
            DirectMode::Always
        } else {
            DirectMode::Off
        },
    };
    let f = UringFile::open_with(path, opts)?;
    if direct && !f.is_direct() {
        bail!("{}: the filesystem refuses O_DIRECT", path.display());
    }
    // The same memory as D pread threads' buffers, so cached runs copy into an equally warm
    // destination (a larger rotating buffer measured cache misses, not the backend): each call
    // is one batch of D pieces, the way the backend serves one large read.
    let call = (depth * size).min(run as usize);
    let mut buf = AlignedBuf::new(call);
    buf.fill(1); // fault the pages in: measure reads, not first-touch page faults
    let mut off = 0u64;
    while off < run {
        let n = call.min((run - off) as usize);
        f.read_exact_at(&mut buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// The pipeline's pattern: `threads` threads each calling `read_exact_at` on `size`-byte
/// buffers, taking the next offset from a shared cursor.
fn read_exact_threads(f: &dyn ReadAt, threads: usize, size: usize, run: u64) -> Result<()> {
    let cursor = AtomicU64::new(0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = vec![0u8; size];
                    loop {
                        let off = cursor.fetch_add(size as u64, Ordering::Relaxed);
                        if off >= run {
                            return Ok(());
                        }
                        let n = size.min((run - off) as usize);
                        f.read_exact_at(&mut buf[..n], off)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("reader thread")?;
        }
        Ok(())
    })
}

fn host(file: &Path) -> Host {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dev = std::fs::read_to_string("/sys/block/vda/queue/read_ahead_kb")
        .map(|ra| format!("vda (virtio), read_ahead_kb {}", ra.trim()))
        .unwrap_or_else(|_| "unknown".into());
    Host {
        kernel: kernel.trim().to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        device: format!("{dev}; file {}", file.display()),
    }
}

fn markdown(r: &Report) -> String {
    let mut m = String::new();
    m += "# pread vs io_uring disk reads\n\n";
    m += &format!(
        "Generated by `bench/src/bin/io_backends.rs`. Kernel {}, {} CPUs (shared with other work), {}. \
         File {} GiB of random bytes; each run reads the first {} MiB; GB/s = 10^9 B/s, median of {}.\n\n",
        r.host.kernel, r.host.cpus, r.host.device, r.file_gib, r.bytes_per_run >> 20, r.reps
    );
    m += "Depth D: `pread*` = D threads of blocking reads; `uring*` = one thread with D reads in flight.\n";
    m += "Cold = file evicted with posix_fadvise(DONTNEED) before each repetition; `*-direct` = O_DIRECT.\n\n";
    for cache in ["cold", "cached"] {
        let methods: Vec<&str> = if cache == "cold" {
            vec!["pread", "pread-direct", "uring", "uring-direct"]
        } else {
            vec!["pread", "uring"]
        };
        m += &format!(
            "## {cache}\n\n| read | depth | {} | uring/pread |\n|---|---|{}---|\n",
            methods.join(" | "),
            "---|".repeat(methods.len())
        );
        let mut keys: Vec<(usize, usize)> = r
            .points
            .iter()
            .filter(|p| p.cache == cache)
            .map(|p| (p.read_kib, p.depth))
            .collect();
        keys.dedup();
        for (kib, depth) in keys {
            let get = |meth: &str| {
                r.points
                    .iter()
                    .find(|p| {
                        p.cache == cache
                            && p.method == meth
                            && p.read_kib == kib
                            && p.depth == depth
                    })
                    .map(|p| p.gb_per_s)
            };
            let cells: Vec<String> = methods
                .iter()
                .map(|x| get(x).map(|v| format!("{v:.2}")).unwrap_or_default())
                .collect();
            let best_uring = get("uring")
                .into_iter()
                .chain(get("uring-direct"))
                .fold(0.0, f64::max);
            let best_pread = get("pread")
                .into_iter()
                .chain(get("pread-direct"))
                .fold(0.0, f64::max);
            m += &format!(
                "| {kib} KiB | {depth} | {} | {:.2} |\n",
                cells.join(" | "),
                best_uring / best_pread
            );
        }
        m += "\n";
    }
    m += "## As used: 2 threads calling `read_exact_at` with 1 MiB buffers (default options)\n\n| cache | backend | GB/s |\n|---|---|---|\n";
    for p in &r.as_used {
        m += &format!("| {} | {} | {:.2} |\n", p.cache, p.method, p.gb_per_s);
    }
    m
}

//! Per-stage breakdown of vdrep's sender and receiver pipeline on the realistic image.
//!
//! Method: the CPU stages are timed in isolation, one thread, over the same bytes, with the
//! same calls the pipeline makes (`VirtualDisk::read_at` of 1 MiB chunks; the 64 KiB OR-fold
//! zero check of `pipeline::prepare`; zstd per level of what the pipeline compresses into a
//! fresh copy — per read, one frame from its first to its last non-zero block, reads joined to
//! 4 MiB from `JOIN_FROM_LEVEL` up — with the pipeline's per-thread contexts;
//! `blake3::hash` of each run; `pwrite` of the runs + `fdatasync` for the receiver's write).
//! The network stages cannot run without the others, so they are measured by difference: a
//! loopback `vdrep send` → `vdrep receive` with compression off (`--compression-level 0`)
//! costs sender CPU = read + zero + hash + send, and receiver CPU = receive + verify (hash)
//! + write; subtracting the isolated stages leaves send and receive (QUIC, TLS, framing).
//!
//! A second loopback run with the default settings shows the whole pipeline together.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use vdrep::disk::{self, ExtentKind, ExtentWalker, OpenOptions};

use crate::gen::{self, Format, GenSpec};
use crate::report;
use crate::timed::{Timed, Usage};
use crate::tools::{self, Ctx};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image to measure (default: a generated realistic raw image of --size).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Size of the generated image (it is held in memory once).
    #[arg(long, default_value = "1GiB", value_parser = crate::parse_size)]
    size: u64,
    /// zstd levels to time (the adaptive ladder: -3, -1, 1, 3, 6, 9; and 12 for comparison).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        default_value = "-3,-1,1,3,6,9,12"
    )]
    levels: Vec<i32>,
    /// The vdrep binary for the loopback runs (default: beside this binary).
    #[arg(long)]
    vdrep: Option<PathBuf>,
    /// Folder for the temporary image and replicas.
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Results folder.
    #[arg(long, default_value_os_t = crate::default_results())]
    results: PathBuf,
    /// Results file name.
    #[arg(long, default_value = "stages")]
    name: String,
}

/// `POSIX_FADV_DONTNEED` on the whole file, as `vdrep`'s local store after a checkpoint.
fn drop_cache(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on an open descriptor; no memory is passed.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// One stage's cost.
#[derive(Debug, Serialize)]
struct Stage {
    stage: String,
    side: &'static str,
    /// Bytes the stage processed.
    bytes: u64,
    /// One-core seconds per GiB of *image*.
    s_per_gib: f64,
    /// Throughput of one core over the bytes it processed.
    gbps_per_core: f64,
    note: String,
}

/// CPU seconds of this thread: isolated stages are timed in CPU time, not wall time, so other
/// load on a shared machine does not inflate them (and they compare with the loopback runs'
/// CPU seconds from `/usr/bin/time`).
fn cpu_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A stopwatch over this thread's CPU time.
struct Cpu(f64);
impl Cpu {
    fn start() -> Cpu {
        Cpu(cpu_now())
    }
    fn secs(&self) -> f64 {
        cpu_now() - self.0
    }
}

fn is_zero(b: &[u8]) -> bool {
    // Same OR-fold as pipeline::prepare.
    let mut words = b.chunks_exact(16);
    let acc = words.by_ref().fold(0u128, |acc, w| {
        acc | u128::from_ne_bytes(w.try_into().unwrap_or([0xff; 16]))
    });
    acc == 0 && words.remainder().iter().all(|&x| x == 0)
}

fn stage(name: &str, side: &'static str, bytes: u64, secs: f64, image: u64, note: String) -> Stage {
    Stage {
        stage: name.into(),
        side,
        bytes,
        s_per_gib: secs / report::gib(image),
        gbps_per_core: bytes as f64 / 1e9 / secs.max(1e-9),
        note,
    }
}

fn loopback(ctx: &Ctx, image: &Path, extra: &[&str]) -> anyhow::Result<(Usage, Usage)> {
    let certs = tools::vdrep_certs(ctx)?;
    let store = ctx.dir.join("store");
    let _ = std::fs::remove_dir_all(&store);
    let bin = ctx.vdrep.display().to_string();
    let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (st, ce) = (store.display().to_string(), certs.display().to_string());
    let mut recv = Timed::spawn(
        None,
        &ctx.dir,
        "loop-receive",
        &bin,
        &sv(&[
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &st,
            "--tls",
            &ce,
            "--allow",
            "bench=vm",
        ]),
    )?;
    let mut lines = BufReader::new(recv.stdout().context("stdout")?).lines();
    let addr = loop {
        let l = lines
            .next()
            .context("vdrep receive exited before listening")??;
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let state = ctx.dir.join("send-state");
    let _ = std::fs::remove_dir_all(&state);
    let state = state.display().to_string();
    let mut args = sv(&[
        "send",
        "--to",
        &addr,
        "--state",
        &state,
        "--tls",
        &ce,
        "--identity",
        "bench",
        "--vm",
        "vm",
        "--json",
        "--no-progress",
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(image.display().to_string());
    let mut send = Timed::spawn(None, &ctx.dir, "loop-send", &bin, &args)?;
    let mut o = send.stdout().context("stdout")?;
    let h = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = o.read_to_string(&mut s);
    });
    let su = send.wait()?;
    let _ = h.join();
    std::thread::sleep(Duration::from_millis(100));
    let ru = recv.stop()?;
    let _ = std::fs::remove_dir_all(&store);
    Ok((su, ru))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let tmp = match &a.tmp {
        Some(t) => tempfile::Builder::new()
            .prefix("vdrep-bench-stages")
            .tempdir_in(t)?,
        None => tempfile::Builder::new()
            .prefix("vdrep-bench-stages")
            .tempdir()?,
    };
    let image = match &a.image {
        Some(p) => p.clone(),
        None => {
            let p = tmp.path().join("realistic.img");
            let spec = GenSpec {
                size: a.size,
                seed: 1,
                format: Format::Raw,
                allocated: 1.0,
                sparse: false,
            };
            gen::generate(&spec, &p)?;
            p
        }
    };
    let d = disk::open(&image, OpenOptions::default())?;
    let size = d.info().virtual_size;
    let mut chunks: Vec<(u64, usize)> = Vec::new();
    for e in ExtentWalker::new(d.as_ref(), 1 << 30) {
        {
            let e = e?;
            if e.kind == ExtentKind::Data {
                let mut o = e.offset;
                while o < e.end() {
                    let n = (e.end() - o).min(1 << 20);
                    chunks.push((o, n as usize));
                    o += n;
                }
            }
        }
    }
    // Warm the page cache so "read" measures the reader, not the disk.
    for &(o, n) in &chunks {
        d.read_at(o, n)?;
    }
    let mut out = Vec::new();
    // Timed pass: each buffer is dropped at once, as in the pipeline, so the allocator
    // recycles it (keeping 1 GiB of fresh buffers would add a page fault per 4 KiB).
    let t = Cpu::start();
    for &(o, n) in &chunks {
        std::hint::black_box(d.read_at(o, n)?);
    }
    let read_s = t.secs();
    let data: Vec<(u64, Bytes)> = chunks
        .iter()
        .map(|&(o, n)| Ok((o, d.read_at(o, n)?)))
        .collect::<anyhow::Result<_>>()?;
    let read_b: u64 = data.iter().map(|(_, b)| b.len() as u64).sum();
    out.push(stage(
        "read",
        "sender",
        read_b,
        read_s,
        size,
        "VirtualDisk::read_at, 1 MiB, page cache warm".into(),
    ));
    let t = Cpu::start();
    let mut runs: Vec<(u64, Bytes)> = Vec::new();
    for (o, b) in &data {
        let mut start: Option<usize> = None;
        for p in (0..b.len()).step_by(64 << 10) {
            let e = (p + (64 << 10)).min(b.len());
            match (is_zero(&b[p..e]), start) {
                (true, Some(s)) => {
                    runs.push((o + s as u64, b.slice(s..p)));
                    start = None;
                }
                (false, None) => start = Some(p),
                _ => {}
            }
        }
        if let Some(s) = start {
            runs.push((o + s as u64, b.slice(s..)));
        }
    }
    out.push(stage(
        "zero-detect",
        "sender",
        read_b,
        t.secs(),
        size,
        "64 KiB OR-fold".into(),
    ));
    let data_b: u64 = runs.iter().map(|(_, r)| r.len() as u64).sum();
    // What the pipeline compresses: per read, its span from the first to the last non-zero
    // block (zeros inside); from JOIN_FROM_LEVEL up, four consecutive reads joined.
    let span = |b: &[u8]| -> Option<Bytes> {
        let blocks: Vec<usize> = (0..b.len())
            .step_by(64 << 10)
            .filter(|&p| !is_zero(&b[p..(p + (64 << 10)).min(b.len())]))
            .collect();
        let (f, l) = (*blocks.first()?, *blocks.last()?);
        Some(Bytes::copy_from_slice(&b[f..(l + (64 << 10)).min(b.len())]))
    };
    let spans1: Vec<Bytes> = data.iter().filter_map(|(_, b)| span(b)).collect();
    let spans4: Vec<Bytes> = data
        .chunks(4)
        .filter_map(|g| {
            span(
                &g.iter()
                    .flat_map(|(_, b)| b.iter().copied())
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    for &l in &a.levels {
        let (spans, frames) = if l >= vdrep::pipeline::JOIN_FROM_LEVEL {
            (&spans4, "4 MiB")
        } else {
            (&spans1, "1 MiB")
        };
        let t = Cpu::start();
        let mut c = 0u64;
        for r in spans.iter() {
            c += vdrep::codec::zstd_ctx::compress(r, l)?.len() as u64;
        }
        let secs = t.secs();
        out.push(stage(
            &format!("compress zstd {l}"),
            "sender",
            data_b,
            secs,
            size,
            format!(
                "ratio {:.2} on non-zero data, {frames} reads ({:.0} MB per GiB of image)",
                data_b as f64 / c as f64,
                c as f64 / 1e6 * (1u64 << 30) as f64 / size as f64
            ),
        ));
    }
    let t = Cpu::start();
    for (_, r) in &runs {
        std::hint::black_box(blake3::hash(r));
    }
    let hs = t.secs();
    out.push(stage(
        "hash BLAKE3",
        "sender",
        data_b,
        hs,
        size,
        "blake3::hash per run".into(),
    ));
    out.push(stage(
        "verify BLAKE3",
        "receiver",
        data_b,
        hs,
        size,
        "same cost as hash".into(),
    ));
    let wf = tmp.path().join("write-test.img");
    let f = std::fs::File::create(&wf)?;
    f.set_len(size)?;
    let t = Cpu::start();
    let w0 = Instant::now();
    // As the local store does at its checkpoints: fdatasync, then drop the clean pages (here
    // every 128 MiB written rather than every 500 ms).
    let mut since = 0u64;
    for (o, r) in &runs {
        f.write_all_at(r, *o)?;
        since += r.len() as u64;
        if since >= 128 << 20 {
            f.sync_data()?;
            drop_cache(&f);
            since = 0;
        }
    }
    f.sync_data()?;
    drop_cache(&f);
    let cpu = t.secs();
    out.push(stage(
        "write",
        "receiver",
        data_b,
        cpu,
        size,
        format!(
            "pwrite of non-zero runs, fdatasync + drop cache per 128 MiB (CPU); {:.2} s/GiB wall",
            w0.elapsed().as_secs_f64() / report::gib(size)
        ),
    ));
    drop(f);
    let _ = std::fs::remove_file(&wf);
    drop(data);
    drop(runs);
    let vdrep = match &a.vdrep {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("vdrep"),
    };
    let ctx = Ctx {
        dir: tmp.path().to_path_buf(),
        vdrep,
        vdrep_args: vec![],
    };
    let g = report::gib(size);
    let (s0, r0) = loopback(&ctx, &image, &["--compression-level", "0"])?;
    let cost = |n: &str| {
        out.iter()
            .filter(|s| s.stage == n)
            .map(|s| s.s_per_gib)
            .sum::<f64>()
    };
    // A derived cost at or below zero is within the noise of the subtraction.
    let per_core = |c: f64| {
        if c > 0.0 {
            data_b as f64 / 1e9 / (c * g)
        } else {
            f64::NAN
        }
    };
    let send = s0.cpu_s / g - cost("read") - cost("zero-detect") - cost("hash BLAKE3");
    let recv = r0.cpu_s / g - cost("verify BLAKE3") - cost("write");
    out.push(Stage {
        stage: "send (QUIC+TLS+framing, derived)".into(),
        side: "sender",
        bytes: data_b,
        s_per_gib: send,
        gbps_per_core: per_core(send),
        note: format!(
            "loopback level 0: sender {:.2} CPU-s minus read, zero-detect, hash",
            s0.cpu_s
        ),
    });
    out.push(Stage {
        stage: "receive (QUIC+TLS+framing, derived)".into(),
        side: "receiver",
        bytes: data_b,
        s_per_gib: recv,
        gbps_per_core: per_core(recv),
        note: format!(
            "loopback level 0: receiver {:.2} CPU-s minus verify, write",
            r0.cpu_s
        ),
    });
    let (s1, r1) = loopback(&ctx, &image, &[])?;
    let e2e = serde_json::json!({
        "loopback_level0": {"wall_s": s0.wall_s, "source_mbps": report::mbps(size, s0.wall_s),
            "sender": s0, "receiver": r0},
        "loopback_default": {"wall_s": s1.wall_s, "source_mbps": report::mbps(size, s1.wall_s),
            "sender": s1, "receiver": r1},
    });
    let env = report::environment(&[]);
    let mut md = format!(
        "# Per-stage breakdown\n\nImage: {:.2} GiB realistic mix ({:.0} % non-zero data). Each \
         stage timed alone on one core (thread CPU time) over the same bytes; send/receive derived from a loopback \
         run with compression off (see bench/README.md for the method). s/GiB = one-core seconds \
         per GiB of image: a stage limits a 2-core pipeline to about 2 / (sum of s/GiB) GiB/s.\n\n",
        g,
        100.0 * data_b as f64 / size as f64
    );
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|s| {
            vec![
                s.stage.clone(),
                s.side.into(),
                format!("{:.3}", s.s_per_gib),
                format!("{:.2}", s.gbps_per_core),
                s.note.clone(),
            ]
        })
        .collect();
    md += &report::table(
        &["stage", "side", "s/GiB (1 core)", "GB/s per core", "how"],
        &rows,
    );
    md += &format!(
        "\nLoopback end to end (127.0.0.1, no shaping): compression off {:.0} MB/s \
         (CPU s sender {:.2} / receiver {:.2}); default {:.0} MB/s (CPU s {:.2} / {:.2}).\n\
         Machine: {} CPUs, kernel {}; {}.\n",
        report::mbps(size, s0.wall_s),
        s0.cpu_s,
        r0.cpu_s,
        report::mbps(size, s1.wall_s),
        s1.cpu_s,
        r1.cpu_s,
        env.cpus,
        env.kernel,
        env.date_utc
    );
    let json = serde_json::json!({"benchmark": "stages", "environment": env, "image_bytes": size,
        "data_bytes": data_b, "stages": out, "end_to_end": e2e});
    report::write(&a.results, &a.name, &json, &md)?;
    print!("{md}");
    Ok(())
}

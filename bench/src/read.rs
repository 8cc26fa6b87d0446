//! Benchmark A: read a whole virtual disk with vdrep's reader and with qemu's, same run, same
//! image, page cache warm for both. qemu's side is
//! `qemu-img convert -n -f FMT --target-image-opts SRC driver=null-co,size=N`: it reads the
//! source (skipping what block status calls unallocated or zero) and discards it.
//! vdrep's side is `vdrep-bench read-pass`: `vdrep::disk::open`, the extent walk, then
//! `read_at` of every data extent in pipeline-sized chunks on N threads — the sender
//! pipeline's read path without the later stages.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use vdrep::disk::{self, ExtentKind, ExtentWalker, OpenOptions};

use crate::gen::{self, Format, GenSpec};
use crate::report;
use crate::timed::{median, Timed, Usage};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Existing images to read (default: generate a half-allocated and a fully allocated
    /// dynamic image of --size in --format into a temporary folder, deleted afterwards).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Size of generated images.
    #[arg(long, default_value = "8GiB", value_parser = crate::parse_size)]
    size: u64,
    /// Format of generated images.
    #[arg(long, value_enum, default_value_t = Format::Vhdx)]
    format: Format,
    /// Timed runs per tool and image (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Reader threads of vdrep's pass (the pipeline uses one per core).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Read size of vdrep's pass (the pipeline's chunk is 1 MiB).
    #[arg(long, default_value = "1MiB", value_parser = crate::parse_size)]
    chunk: u64,
    /// Folder for temporary images (default: the system temp dir).
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Results folder.
    #[arg(long, default_value_os_t = crate::default_results())]
    results: PathBuf,
    /// Results file name (without extension).
    #[arg(long, default_value = "read")]
    name: String,
}

#[derive(clap::Args, Debug)]
pub struct PassArgs {
    image: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value = "1MiB", value_parser = crate::parse_size)]
    chunk: u64,
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct PassResult {
    virtual_size: u64,
    bytes_read: u64,
    seconds: f64,
}

/// One pass of vdrep's reader; prints a JSON [`PassResult`].
pub fn pass(a: PassArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    let d = disk::open(&a.image, OpenOptions::default())?;
    let size = d.info().virtual_size;
    let mut chunks = Vec::new();
    for e in ExtentWalker::new(d.as_ref(), 1 << 30) {
        {
            let e = e?;
            if e.kind != ExtentKind::Data {
                continue;
            }
            let mut o = e.offset;
            while o < e.end() {
                let n = (e.end() - o).min(a.chunk);
                chunks.push((o, n as usize));
                o += n;
            }
        }
    }
    let next = AtomicUsize::new(0);
    let read: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..a.threads.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<u64> {
                    let mut n = 0u64;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(o, l)) = chunks.get(i) else {
                            return Ok(n);
                        };
                        // The pipeline's own call: one fresh buffer per chunk.
                        let b = d.read_at(o, l)?;
                        n += b.len() as u64;
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?)
            .sum::<anyhow::Result<u64>>()
    })?;
    let r = PassResult {
        virtual_size: size,
        bytes_read: read,
        seconds: t.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

#[derive(Debug, Serialize)]
struct ImageResult {
    image: String,
    format: String,
    virtual_size: u64,
    allocated_bytes: u64,
    runs: usize,
    qemu: Vec<Usage>,
    vdrep: Vec<Usage>,
    qemu_median_s: f64,
    vdrep_median_s: f64,
    qemu_gbps: f64,
    vdrep_gbps: f64,
    /// qemu time / vdrep time: ≥ 1.0 meets the target.
    ratio: f64,
}

fn qemu_format(img: &Path) -> anyhow::Result<String> {
    let o = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(img)
        .output()
        .context("qemu-img not found: install qemu-utils (ops/setup.sh)")?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .with_context(|| format!("qemu-img info {}: no JSON", img.display()))?;
    Ok(v["format"].as_str().unwrap_or("raw").to_string())
}

fn bench_image(a: &Args, img: &Path, dir: &Path) -> anyhow::Result<ImageResult> {
    let d = disk::open(img, OpenOptions::default())?;
    let size = d.info().virtual_size;
    let allocated: u64 = disk::all_extents(d.as_ref())?
        .iter()
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.length)
        .sum();
    drop(d);
    let fmt = qemu_format(img)?;
    let me = std::env::current_exe()?.display().to_string();
    let img_s = img.display().to_string();
    let vd_args = vec![
        "read-pass".to_string(),
        img_s.clone(),
        "--threads".into(),
        a.threads.to_string(),
        "--chunk".into(),
        a.chunk.to_string(),
    ];
    let q_args: Vec<String> = [
        "convert",
        "-n",
        "-f",
        &fmt,
        "--target-image-opts",
        &img_s,
        &format!("driver=null-co,size={size}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Warm the page cache (and check both tools work) before timing.
    Timed::spawn(None, dir, "warm-vdrep", &me, &vd_args)?.wait()?;
    Timed::spawn(None, dir, "warm-qemu", "qemu-img", &q_args)?.wait()?;
    let (mut q, mut v) = (Vec::new(), Vec::new());
    for r in 0..a.runs {
        // Alternate the order so neither tool always runs right after the other's reads.
        for first_qemu in [r % 2 == 0, r % 2 != 0] {
            if first_qemu {
                q.push(Timed::spawn(None, dir, "qemu", "qemu-img", &q_args)?.wait()?);
            } else {
                v.push(Timed::spawn(None, dir, "vdrep", &me, &vd_args)?.wait()?);
            }
        }
        eprintln!(
            "  run {}: qemu {:.2} s, vdrep {:.2} s",
            r + 1,
            q.last().map_or(0.0, |u| u.wall_s),
            v.last().map_or(0.0, |u| u.wall_s)
        );
    }
    let qm = median(&q.iter().map(|u| u.wall_s).collect::<Vec<_>>());
    let vm = median(&v.iter().map(|u| u.wall_s).collect::<Vec<_>>());
    Ok(ImageResult {
        image: img
            .file_name()
            .map_or(img_s.clone(), |s| s.to_string_lossy().into()),
        format: fmt,
        virtual_size: size,
        allocated_bytes: allocated,
        runs: a.runs,
        qemu: q,
        vdrep: v,
        qemu_median_s: qm,
        vdrep_median_s: vm,
        qemu_gbps: size as f64 / 1e9 / qm,
        vdrep_gbps: size as f64 / 1e9 / vm,
        ratio: qm / vm,
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let tmp = match &a.tmp {
        Some(t) => tempfile::Builder::new()
            .prefix("vdrep-bench-read")
            .tempdir_in(t)?,
        None => tempfile::Builder::new()
            .prefix("vdrep-bench-read")
            .tempdir()?,
    };
    let mut images = a.image.clone();
    if images.is_empty() {
        for (tag, allocated) in [("half", 0.5), ("full", 1.0)] {
            let p = tmp.path().join(format!("{tag}.{}", a.format.qemu()));
            let spec = GenSpec {
                size: a.size,
                seed: 1,
                format: a.format,
                allocated,
                sparse: true,
            };
            eprintln!("generating {}", p.display());
            gen::generate(&spec, &p)?;
            images.push(p);
        }
    }
    let mut results = Vec::new();
    for img in &images {
        eprintln!("reading {}", img.display());
        results.push(bench_image(&a, img, tmp.path())?);
    }
    let env = report::environment(&[("qemu-img", "--version")]);
    let mut md = format!(
        "# Reader benchmark (A)\n\nWhole virtual disk read from the page cache; median of {} \
         runs each, same run. qemu: `qemu-img convert -n -f FMT --target-image-opts SRC \
         driver=null-co,size=N`; vdrep: `vdrep-bench read-pass` ({} threads, {} KiB reads, \
         `VirtualDisk::read_at` on every data extent). Ratio = qemu time / vdrep time \
         (target ≥ 1.0).\n\n",
        a.runs,
        a.threads,
        a.chunk >> 10
    );
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mv =
                |u: &[Usage], f: fn(&Usage) -> f64| median(&u.iter().map(f).collect::<Vec<_>>());
            vec![
                r.image.clone(),
                r.format.clone(),
                format!("{:.1}", report::gib(r.virtual_size)),
                format!(
                    "{:.0} %",
                    100.0 * r.allocated_bytes as f64 / r.virtual_size as f64
                ),
                format!("{:.2}", r.qemu_gbps),
                format!("{:.2}", r.vdrep_gbps),
                format!("**{:.2}×**", r.ratio),
                format!(
                    "{:.2} / {:.2}",
                    mv(&r.qemu, |u| u.cpu_s),
                    mv(&r.vdrep, |u| u.cpu_s)
                ),
                format!(
                    "{:.0} / {:.0}",
                    mv(&r.qemu, |u| u.peak_rss_mib),
                    mv(&r.vdrep, |u| u.peak_rss_mib)
                ),
            ]
        })
        .collect();
    md += &report::table(
        &[
            "image",
            "format",
            "GiB",
            "allocated",
            "qemu GB/s",
            "vdrep GB/s",
            "ratio",
            "CPU s qemu / vdrep",
            "peak RSS MiB qemu / vdrep",
        ],
        &rows,
    );
    md += &format!(
        "\nGB/s are decimal gigabytes of *virtual* disk per second. Machine: {} CPUs, kernel {}, {}; {}.\n",
        env.cpus, env.kernel, env.tools.join(", "), env.date_utc
    );
    let json = serde_json::json!({ "benchmark": "read", "environment": env, "threads": a.threads,
        "chunk": a.chunk, "results": results });
    report::write(&a.results, &a.name, &json, &md)?;
    print!("{md}");
    Ok(())
}

//! Benchmark B: initial replication of the realistic image between two network namespaces,
//! per link shape, vdrep against rsync (`--whole-file`, `-z`) and `zstd | socat` in the
//! same run, on the same image and the same link.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::cache::{self, SourceCache};
use crate::gen::{self, Format, GenSpec};
use crate::netns::{Link, Shape};
use crate::report;
use crate::timed::{median, Usage};
use crate::tools::{self, Ctx, Tool};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Link shapes: unlimited, or a tbf rate in bit/s like 1gbit, 100mbit.
    #[arg(long, value_delimiter = ',', default_value = "unlimited,1gbit,100mbit",
          value_parser = parse_shape)]
    shapes: Vec<Shape>,
    /// Image size on links of 1 Gbit/s and faster.
    #[arg(long, default_value = "8GiB", value_parser = crate::parse_size)]
    size_fast: u64,
    /// Image size on links slower than 1 Gbit/s.
    #[arg(long, default_value = "1GiB", value_parser = crate::parse_size)]
    size_slow: u64,
    /// Contenders, in run order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "vdrep,rsync-whole,rsync-z,zstd-socat"
    )]
    tools: Vec<Tool>,
    /// Runs per tool and shape (medians and bests reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Page-cache state of the source image before each run of every tool: cold (dropped
    /// with POSIX_FADV_DONTNEED, as a VM disk on a hypervisor) or warm (one untimed read
    /// first). Checked with mincore either way.
    #[arg(long, value_enum, default_value = "cold")]
    source_cache: SourceCache,
    /// Check every copy against the source with qemu-img compare (slow on 8 GiB).
    #[arg(long)]
    verify: bool,
    /// The vdrep binary (default: `vdrep` beside this binary).
    #[arg(long)]
    vdrep: Option<PathBuf>,
    /// Extra argument for `vdrep send` (repeat), e.g. --vdrep-arg=--threads=8.
    #[arg(long, allow_hyphen_values = true)]
    vdrep_arg: Vec<String>,
    /// Folder for temporary images and copies (default: the system temp dir).
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Results folder.
    #[arg(long, default_value_os_t = crate::default_results())]
    results: PathBuf,
    /// Results file name (without extension); the chart is NAME.png.
    #[arg(long, default_value = "replicate")]
    name: String,
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    let l = s.to_ascii_lowercase();
    if l == "unlimited" {
        return Ok(None);
    }
    let (n, m) = if let Some(n) = l.strip_suffix("gbit") {
        (n, 1_000_000_000)
    } else if let Some(n) = l.strip_suffix("mbit") {
        (n, 1_000_000)
    } else {
        return Err(format!("{s}: use unlimited, NNgbit or NNmbit"));
    };
    let n: u64 = n.parse().map_err(|_| format!("{s}: bad rate"))?;
    Ok(Some(n * m))
}

/// One transfer in the results.
#[derive(Debug, Serialize)]
struct Row {
    shape: String,
    tool: Tool,
    label: &'static str,
    run: usize,
    image_bytes: u64,
    /// The page-cache state asked for, and the share of the image resident when the tool
    /// started (mincore).
    source_cache: SourceCache,
    source_resident: f64,
    wall_s: f64,
    source_mbps: f64,
    /// tx_bytes of the sender's veth during the transfer (data direction).
    wire_bytes: u64,
    /// tx_bytes of the receiver's veth (acks, replies).
    wire_back_bytes: u64,
    sender: Usage,
    receiver: Usage,
    cpu_s_per_gib: f64,
    vdrep_summary: Option<serde_json::Value>,
}

/// Medians of one tool on one shape.
#[derive(Debug, Serialize)]
struct Summary {
    shape: String,
    tool: Tool,
    label: &'static str,
    runs: usize,
    image_bytes: u64,
    /// Median.
    source_mbps: f64,
    /// Best of the runs.
    best_source_mbps: f64,
    wire_bytes: f64,
    sender_cpu_s_per_gib: f64,
    receiver_cpu_s_per_gib: f64,
    sender_peak_rss_mib: f64,
    receiver_peak_rss_mib: f64,
    vs_rsync_whole: Option<f64>,
    vs_zstd_socat: Option<f64>,
    /// Against the copy made durable in its timed run ([`Tool::RsyncWholeFsync`]).
    vs_rsync_durable: Option<f64>,
    /// The same ratios of the best runs.
    best_vs_rsync_whole: Option<f64>,
    best_vs_zstd_socat: Option<f64>,
    best_vs_rsync_durable: Option<f64>,
}

fn summarize(rows: &[Row], shape: &str, tools: &[Tool]) -> Vec<Summary> {
    let mut out: Vec<Summary> = tools
        .iter()
        .filter_map(|&t| {
            let r: Vec<&Row> = rows
                .iter()
                .filter(|r| r.shape == shape && r.tool == t)
                .collect();
            let first = r.first()?;
            let m = |f: &dyn Fn(&Row) -> f64| median(&r.iter().map(|x| f(x)).collect::<Vec<_>>());
            let g = report::gib(first.image_bytes);
            Some(Summary {
                shape: shape.to_string(),
                tool: t,
                label: t.label(),
                runs: r.len(),
                image_bytes: first.image_bytes,
                source_mbps: m(&|x| x.source_mbps),
                best_source_mbps: r.iter().map(|x| x.source_mbps).fold(0.0, f64::max),
                wire_bytes: m(&|x| x.wire_bytes as f64),
                sender_cpu_s_per_gib: m(&|x| x.sender.cpu_s) / g,
                receiver_cpu_s_per_gib: m(&|x| x.receiver.cpu_s) / g,
                sender_peak_rss_mib: m(&|x| x.sender.peak_rss_mib),
                receiver_peak_rss_mib: m(&|x| x.receiver.peak_rss_mib),
                vs_rsync_whole: None,
                vs_zstd_socat: None,
                vs_rsync_durable: None,
                best_vs_rsync_whole: None,
                best_vs_zstd_socat: None,
                best_vs_rsync_durable: None,
            })
        })
        .collect();
    let rate = |t: Tool, v: &[Summary]| v.iter().find(|s| s.tool == t).map(|s| s.source_mbps);
    let (rw, zs) = (rate(Tool::RsyncWhole, &out), rate(Tool::ZstdSocat, &out));
    let rd = rate(Tool::RsyncWholeFsync, &out);
    for s in &mut out {
        s.vs_rsync_whole = rw.map(|b| s.source_mbps / b);
        s.vs_zstd_socat = zs.map(|b| s.source_mbps / b);
        s.vs_rsync_durable = rd.map(|b| s.source_mbps / b);
    }
    let best = |t: Tool, v: &[Summary]| v.iter().find(|s| s.tool == t).map(|s| s.best_source_mbps);
    let (brw, bzs) = (best(Tool::RsyncWhole, &out), best(Tool::ZstdSocat, &out));
    let brd = best(Tool::RsyncWholeFsync, &out);
    for s in &mut out {
        s.best_vs_rsync_whole = brw.map(|b| s.best_source_mbps / b);
        s.best_vs_zstd_socat = bzs.map(|b| s.best_source_mbps / b);
        s.best_vs_rsync_durable = brd.map(|b| s.best_source_mbps / b);
    }
    out
}

/// The targets of the issue, checked against the vdrep summaries.
fn targets(sums: &[Summary]) -> Vec<(String, f64, Option<f64>)> {
    let mut t = Vec::new();
    for s in sums.iter().filter(|s| s.tool == Tool::Vdrep) {
        let limited = s.shape != "unlimited";
        // Against rsync, durable or not: the same target.
        let vs_rsync = if limited { 2.5 } else { 1.0 };
        t.push((
            format!("{}: vdrep / rsync --whole-file", s.shape),
            vs_rsync,
            s.vs_rsync_whole,
        ));
        if s.vs_rsync_durable.is_some() {
            t.push((
                format!(
                    "{}: vdrep / rsync --whole-file --fsync (both copies durable; reference)",
                    s.shape
                ),
                vs_rsync,
                s.vs_rsync_durable,
            ));
        }
        if limited {
            let slow = s.shape != "1gbit";
            t.push((
                format!("{}: vdrep / zstd -1 -T2 | socat", s.shape),
                if slow { 1.1 } else { 1.0 },
                s.vs_zstd_socat,
            ));
        }
    }
    t
}

fn image_for(tmp: &Path, size: u64, cache: &mut Vec<(u64, PathBuf)>) -> anyhow::Result<PathBuf> {
    if let Some((_, p)) = cache.iter().find(|(s, _)| *s == size) {
        return Ok(p.clone());
    }
    // Drop the previous image: only one large image at a time in the temp folder.
    for (_, p) in cache.drain(..) {
        let _ = std::fs::remove_file(p);
    }
    let p = tmp.join(format!("realistic-{}m.img", size >> 20));
    let spec = GenSpec {
        size,
        seed: 1,
        format: Format::Raw,
        allocated: 1.0,
        sparse: false,
    };
    eprintln!(
        "generating {} ({} MiB, raw, dense)",
        p.display(),
        size >> 20
    );
    gen::generate(&spec, &p)?;
    cache.push((size, p.clone()));
    Ok(p)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let tmp = match &a.tmp {
        Some(t) => tempfile::Builder::new()
            .prefix("vdrep-bench-repl")
            .tempdir_in(t)?,
        None => tempfile::Builder::new()
            .prefix("vdrep-bench-repl")
            .tempdir()?,
    };
    let vdrep = match &a.vdrep {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe folder")?
            .join("vdrep"),
    };
    let ctx = Ctx {
        dir: tmp.path().to_path_buf(),
        vdrep,
        vdrep_args: a.vdrep_arg.clone(),
    };
    let mut images = Vec::new();
    let mut rows = Vec::new();
    let mut sums = Vec::new();
    for &shape in &a.shapes {
        let fast = shape.is_none_or(|b| b >= 1_000_000_000);
        let size = if fast { a.size_fast } else { a.size_slow };
        let image = image_for(tmp.path(), size, &mut images)?;
        let link = Link::up(shape)?;
        let name = link.shape_name();
        for run in 0..a.runs {
            for &tool in &a.tools {
                let resident = cache::prepare(&image, a.source_cache)?;
                let (s0, r0) = link.tx_bytes()?;
                let t = match tools::run(tool, &ctx, &image) {
                    Ok(t) => t,
                    Err(e) => {
                        keep_logs(
                            tmp.path(),
                            &a.results.join(format!("{}-failure-logs", a.name)),
                        );
                        return Err(e.context(format!("{} on {name}", tool.label())));
                    }
                };
                let (s1, r1) = link.tx_bytes()?;
                if a.verify {
                    tools::verify(tool, &image, &t)?;
                }
                tools::cleanup(&t);
                let row = Row {
                    shape: name.clone(),
                    tool,
                    label: tool.label(),
                    run,
                    image_bytes: size,
                    source_cache: a.source_cache,
                    source_resident: resident,
                    wall_s: t.wall_s,
                    source_mbps: report::mbps(size, t.wall_s),
                    wire_bytes: s1 - s0,
                    wire_back_bytes: r1 - r0,
                    cpu_s_per_gib: (t.sender.cpu_s + t.receiver.cpu_s) / report::gib(size),
                    sender: t.sender,
                    receiver: t.receiver,
                    vdrep_summary: t.vdrep_summary,
                };
                eprintln!(
                    "{name} run {}: {:<20} {:8.1} MB/s  wire {:.0} MB  cpu {:.2}+{:.2} s",
                    run + 1,
                    tool.label(),
                    row.source_mbps,
                    row.wire_bytes as f64 / 1e6,
                    row.sender.cpu_s,
                    row.receiver.cpu_s
                );
                rows.push(row);
            }
        }
        drop(link);
        sums.extend(summarize(&rows, &name, &a.tools));
    }
    let env = report::environment(&[
        ("rsync", "--version"),
        ("zstd", "--version"),
        ("socat", "-V"),
    ]);
    let md = markdown(&a, &sums, &env) + &controller(&rows);
    let tg: Vec<_> = targets(&sums)
        .into_iter()
        .map(|(what, target, got)| {
            serde_json::json!({"what": what, "target": target, "measured": got,
            "met": got.map(|g| g >= target)})
        })
        .collect();
    let json = serde_json::json!({ "benchmark": "replicate", "environment": env,
        "runs": a.runs, "source_cache": a.source_cache, "vdrep_args": a.vdrep_arg, "summary": sums, "targets": tg, "rows": rows });
    report::write(&a.results, &a.name, &json, &md)?;
    chart(&a.results, &a.name);
    print!("{md}");
    Ok(())
}

fn markdown(a: &Args, sums: &[Summary], env: &report::Environment) -> String {
    let mut md = format!(
        "# Replication benchmark (B)\n\nRealistic raw image (25 % zero, 25 % random, 50 % text-like \
         64 KiB blocks, dense), sender and receiver in two network namespaces joined by a veth pair, \
         tc tbf on the sender's veth. Source page cache **{}** before each run of every tool \
         ({}; checked with mincore). Median and best of {} run(s) per cell. Source MB/s = image \
         bytes / wall time (decimal MB). Wire = tx_bytes of the sender's veth. CPU = user + \
         system seconds per GiB of image (`/usr/bin/time`, children included), sender / \
         receiver. vdrep args: `{}`.\n\n",
        match a.source_cache {
            SourceCache::Warm => "warm",
            SourceCache::Cold => "cold",
        },
        match a.source_cache {
            SourceCache::Warm => "one untimed read of the whole image first",
            SourceCache::Cold => "POSIX_FADV_DONTNEED on the image",
        },
        a.runs,
        a.vdrep_arg.join(" ")
    );
    let rows: Vec<Vec<String>> = sums
        .iter()
        .map(|s| {
            let r = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.2}×"));
            vec![
                s.shape.clone(),
                format!("{:.0} MiB", s.image_bytes >> 20),
                s.label.to_string(),
                format!("{:.1}", s.source_mbps),
                format!("{:.1}", s.best_source_mbps),
                r(s.vs_rsync_whole),
                r(s.best_vs_rsync_whole),
                r(s.vs_zstd_socat),
                r(s.best_vs_zstd_socat),
                format!("{} / {}", r(s.vs_rsync_durable), r(s.best_vs_rsync_durable)),
                format!("{:.0}", s.wire_bytes / 1e6),
                format!(
                    "{:.2} / {:.2}",
                    s.sender_cpu_s_per_gib, s.receiver_cpu_s_per_gib
                ),
                format!(
                    "{:.0} / {:.0}",
                    s.sender_peak_rss_mib, s.receiver_peak_rss_mib
                ),
            ]
        })
        .collect();
    md += &report::table(
        &[
            "link",
            "image",
            "tool",
            "source MB/s median",
            "best",
            "vs rsync --whole-file",
            "best vs rsync --whole-file",
            "vs zstd|socat",
            "best vs zstd|socat",
            "vs rsync --fsync median / best",
            "wire MB",
            "CPU s/GiB snd / rcv",
            "peak RSS MiB snd / rcv",
        ],
        &rows,
    );
    md += "\n## Targets\n\n";
    let trows: Vec<Vec<String>> = targets(sums)
        .into_iter()
        .map(|(w, t, g)| {
            vec![
                w,
                format!("≥ {t:.1}×"),
                g.map_or("–".into(), |v| format!("{v:.2}×")),
                match g {
                    Some(v) if v >= t => "met".into(),
                    Some(_) => "**missed**".into(),
                    None => "not measured".into(),
                },
            ]
        })
        .collect();
    md += &report::table(&["ratio", "target", "measured", ""], &trows);
    md += &format!(
        "\nMachine: {} CPUs, kernel {}; {}; {}.\n",
        env.cpus,
        env.kernel,
        env.tools.join("; "),
        env.date_utc
    );
    md
}

/// What vdrep's compression controller did in each run (from `vdrep send --json`): the share
/// of the source read at each level and the ticks it held for want of spare host CPU. On a
/// slow link a run that stays low (session 12: a whole run at level 1, 1.00× the pipe) shows
/// here rather than only as a ratio.
fn controller(rows: &[Row]) -> String {
    let lines: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let c = r.vdrep_summary.as_ref()?.get("compression")?;
            let by: Vec<(String, u64)> =
                serde_json::from_value(c.get("read_bytes_by_level")?.clone()).ok()?;
            let total = by.iter().map(|b| b.1).sum::<u64>().max(1);
            let levels: Vec<String> = by
                .iter()
                .map(|(l, n)| format!("{l}: {:.1} %", *n as f64 * 100.0 / total as f64))
                .collect();
            Some(format!(
                "- {} run {}: {}; climbs held for want of spare CPU: {}\n",
                r.shape,
                r.run + 1,
                levels.join(", "),
                c.get("climbs_held")?.as_u64()?
            ))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\n## vdrep's compression levels (share of the source read at each)\n\n{}",
        lines.concat()
    )
}

/// Copies the tools' stderr logs out of the temporary folder before it is deleted, so a
/// failed transfer can be diagnosed.
fn keep_logs(tmp: &Path, to: &Path) {
    let _ = std::fs::create_dir_all(to);
    if let Ok(rd) = std::fs::read_dir(tmp) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "stderr" || x == "log") {
                let _ = std::fs::copy(&p, to.join(e.file_name()));
            }
        }
    }
    eprintln!("logs of the failed run kept in {}", to.display());
}

/// Draws NAME.png with bench/plot.py in bench/.venv when it is there.
fn chart(results: &Path, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join(".venv/bin/python");
    if !py.exists() {
        eprintln!(
            "no chart: create the venv first (python3 -m venv bench/.venv && \
             bench/.venv/bin/pip install matplotlib), then run bench/plot.py {}",
            results.join(format!("{name}.json")).display()
        );
        return;
    }
    let st = std::process::Command::new(py)
        .arg(root.join("plot.py"))
        .arg(results.join(format!("{name}.json")))
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        eprintln!("plot.py failed: {st:?}");
    }
}

//! `vdrep-bench`: vdrep measured against baselines in the same run (see bench/README.md).

mod cache;
mod gen;
mod netns;
mod qemu;
mod read;
mod replicate;
mod report;
mod stages;
mod timed;
mod tools;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vdrep-bench",
    about = "Benchmarks of vdrep against same-run baselines"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the realistic image (25 % zero, 25 % random, 50 % text-like 64 KiB blocks).
    GenImage {
        #[command(flatten)]
        spec: gen::GenSpec,
        /// Output file (replaced).
        out: PathBuf,
    },
    /// Benchmark A: read the whole virtual disk, vdrep's reader vs qemu-img convert.
    Read(read::Args),
    /// One timed pass of vdrep's reader over an image (run by `read` as a child process).
    #[command(hide = true)]
    ReadPass(read::PassArgs),
    /// Benchmark B: replication over a veth pair between two network namespaces.
    Replicate(replicate::Args),
    /// Per-stage breakdown of vdrep's pipeline on the realistic image.
    Stages(stages::Args),
    /// qemu source: guest write latency protected vs not (python3-libnbd, queue depth 1).
    QemuLatency(qemu::latency::Args),
    /// qemu source: a cycle of scattered dirty 64 KiB blocks vs an initial copy, on the veth link.
    QemuCycle(qemu::cycle::Args),
}

/// Parses `8GiB`, `512MiB`, `1G` (binary), `1000000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s}: not a size like 8GiB"))?;
    let m: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(format!("{s}: unknown unit (use KiB, MiB, GiB)")),
    };
    Ok((n * m as f64) as u64)
}

/// Where results go unless `--results` says otherwise: `bench/results` of this source tree.
pub fn default_results() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::GenImage { spec, out } => {
            let t = std::time::Instant::now();
            gen::generate(&spec, &out)?;
            eprintln!(
                "wrote {} ({} bytes virtual) in {:.1} s",
                out.display(),
                spec.size,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Read(a) => read::run(a),
        Cmd::ReadPass(a) => read::pass(a),
        Cmd::Replicate(a) => replicate::run(a),
        Cmd::Stages(a) => stages::run(a),
        Cmd::QemuLatency(a) => qemu::latency::run(a),
        Cmd::QemuCycle(a) => qemu::cycle::run(a),
    }
}

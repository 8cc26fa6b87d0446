//! Resync benchmark: a raw disk with 1 % of its 4 KiB pages changed after replication,
//! brought back by `vdrep send --resync` and, in the same run, by
//! `rsync --inplace --no-whole-file` of the same image pair through an rsync daemon on
//! 127.0.0.1. Reports wire bytes (data and hashes apart), wall time and CPU time, and the
//! baseline the issue sets: the changed pages compressed one by one with zstd-1.
//!
//! `cargo run --release -p vdrep-bench --bin resync_bench -- --size-gib 16 --out bench/results`
//! (needs `target/release/vdrep`, `rsync`).

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    /// Disk size in GiB.
    #[arg(long, default_value_t = 16)]
    size_gib: u64,
    /// Percentage of 4 KiB pages changed.
    #[arg(long, default_value_t = 1.0)]
    percent: f64,
    /// Work folder (default: a temporary one under /tmp).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Where resync.json and resync.md go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

const PAGE: u64 = 4096;

/// User + system CPU seconds of waited-for children (the vdrep processes, rsync).
fn cpu_children() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn vdrep() -> PathBuf {
    let p = PathBuf::from("target/release/vdrep");
    if p.is_file() {
        p
    } else {
        PathBuf::from("target/debug/vdrep")
    }
}

fn run(c: &mut Command) -> anyhow::Result<String> {
    let out = c.stderr(Stdio::inherit()).output().context("spawn")?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let tmp;
    let work = match &a.work {
        Some(w) => w.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("resync-bench-{}", std::process::id()));
            tmp.clone()
        }
    };
    std::fs::create_dir_all(&work)?;
    let size = a.size_gib << 30;
    let img = work.join("disk.raw");
    let old = work.join("rsync").join("disk.raw");
    std::fs::create_dir_all(old.parent().unwrap())?;
    // Source: seeded data, every 4th MiB zero.
    eprintln!("making a {} GiB image", a.size_gib);
    {
        let f = std::fs::File::create(&img)?;
        f.set_len(size)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut buf = vec![0u8; 1 << 20];
        for (i, off) in (0..size).step_by(1 << 20).enumerate() {
            if i % 4 != 3 {
                // Half random, half text-like: compressible like a real disk.
                rng.fill(&mut buf[..1 << 19]);
                for (j, b) in buf[1 << 19..].iter_mut().enumerate() {
                    *b = b"the quick brown fox jumps over the lazy dog "[j % 44];
                }
                f.write_all_at(&buf, off)?;
            }
        }
    }
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&old))?;
    let tls = work.join("tls");
    run(Command::new(vdrep())
        .args(["certs", "init"])
        .arg(&tls)
        .args(["--sender", "hv"]))?;
    let store = work.join("store");
    let mut rx = Command::new(vdrep())
        .args(["receive", "--listen", "127.0.0.1:0", "--store"])
        .arg(&store)
        .arg("--tls")
        .arg(&tls)
        .args(["--allow", "hv=vm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(rx.stdout.as_mut().unwrap()),
        &mut line,
    )?;
    let addr = line.trim().trim_start_matches("listening on ").to_string();
    let send = |extra: &[&str]| -> anyhow::Result<serde_json::Value> {
        let out = run(Command::new(vdrep())
            .args([
                "send",
                "--to",
                &addr,
                "--server-name",
                "localhost",
                "--identity",
                "hv",
                "--vm",
                "vm",
                "--json",
                "--no-progress",
            ])
            .arg("--tls")
            .arg(&tls)
            .arg("--state")
            .arg(work.join("send-state"))
            .args(extra)
            .arg(&img))?;
        Ok(serde_json::from_str(&out)?)
    };
    eprintln!("initial replication");
    send(&[])?;
    // Change 1 % of the pages (random bytes), remembering the zstd size of each.
    let pages = ((size / PAGE) as f64 * a.percent / 100.0) as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut set = std::collections::BTreeSet::new();
    while (set.len() as u64) < pages {
        set.insert(rng.gen_range(0..size / PAGE));
    }
    let f = std::fs::OpenOptions::new().write(true).open(&img)?;
    let mut zstd_bytes = 0u64;
    let mut buf = vec![0u8; PAGE as usize];
    for p in &set {
        rng.fill(&mut buf[..2048]);
        for (j, b) in buf[2048..].iter_mut().enumerate() {
            *b = b"lorem ipsum dolor sit amet "[j % 27];
        }
        f.write_all_at(&buf, p * PAGE)?;
        zstd_bytes += zstd_len(&buf) as u64;
    }
    drop(f);
    let changed = pages * PAGE;
    // vdrep resync (cold-ish caches are not forced; both tools see the same page cache).
    eprintln!("vdrep resync");
    let c0 = cpu_children();
    let t0 = Instant::now();
    let v = send(&["--resync"])?;
    let v_time = t0.elapsed();
    let v_cpu = cpu_children() - c0;
    // rsync through a daemon on 127.0.0.1.
    eprintln!("rsync");
    let port = 18873 + (std::process::id() % 1000) as u16;
    let conf = work.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\n[m]\npath = {}\nread only = no\nuid = root\ngid = root\n",
            old.parent().unwrap().display()
        ),
    )?;
    let mut d = Command::new("rsync")
        .args([
            "--daemon",
            "--no-detach",
            "--address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg(format!("--config={}", conf.display()))
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let c1 = cpu_children();
    let t1 = Instant::now();
    let stats = run(Command::new("rsync")
        .args(["--inplace", "--no-whole-file", "--stats"])
        .arg(&img)
        .arg(format!("rsync://127.0.0.1:{port}/m/disk.raw")))?;
    let r_time = t1.elapsed();
    let _ = d.kill();
    let _ = d.wait();
    let r_cpu = cpu_children() - c1;
    let num = |key: &str| -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.split_whitespace().next().unwrap_or("0").replace(',', ""))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    // One contiguous 256 MiB change (after rsync's run, on the same replica): the descent
    // stops where most children differ, so its hash bytes stay small.
    eprintln!("vdrep resync of one contiguous 256 MiB region");
    let region = (256u64 << 20).min(size / 4);
    let at = size / 3 / PAGE * PAGE + 8192;
    {
        let f = std::fs::OpenOptions::new().write(true).open(&img)?;
        let mut buf = vec![0u8; 1 << 20];
        for off in (0..region).step_by(1 << 20) {
            rng.fill(&mut buf[..]);
            f.write_all_at(&buf, at + off)?;
        }
    }
    let t2 = Instant::now();
    let vc = send(&["--resync"])?;
    let vc_time = t2.elapsed();
    let _ = rx.kill();
    let _ = rx.wait();
    let r_sent = num("Total bytes sent");
    let r_recv = num("Total bytes received");
    let vd = v["wire_bytes"].as_u64().unwrap_or(0);
    let vh = v["hash_bytes"].as_u64().unwrap_or(0);
    let res = serde_json::json!({
        "size_bytes": size,
        "changed_pages": pages,
        "changed_bytes": changed,
        "zstd1_changed_pages_bytes": zstd_bytes,
        "vdrep": {
            "data_wire_bytes": vd, "hash_bytes": vh, "total_wire_bytes": vd + vh,
            "resync_changed_bytes": v["resync_changed_bytes"],
            "seconds": v_time.as_secs_f64(), "cpu_seconds_sender_and_receiver": v_cpu,
        },
        "vdrep_contiguous": {
            "region_bytes": region,
            "resync_changed_bytes": vc["resync_changed_bytes"],
            "data_wire_bytes": vc["wire_bytes"], "hash_bytes": vc["hash_bytes"],
            "seconds": vc_time.as_secs_f64(),
        },
        "rsync": {
            "bytes_sent": r_sent, "bytes_received": r_recv, "total_wire_bytes": r_sent + r_recv,
            "seconds": r_time.as_secs_f64(), "cpu_seconds_client_and_daemon": r_cpu,
        },
        "ratios": {
            "hash_over_changed": vh as f64 / changed as f64,
            "total_over_zstd_plus_hashes": (vd + vh) as f64 / (zstd_bytes + vh) as f64,
            "total_over_rsync": (vd + vh) as f64 / (r_sent + r_recv).max(1) as f64,
            "time_over_rsync": v_time.as_secs_f64() / r_time.as_secs_f64(),
        }
    });
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(
        a.out.join("resync.json"),
        serde_json::to_string_pretty(&res)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&res)?);
    if a.work.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

fn zstd_len(page: &[u8]) -> usize {
    zstd::bulk::compress(page, 1)
        .map(|c| c.len().min(page.len()))
        .unwrap_or(page.len())
}

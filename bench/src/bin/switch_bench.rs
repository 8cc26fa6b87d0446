//! The VM-wide log switch (issue 17): how long the tracking locks are held, and how long a
//! tracked write waits for a switch.
//!
//! 1. A VM of `--disks` raw disks (default 4) of `--disk-mib` each, in `--folders` folders,
//!    with change tracking started (through the library, as the sender starts it).
//! 2. A writer thread makes tracked writes without pause, round robin over the disks: the
//!    library's tracked-write call (`Tracker::lock_for_write`, then the disk write and the
//!    log append, durable), 4 KiB at random offsets. Each call's wait for the lock is
//!    timed.
//! 3. The main thread runs `--switches` (default 1000) switches of all the disks with
//!    `tracking::switch_set` (what the sender calls), `--gap-ms` apart, and deletes the
//!    closed logs after each (as shipping does). Each switch reports its **hold**: from the
//!    first tracking lock taken to the last released (target ≤ 25 ms at p99).
//! 4. A write whose wait overlaps a switch's hold is a write *during a switch*; its wait
//!    is compared with that switch's hold: the excess must stay ≤ 5 ms.
//! 5. **Baseline** (same run, same folder): a synced directory write — create a small file,
//!    fsync it, rename it, fsync the folder — timed `--switches` times; the hold is at least
//!    one folder sync, so the ratio hold / baseline says what the switch adds to it.
//!
//! `cargo run --release -p vdrep-bench --bin switch_bench -- [--switches 1000]`; results in
//! `bench/results/switch.{json,md}`. On a machine shared with other work, run it under
//! `nice` and read the figures as an upper bound.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vdrep::tracking::{switch_set, SwitchDisk, Tracker};
use vdrep_proto::Guid;

#[derive(Parser, Debug)]
struct Args {
    /// Scratch folder (recreated).
    #[arg(long, default_value = "/var/tmp/vdrep-switch-bench")]
    work: PathBuf,
    /// Disks of the VM.
    #[arg(long, default_value_t = 4)]
    disks: usize,
    /// Folders the disks are spread over (each switch syncs each folder once).
    #[arg(long, default_value_t = 1)]
    folders: usize,
    /// Size of each disk in MiB.
    #[arg(long, default_value_t = 64)]
    disk_mib: u64,
    /// Switches to time.
    #[arg(long, default_value_t = 1000)]
    switches: usize,
    /// Pause between switches (the writer writes meanwhile).
    #[arg(long, default_value_t = 5)]
    gap_ms: u64,
    /// Output path without extension.
    #[arg(long, default_value = "bench/results/switch")]
    out: PathBuf,
}

#[derive(Serialize, Default)]
struct Dist {
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn dist(mut v: Vec<f64>) -> Dist {
    if v.is_empty() {
        return Dist::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Dist {
        n: v.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: *v.last().unwrap_or(&0.0),
    }
}

#[derive(Serialize)]
struct Results {
    /// `debug` or `release` (the hold is syscalls: renames and folder syncs).
    build: &'static str,
    /// `/proc/loadavg` at the start: this machine may be shared.
    loadavg: String,
    disks: usize,
    folders: usize,
    switches: usize,
    /// First lock taken to last released.
    hold: Dist,
    /// `switch_set` from call to return (prepare, hold, closing the old logs).
    switch_call: Dist,
    /// The tracked-write call's wait for the lock, all writes.
    write_wait_all: Dist,
    /// The wait of writes that overlapped a switch's hold.
    write_wait_during_switch: Dist,
    /// Per such write: its wait minus the hold of the switch it met (target ≤ 5 ms).
    wait_minus_hold_max_ms: f64,
    /// Baseline: one synced directory write (file fsync + rename + folder fsync).
    baseline_dir_write: Dist,
    ratio_hold_p99_to_baseline_p99: f64,
    writes: usize,
    seconds: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The tracked-write call as a host agent makes it (`vdrep log-write` minus the process):
/// returns the wait for the lock and the interval it covered.
fn tracked_write(
    t: &Tracker,
    disk: &std::fs::File,
    off: u64,
    data: &Bytes,
) -> Result<(Instant, Instant)> {
    let t0 = Instant::now();
    let locked = t.lock_for_write(SystemTime::now())?;
    let t1 = Instant::now();
    disk.write_all_at(data, off)?;
    locked.append(&[(off, data.clone())], SystemTime::now())?;
    Ok((t0, t1))
}

fn baseline(dir: &Path, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    let f = dir.join("baseline");
    let tmp = dir.join("baseline.tmp");
    for i in 0..n {
        let t0 = Instant::now();
        std::fs::write(&tmp, format!("{i}\n"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &f)?;
        std::fs::File::open(dir)?.sync_all()?;
        v.push(ms(t0.elapsed()));
    }
    Ok(v)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let w = &a.work;
    let _ = std::fs::remove_dir_all(w);
    std::fs::create_dir_all(w)?;
    let size = a.disk_mib << 20;
    let mut trackers = Vec::new();
    let mut files = Vec::new();
    for i in 0..a.disks {
        let dir = w.join(format!("folder{}", i % a.folders.max(1)));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("disk{i}.raw"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        f.set_len(size)?;
        let t = Tracker::new(&path, size);
        t.lock()?.start(Guid::NIL, SystemTime::now())?;
        trackers.push(t);
        files.push(f);
    }
    let base = baseline(&w.join("folder0"), a.switches).context("baseline")?;

    let stop = AtomicBool::new(false);
    let writes: Mutex<Vec<(Instant, Instant)>> = Mutex::new(Vec::new());
    let mut holds = Vec::with_capacity(a.switches);
    let mut calls = Vec::with_capacity(a.switches);
    let t_start = Instant::now();
    std::thread::scope(|sc| -> Result<()> {
        let writer = sc.spawn(|| -> Result<()> {
            let mut rng = StdRng::seed_from_u64(17);
            let data = Bytes::from(vec![0x5au8; 4096]);
            let mut i = 0usize;
            let mut local = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let d = i % trackers.len();
                let off = rng.gen_range(0..size / 4096) * 4096;
                local.push(tracked_write(&trackers[d], &files[d], off, &data)?);
                i += 1;
            }
            writes.lock().unwrap().extend(local);
            Ok(())
        });
        let res = (|| -> Result<()> {
            for s in 0..a.switches {
                let cycle = s as u64 + 1;
                let set: Vec<SwitchDisk<'_>> = trackers
                    .iter()
                    .map(|t| SwitchDisk {
                        vm: "bench",
                        tracker: t,
                        cycle,
                    })
                    .collect();
                let t0 = Instant::now();
                let sw = switch_set(&set, SystemTime::now())?;
                calls.push(ms(t0.elapsed()));
                holds.push((sw.locked_at.into_std(), sw.released_at.into_std()));
                for d in &sw.disks {
                    std::fs::remove_file(&d.closed)?;
                }
                std::thread::sleep(Duration::from_millis(a.gap_ms));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let wres = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?;
        res.and(wres)
    })?;
    let seconds = t_start.elapsed().as_secs_f64();
    let writes = writes.into_inner().unwrap();

    let hold_ms: Vec<f64> = holds
        .iter()
        .map(|(a, b)| ms(b.saturating_duration_since(*a)))
        .collect();
    let mut during = Vec::new();
    let mut excess_max = f64::MIN;
    for &(w0, w1) in &writes {
        // The switch whose hold the write's wait overlapped.
        if let Some(&(h0, h1)) = holds.iter().find(|&&(h0, h1)| w0 < h1 && w1 > h0) {
            let wait = ms(w1 - w0);
            during.push(wait);
            excess_max = excess_max.max(wait - ms(h1.saturating_duration_since(h0)));
        }
    }
    let hold = dist(hold_ms);
    let baseline_dir_write = dist(base);
    let r = Results {
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        loadavg,
        disks: a.disks,
        folders: a.folders,
        switches: a.switches,
        ratio_hold_p99_to_baseline_p99: hold.p99_ms / baseline_dir_write.p99_ms.max(1e-9),
        hold,
        switch_call: dist(calls),
        write_wait_all: dist(writes.iter().map(|(a, b)| ms(*b - *a)).collect()),
        write_wait_during_switch: dist(during),
        wait_minus_hold_max_ms: if excess_max == f64::MIN {
            0.0
        } else {
            excess_max
        },
        baseline_dir_write,
        writes: writes.len(),
        seconds,
    };
    println!("{}", serde_json::to_string_pretty(&r)?);
    write_results(&a, &r)?;
    let _ = std::fs::remove_dir_all(w);
    Ok(())
}

fn write_results(a: &Args, r: &Results) -> Result<()> {
    if let Some(d) = a.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        a.out.with_extension("json"),
        serde_json::to_string_pretty(r)?,
    )?;
    let row = |name: &str, d: &Dist| {
        format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} |\n",
            d.n, d.p50_ms, d.p99_ms, d.max_ms
        )
    };
    let mut md = format!(
        "# VM-wide log switch: lock hold and writer wait\n\n\
         {} switches of a {}-disk VM ({} folder(s)), a writer making tracked 4 KiB writes \
         without pause ({} writes, {:.1} s). `bench/src/bin/switch_bench.rs`, {} build, \
         load average at the start {}.\n\n\
         | what | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n",
        r.switches, r.disks, r.folders, r.writes, r.seconds, r.build, r.loadavg
    );
    md += &row(
        "hold: first lock taken → last released (target p99 ≤ 25)",
        &r.hold,
    );
    md += &row("switch_set call (prepare + hold + close)", &r.switch_call);
    md += &row("tracked-write wait, all writes", &r.write_wait_all);
    md += &row(
        "tracked-write wait, writes during a hold",
        &r.write_wait_during_switch,
    );
    md += &row("baseline: synced directory write", &r.baseline_dir_write);
    md += &format!(
        "\nLongest wait of a write during a switch minus that switch's hold: {:.2} ms \
         (target ≤ 5). Hold p99 / baseline p99: {:.2}.\n",
        r.wait_minus_hold_max_ms, r.ratio_hold_p99_to_baseline_p99
    );
    std::fs::write(a.out.with_extension("md"), md)?;
    Ok(())
}

//! Delta cycles on loopback: a cycle of scattered changes against an initial copy of the same
//! bytes, the cost of an empty cycle, and what a recovery point costs the store.
//!
//! 1. A sparse raw disk of `--disk-gib` gets `--change-mib` of scattered 4 KiB..1 MiB
//!    extents (disjoint, random bytes "A"); `vdrep send --interval 1s --max-cycles 1`
//!    copies it (initial replication) and ships one empty cycle.
//! 2. The same extents are rewritten with new random bytes "B", each write logged in the
//!    disk's change log under the tracking lock (through the library, as `vdrep log-write`
//!    does, minus a process per write), in shuffled order.
//! 3. **Cycle**: `vdrep send --interval 1s --max-cycles 1` switches the log and ships it; the
//!    time from the switch (the closed log `D.00000002.hrl` appears; polled every ms) to
//!    the receiver's "cycle committed" line (polled every 2 ms) is the cycle time. Right
//!    after the switch is seen, one `vdrep log-write` of 4 KiB (into a block the cycle does
//!    not touch) is timed: a writer must not wait for the cycle's hashing. The breakdown
//!    comes from the sender's log (`open_seconds`: reading and checking the closed log,
//!    `shipped_seconds`, `digest_wait_seconds`, and the digest task's own `seconds`) and
//!    from the store (first and last growth of the undo log: the first and last extent
//!    written).
//! 4. **Baseline** (same run, same binaries): a dense raw file holding exactly the bytes B,
//!    replicated by a one-shot `vdrep send` (read + zstd + BLAKE3 + QUIC + write + commit);
//!    its `--json` `seconds`. Ratio = cycle / baseline (target ≤ 1.2).
//! 5. **Empty cycles**: `vdrep send --interval 200ms --max-cycles 11` with no writes; the
//!    median of the sender's per-cycle `seconds` (ship start to commit acknowledged) over
//!    the last 10 cycles (target ≤ 50 ms).
//! 6. **Store overhead**: the undo log that keeps point 1 readable after cycle 2
//!    (`disk.p1.undo`) against the bytes the cycle changed (target ≤ 1.1×).
//!
//! `cargo build --bins && cargo run -p vdrep-bench --bin cycle_bench -- [--change-mib 1024]`
//! (`--vdrep PATH` picks the binary; default: the `vdrep` beside this benchmark's binary).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vdrep::tracking::Tracker;

#[derive(Parser, Debug)]
struct Args {
    /// Scratch folder (recreated).
    #[arg(long, default_value = "/var/tmp/vdrep-cycle-bench")]
    work: PathBuf,
    /// Virtual size of the source disk in GiB.
    #[arg(long, default_value_t = 4)]
    disk_gib: u64,
    /// Bytes changed by the measured cycle, in MiB.
    #[arg(long, default_value_t = 1024)]
    change_mib: u64,
    /// The vdrep binary.
    #[arg(long)]
    vdrep: Option<PathBuf>,
    /// Output path without extension.
    #[arg(long, default_value = "bench/results/cycles")]
    out: PathBuf,
    /// Seed of the extents and bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Serialize)]
struct Results {
    binary: String,
    disk_bytes: u64,
    changed_bytes: u64,
    extents: usize,
    cycle_switch_to_commit_s: f64,
    cycle_sender_ship_s: f64,
    cycle_receiver_commit_s: f64,
    cycle_first_write_s: f64,
    cycle_open_s: f64,
    cycle_shipped_s: f64,
    cycle_digest_wait_s: f64,
    cycle_digest_s: f64,
    log_write_during_switch_ms: f64,
    baseline_initial_copy_s: f64,
    ratio_cycle_to_baseline: f64,
    empty_cycle_seconds: Vec<f64>,
    empty_cycle_median_ms: f64,
    undo_bytes: u64,
    store_overhead: f64,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let vdrep = match &a.vdrep {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("vdrep"),
    };
    if !vdrep.is_file() {
        bail!(
            "{} missing: run `cargo build --bins` first",
            vdrep.display()
        );
    }
    let w = &a.work;
    let _ = std::fs::remove_dir_all(w);
    std::fs::create_dir_all(w)?;
    let tls = w.join("tls");
    run(Command::new(&vdrep)
        .args(["certs", "init"])
        .arg(&tls)
        .args(["--sender", "hv01"]))?;
    let store = w.join("store");
    let (mut rx, addr) = receiver(&vdrep, &store, &tls, &w.join("receiver.log"))?;
    let res = measure(&a, &vdrep, &addr, &tls, &store, &w.join("receiver.log"));
    let _ = rx.kill();
    let _ = rx.wait();
    let r = res?;
    write_results(&a.out, &r)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

fn measure(
    a: &Args,
    vdrep: &Path,
    addr: &str,
    tls: &Path,
    store: &Path,
    rx_log: &Path,
) -> Result<Results> {
    let w = &a.work;
    let size = a.disk_gib << 30;
    let total = a.change_mib << 20;
    let mut rng = StdRng::seed_from_u64(a.seed);
    // Disjoint extents spread over the disk: each 4 KiB..1 MiB, gaps averaging what keeps
    // them inside the disk.
    let mut extents = Vec::new();
    let mut n = 0u64;
    while n < total {
        let len = (rng.gen_range(1..=256u64) * 4096).min(total - n).max(4096);
        extents.push(len);
        n += len;
    }
    let gap_budget = size - n;
    let avg_gap = gap_budget / (extents.len() as u64 + 1);
    let mut placed = Vec::new();
    let mut off = 0u64;
    for len in &extents {
        // Mean gap 0.9 of the budget: the sum stays inside the disk.
        off += rng.gen_range(0..=avg_gap * 9 / 5) / 4096 * 4096;
        if off + len > size {
            bail!("extents do not fit: use a larger --disk-gib");
        }
        placed.push((off, *len));
        off += len;
    }
    let changed: u64 = placed.iter().map(|p| p.1).sum();
    eprintln!(
        "{} extents, {} MiB changed on a {} GiB disk",
        placed.len(),
        changed >> 20,
        a.disk_gib
    );

    // 1. Pre-image A, initial replication, one empty cycle.
    let disk = w.join("disk.raw");
    let f = std::fs::File::create(&disk)?;
    f.set_len(size)?;
    let mut buf = vec![0u8; 1 << 20];
    for &(o, l) in &placed {
        rng.fill(&mut buf[..l as usize]);
        f.write_all_at(&buf[..l as usize], o)?;
    }
    f.sync_all()?;
    let send_log = w.join("send.log");
    sender(
        vdrep,
        addr,
        tls,
        "vm1",
        &disk,
        &["--interval", "1s", "--max-cycles", "1"],
        &send_log,
    )?;
    eprintln!("initial replication done");

    // 2. Bytes B, tracked; the baseline file holds the same bytes densely.
    let base = w.join("baseline.raw");
    let bf = std::fs::File::create(&base)?;
    let tracker = Tracker::new(&disk, size);
    let mut order: Vec<usize> = (0..placed.len()).collect();
    order.shuffle(&mut rng);
    let mut base_off = vec![0u64; placed.len()];
    let mut acc = 0;
    for (i, p) in placed.iter().enumerate() {
        base_off[i] = acc;
        acc += p.1;
    }
    {
        let locked = tracker.lock()?;
        let mut batch = Vec::new();
        let mut bytes = 0;
        for &i in &order {
            let (o, l) = placed[i];
            let mut d = vec![0u8; l as usize];
            rng.fill(&mut d[..]);
            f.write_all_at(&d, o)?;
            bf.write_all_at(&d, base_off[i])?;
            bytes += l;
            batch.push((o, Bytes::from(d)));
            if bytes >= 64 << 20 {
                locked.append(&batch, SystemTime::now())?;
                batch.clear();
                bytes = 0;
            }
        }
        locked.append(&batch, SystemTime::now())?;
        f.sync_all()?;
        bf.sync_all()?;
    }
    drop(f);

    // 3. The cycle; the probe write goes into the first 1 MiB block no extent touches.
    let probe_block = (0..size >> 20)
        .find(|b| {
            let (s, e) = (b << 20, (b + 1) << 20);
            placed.iter().all(|&(o, l)| o + l <= s || o >= e)
        })
        .context("every block is touched: use a larger --disk-gib")?;
    let probe = w.join("probe.bin");
    std::fs::write(&probe, vec![0x5au8; 4096])?;
    let closed = tracker.paths().closed(2);
    let committed_before = count_lines(rx_log, "cycle committed as a recovery point");
    let mut child = spawn_sender(
        vdrep,
        addr,
        tls,
        "vm1",
        &disk,
        &["--interval", "1s", "--max-cycles", "1"],
        &send_log,
    )?;
    let end = Instant::now() + Duration::from_secs(120);
    while !closed.exists() {
        if Instant::now() > end {
            bail!("no switch within 120 s");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let t_switch = Instant::now();
    // In a thread: the store is watched meanwhile.
    let mut lw_cmd = Command::new(vdrep);
    lw_cmd
        .arg("log-write")
        .arg(&disk)
        .arg("--offset")
        .arg((probe_block << 20).to_string())
        .arg("--file")
        .arg(&probe);
    let log_write = std::thread::spawn(move || {
        let lw = Instant::now();
        run(&mut lw_cmd).map(|_| lw.elapsed().as_secs_f64() * 1000.0)
    });
    let undo = store.join("vm1").join("disk.p1.undo");
    // The receiver saves each write's pre-image in the undo log as the write arrives
    // (LAYOUT.md, "write/clear"): the last growth of that file is the last write, and what
    // follows until the commit is the receiver's tail (last flush, replica sync, state).
    let (mut t_undo, mut t_first, mut undo_len) = (None, None, 0);
    while count_lines(rx_log, "cycle committed as a recovery point") <= committed_before {
        let len = std::fs::metadata(&undo).map(|m| m.len()).unwrap_or(0);
        if len != undo_len {
            undo_len = len;
            t_undo = Some(Instant::now());
            t_first.get_or_insert(t_switch.elapsed().as_secs_f64());
        }
        if Instant::now() > end + Duration::from_secs(600) {
            bail!("cycle not committed within 10 min");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let cycle_s = t_switch.elapsed().as_secs_f64();
    let commit_s = t_undo
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(f64::NAN);
    let log_write_ms = log_write
        .join()
        .map_err(|_| anyhow::anyhow!("log-write thread panicked"))??;
    let st = child.wait()?;
    if !st.success() {
        bail!("cycle sender failed: {st}; see {}", send_log.display());
    }
    let slog = std::fs::read_to_string(&send_log)?;
    let ship = cycle_field(&slog, "cycle committed", "seconds");
    let ship_s = *ship.last().context("no cycle line")?;
    let last = |msg: &str, field: &str| {
        cycle_field(&slog, msg, field)
            .last()
            .copied()
            .unwrap_or(f64::NAN)
    };
    let open_s = last("cycle committed", "open_seconds");
    let shipped_s = last("cycle committed", "shipped_seconds");
    let digest_wait_s = last("cycle committed", "digest_wait_seconds");
    let digest_s = last("cycle digest computed", "seconds");
    let undo_bytes = std::fs::metadata(&undo)
        .with_context(|| format!("{}", undo.display()))?
        .len();
    eprintln!(
        "cycle: {cycle_s:.2} s switch to commit (sender ship {ship_s:.2} s: open {open_s:.2}, \
         shipped {shipped_s:.2}, digest wait {digest_wait_s:.2}; digest {digest_s:.2} s; \
         receiver first write {:.2} s, tail {commit_s:.2} s); log-write during the switch \
         {log_write_ms:.1} ms",
        t_first.unwrap_or(f64::NAN)
    );

    // 4. Baseline: one initial copy of the same bytes.
    let out = sender(vdrep, addr, tls, "vm2", &base, &[], &w.join("baseline.log"))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let base_s = v["seconds"].as_f64().context("baseline seconds")?;
    eprintln!("baseline: {base_s:.2} s");

    // 5. Empty cycles.
    let empty_log = w.join("empty.log");
    sender(
        vdrep,
        addr,
        tls,
        "vm1",
        &disk,
        &["--interval", "200ms", "--max-cycles", "11"],
        &empty_log,
    )?;
    let mut empty = cycle_field(
        &std::fs::read_to_string(&empty_log)?,
        "cycle committed",
        "seconds",
    );
    if empty.len() > 10 {
        empty.drain(..empty.len() - 10);
    }
    let mut sorted = empty.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if sorted.is_empty() {
        f64::NAN
    } else {
        (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0
    };
    Ok(Results {
        binary: vdrep.display().to_string(),
        disk_bytes: size,
        changed_bytes: changed,
        extents: placed.len(),
        cycle_switch_to_commit_s: cycle_s,
        cycle_sender_ship_s: ship_s,
        cycle_receiver_commit_s: commit_s,
        cycle_first_write_s: t_first.unwrap_or(f64::NAN),
        cycle_open_s: open_s,
        cycle_shipped_s: shipped_s,
        cycle_digest_wait_s: digest_wait_s,
        cycle_digest_s: digest_s,
        log_write_during_switch_ms: log_write_ms,
        baseline_initial_copy_s: base_s,
        ratio_cycle_to_baseline: cycle_s / base_s,
        empty_cycle_seconds: empty,
        empty_cycle_median_ms: median * 1000.0,
        undo_bytes,
        store_overhead: undo_bytes as f64 / changed as f64,
    })
}

/// The value of `field=` on every line of a sender log containing `msg`.
fn cycle_field(log: &str, msg: &str, field: &str) -> Vec<f64> {
    let key = format!(" {field}=");
    log.lines()
        .filter(|l| l.contains(msg))
        .filter_map(|l| {
            l.split(key.as_str())
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn count_lines(p: &Path, needle: &str) -> usize {
    std::fs::read(p)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        })
        .unwrap_or(0)
}

fn run(c: &mut Command) -> Result<String> {
    let o = c.output()?;
    if !o.status.success() {
        bail!("{c:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn receiver(vdrep: &Path, store: &Path, tls: &Path, log: &Path) -> Result<(Child, String)> {
    let mut c = Command::new(vdrep)
        .env("NO_COLOR", "1")
        .env("VDREP_LOG", "info")
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--allow",
            "hv01=vm1,vm2",
        ])
        .arg("--store")
        .arg(store)
        .arg("--tls")
        .arg(tls)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let mut r = BufReader::new(c.stdout.take().context("stdout")?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("unexpected receiver line {line:?}"))?
        .to_string();
    Ok((c, addr))
}

fn spawn_sender(
    vdrep: &Path,
    addr: &str,
    tls: &Path,
    vm: &str,
    disk: &Path,
    extra: &[&str],
    log: &Path,
) -> Result<Child> {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(Command::new(vdrep)
        .env("NO_COLOR", "1")
        .env("VDREP_LOG", "info")
        .args(["send", "--to", addr, "--identity", "hv01", "--vm", vm])
        .arg("--tls")
        .arg(tls)
        // The run's own sender state, beside its certificates (never the operator's).
        .arg("--state")
        .arg(tls.with_file_name("send-state"))
        .args(["--json", "--no-progress"])
        .args(extra)
        .arg(disk)
        .stdout(Stdio::piped())
        .stderr(logf)
        .spawn()?)
}

/// Runs a sender to the end; returns its stdout (the `--json` summary).
fn sender(
    vdrep: &Path,
    addr: &str,
    tls: &Path,
    vm: &str,
    disk: &Path,
    extra: &[&str],
    log: &Path,
) -> Result<String> {
    let c = spawn_sender(vdrep, addr, tls, vm, disk, extra, log)?;
    let o = c.wait_with_output()?;
    if !o.status.success() {
        bail!("sender failed ({}); see {}", o.status, log.display());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn write_results(out: &Path, r: &Results) -> Result<()> {
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(out.with_extension("json"), serde_json::to_string_pretty(r)?)?;
    let mut m = std::fs::File::create(out.with_extension("md"))?;
    writeln!(
        m,
        "# Delta cycles on loopback (`bench/src/bin/cycle_bench.rs`)\n"
    )?;
    writeln!(
        m,
        "Binary `{}`; raw disk of {} GiB; {} disjoint extents of 4 KiB..1 MiB, {} MiB changed, random bytes.\n",
        r.binary,
        r.disk_bytes >> 30,
        r.extents,
        r.changed_bytes >> 20
    )?;
    writeln!(m, "| measure | value | target |\n|---|---|---|")?;
    writeln!(
        m,
        "| cycle: switch → commit | {:.2} s (sender ship {:.2} s; receiver tail after the last write {:.2} s: last flush + syncs) | |",
        r.cycle_switch_to_commit_s, r.cycle_sender_ship_s, r.cycle_receiver_commit_s
    )?;
    writeln!(
        m,
        "| … sender: open + check the closed log / to last extent acked / waiting for the digest | {:.2} / {:.2} / {:.2} s | |",
        r.cycle_open_s, r.cycle_shipped_s, r.cycle_digest_wait_s
    )?;
    writeln!(
        m,
        "| … digest (concurrent with shipping) / switch → first extent written at the receiver | {:.2} / {:.2} s | |",
        r.cycle_digest_s, r.cycle_first_write_s
    )?;
    writeln!(
        m,
        "| `vdrep log-write` of 4 KiB started right after the switch | {:.1} ms | |",
        r.log_write_during_switch_ms
    )?;
    writeln!(
        m,
        "| baseline: initial copy of the same bytes | {:.2} s | |",
        r.baseline_initial_copy_s
    )?;
    writeln!(
        m,
        "| ratio cycle / baseline | {:.2}× | ≤ 1.2× |",
        r.ratio_cycle_to_baseline
    )?;
    writeln!(
        m,
        "| empty cycle (median of {}) | {:.1} ms | ≤ 50 ms |",
        r.empty_cycle_seconds.len(),
        r.empty_cycle_median_ms
    )?;
    writeln!(
        m,
        "| recovery-point storage (undo bytes / changed bytes) | {:.4}× ({} B) | ≤ 1.1× |",
        r.store_overhead, r.undo_bytes
    )?;
    writeln!(
        m,
        "\nThe receiver writes a cycle into the replica while its bytes arrive (store format \
         3: each write's pre-image goes to the undo log first), so the commit after the last \
         byte is the last buffered flush and two syncs. Switch → commit also holds the \
         sender's work between the switch and the first extent shipped."
    )?;
    Ok(())
}

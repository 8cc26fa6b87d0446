//! `vdrep-bench qemu-latency`: what protecting a qemu VM costs its guest's writes.
//!
//! A raw disk of `--disk` bytes (whose first `--region` bytes are written once, so no write
//! of the measurement allocates) runs in qemu-storage-daemon with `cache.direct=on`. The
//! guest (`nbd_writer.py latency`, python3-libnbd over the daemon's NBD export) writes 4 KiB
//! at random 4 KiB-aligned offsets of the region, one request at a time (queue depth 1),
//! for `--seconds`, and times each write:
//! 1. **not protected**: nothing else runs;
//! 2. **protected**: `vdrep send --qmp --drive disk0 --nbd SOCKET --interval I` (receiver on
//!    loopback) has committed its initial copy; the writes run while it switches every
//!    `I` (each switch: a new bitmap, a copy-before-write view, its cycle read over NBD).
//!
//! Reported: median and p99 of each and their ratios (targets: median ≤ 1.1×, p99 ≤ 2×),
//! and the switches the protected run saw. Results: `qemu_latency.{json,md}`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use super::{
    certs, events, msg, raw_image, run_writer, s, vdrep_bin, wait_events, writer, Proc, Qsd,
};
use crate::report;

/// `qemu-latency`'s flags; the defaults are the figure.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The disk's size.
    #[arg(long, default_value = "4GiB", value_parser = crate::parse_size)]
    disk: u64,
    /// The region the guest writes (from offset 0).
    #[arg(long, default_value = "1GiB", value_parser = crate::parse_size)]
    region: u64,
    /// Seconds of writes per run.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// The protected run's cycle interval, seconds.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// Scratch folder (recreated; holds the disk).
    #[arg(long, default_value = "/var/tmp/vdrep-qemu-latency")]
    work: PathBuf,
    /// The receiver's store (recreated). The receiver of a deployment runs in Azure, not on
    /// the protected host; here it shares the machine, and its writes of each cycle (the
    /// replica and its undo log) on the guest's disk would slow the guest's writes as no
    /// deployment does, so the store is on tmpfs by default (its CPU still shares the host's).
    #[arg(long, default_value = "/dev/shm/vdrep-qemu-latency-store")]
    store: PathBuf,
    /// The vdrep binary [default: the one beside vdrep-bench].
    #[arg(long)]
    vdrep: Option<PathBuf>,
    /// Results folder.
    #[arg(long, default_value_os_t = crate::default_results())]
    results: PathBuf,
    /// Results name (`NAME.json`, `NAME.md`); a smoke run should name its own.
    #[arg(long, default_value = "qemu_latency")]
    name: String,
    /// Seed of the offsets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One run's latencies, as the writer measured them (microseconds).
#[derive(Debug, Serialize, serde::Deserialize)]
struct Run {
    writes: u64,
    seconds: f64,
    median_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    mean_us: f64,
}

#[derive(Serialize)]
struct Results {
    environment: report::Environment,
    disk_bytes: u64,
    region_bytes: u64,
    seconds: f64,
    interval_seconds: u64,
    not_protected: Run,
    protected: Run,
    /// Switches the sender made while the protected run wrote.
    switches_during_protected: usize,
    ratio_median: f64,
    ratio_p99: f64,
    target_ratio_median: f64,
    target_ratio_p99: f64,
}

fn measure(script: &std::path::Path, sock: &std::path::Path, a: &Args) -> anyhow::Result<Run> {
    let v = run_writer(
        script,
        &[
            "latency".into(),
            s(sock),
            "disk0".into(),
            a.region.to_string(),
            a.seconds.to_string(),
            a.seed.to_string(),
        ],
    )?;
    serde_json::from_value(v).context("the writer's JSON")
}

/// Runs the benchmark.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.region == 0 || a.region > a.disk || !a.region.is_multiple_of(4096) {
        bail!("--region must be a non-zero multiple of 4 KiB within --disk");
    }
    let vdrep = vdrep_bin(a.vdrep.clone())?;
    let w = &a.work;
    let _ = std::fs::remove_dir_all(w);
    std::fs::create_dir_all(w)?;
    let script = writer(w)?;
    let disk = w.join("disk.raw");
    raw_image(&disk, a.disk)?;
    {
        // The region written once: no measured write allocates a block of the file.
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk)?;
        let buf = vec![0x5au8; 1 << 20];
        let mut off = 0;
        while off < a.region {
            let n = (a.region - off).min(buf.len() as u64) as usize;
            f.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        f.sync_all()?;
    }
    let qsd = Qsd::start(w, &[("disk0", &disk)], true)?;

    eprintln!(
        "not protected: {} s of 4 KiB writes at queue depth 1",
        a.seconds
    );
    let bare = measure(&script, &qsd.nbd(), &a)?;

    let _ = std::fs::remove_dir_all(&a.store);
    std::fs::create_dir_all(&a.store)?;
    let certs = certs(&vdrep, w, None)?;
    let mut rx = Proc::spawn(
        None,
        &vdrep,
        &[
            "receive".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--store".into(),
            s(&a.store),
            "--tls".into(),
            s(&certs),
            "--allow".into(),
            "bench=vm1".into(),
        ],
        &w.join("receiver.log"),
    )?;
    let addr = rx.announced("listening on ", Duration::from_secs(20))?;
    let log = w.join("sender.log");
    let mut tx = Proc::spawn(
        None,
        &vdrep,
        &[
            "send".into(),
            "--to".into(),
            addr,
            "--tls".into(),
            s(&certs),
            "--identity".into(),
            "bench".into(),
            "--vm".into(),
            "vm1".into(),
            "--qmp".into(),
            s(&qsd.qmp()),
            "--drive".into(),
            "disk0".into(),
            "--nbd".into(),
            s(&qsd.nbd()),
            "--interval".into(),
            format!("{}s", a.interval),
            "--state".into(),
            s(&w.join("state")),
            "--no-progress".into(),
            "--log-format".into(),
            "json".into(),
        ],
        &log,
    )?;
    // The initial copy committed (point 0): from here on the sender only switches and ships
    // cycles.
    wait_events(&log, msg::POINT, 1, Duration::from_secs(1800))?;
    eprintln!(
        "protected (interval {} s): {} s of 4 KiB writes at queue depth 1",
        a.interval, a.seconds
    );
    let before = events(&log)?
        .iter()
        .filter(|e| e.message.contains(msg::SWITCH))
        .count();
    let prot = measure(&script, &qsd.nbd(), &a)?;
    let after = events(&log)?
        .iter()
        .filter(|e| e.message.contains(msg::SWITCH))
        .count();
    tx.stop()?;
    rx.stop().ok();
    drop(qsd);
    let _ = std::fs::remove_file(&disk);

    let r = Results {
        environment: report::environment(&[
            ("qemu-storage-daemon", "--version"),
            (super::PYTHON, "--version"),
        ]),
        disk_bytes: a.disk,
        region_bytes: a.region,
        seconds: a.seconds,
        interval_seconds: a.interval,
        switches_during_protected: after - before,
        ratio_median: prot.median_us / bare.median_us,
        ratio_p99: prot.p99_us / bare.p99_us,
        target_ratio_median: 1.1,
        target_ratio_p99: 2.0,
        not_protected: bare,
        protected: prot,
    };
    let row = |name: &str, x: &Run| {
        vec![
            name.to_string(),
            x.writes.to_string(),
            format!("{:.0}", x.median_us),
            format!("{:.0}", x.p90_us),
            format!("{:.0}", x.p99_us),
            format!("{:.0}", x.p999_us),
            format!("{:.0}", x.max_us),
        ]
    };
    let verdict = |x: f64, t: f64| if x <= t { "met" } else { "NOT met" };
    let md = format!(
        "# Guest write latency of a protected qemu VM\n\n\
         4 KiB random writes at queue depth 1 (python3-libnbd through qemu-storage-daemon's NBD \
         export) over the first {} MiB of a {} MiB raw disk (`cache.direct=on`), {} s per run; \
         protected: `vdrep send --qmp` at a {} s interval after its initial copy, {} switch(es) \
         during the run; the receiver's store in `{}` (a deployment's receiver is not on the \
         host).\n\n{}\n\
         Ratio protected / not protected: median **{:.2}×** (target ≤ 1.1×: {}), p99 **{:.2}×** \
         (target ≤ 2×: {}).\n\n{} · {} · load {}\n",
        a.region >> 20,
        a.disk >> 20,
        a.seconds,
        a.interval,
        r.switches_during_protected,
        a.store.display(),
        report::table(
            &[
                "run",
                "writes",
                "median µs",
                "p90 µs",
                "p99 µs",
                "p99.9 µs",
                "max µs"
            ],
            &[
                row("not protected", &r.not_protected),
                row("protected", &r.protected)
            ]
        ),
        r.ratio_median,
        verdict(r.ratio_median, 1.1),
        r.ratio_p99,
        verdict(r.ratio_p99, 2.0),
        r.environment.date_utc,
        r.environment.git_commit,
        r.environment.loadavg,
    );
    report::write(&a.results, &a.name, &r, &md)?;
    println!("{md}");
    let _ = std::fs::remove_dir_all(&a.store);
    Ok(())
}

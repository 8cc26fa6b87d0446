//! `vdrep-bench qemu-latency`: what protecting a qemu VM costs its guest's writes.
//!
//! A raw disk of `--disk` bytes (whose first `--region` bytes are written once, so no write
//! of the measurement allocates) runs in qemu-storage-daemon with `cache.direct=on`. The
//! guest (`nbd_writer.py latency`, python3-libnbd over the daemon's NBD export) writes 4 KiB
//! at random 4 KiB-aligned offsets of the region, one request at a time (queue depth 1),
//! for `--seconds`, and times each write. One round is two runs (in this order in odd
//! rounds, the other way round in even ones):
//! 1. **not protected**: nothing else runs (no bitmap, no sender);
//! 2. **protected**: `vdrep send --qmp --drive disk0 --nbd SOCKET --interval I` (receiver on
//!    loopback, fresh store) has committed its initial copy; the writes run while it
//!    switches every `I` (each switch: a new bitmap, a copy-before-write view, its cycle
//!    read over NBD). Afterwards the sender stops and `vdrep unprotect` removes its
//!    bitmaps, so the next round's unprotected run is as the first.
//!
//! `--rounds N` runs N rounds, the protected run first in even rounds: the machine is shared
//! and one run's p99 moves by several times between runs, so each round gives its own ratios (protected /
//! unprotected, median and p99) and the verdict is on the median of the rounds' ratios,
//! reported with their spread; every run is in the results.
//!
//! Each write is kept (`latency_trace.rs`), so the results also say how many writes a view
//! costs: the share of writes slower than 2× the round's unprotected median, in both runs;
//! the views' windows (switch → views removed, from the sender's log), the writes inside
//! and outside them, the first write to each 64 KiB block inside a window (the one that
//! waits for the copy-before-write) and the guest time each view cost. Results:
//! `qemu_latency.{json,md}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use super::latency_trace::{attribute, median, windows, Attribution, Trace, SLOW_FACTOR};
use super::{
    certs, events, msg, raw_image, run_writer, s, vdrep_bin, wait_events, writer, Proc, Qsd, Sched,
};
use crate::report;

mod summary;
use summary::markdown;

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
    /// Rounds of (not protected, protected) runs; the verdict is on the median of the
    /// rounds' ratios.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
    /// Scratch folder (recreated; holds the disk).
    #[arg(long, default_value = "/var/tmp/vdrep-qemu-latency")]
    work: PathBuf,
    /// The receiver's store (recreated). The receiver of a deployment runs in Azure, not on
    /// the protected host; here it shares the machine, and its writes of each cycle (the
    /// replica and its undo log) on the guest's disk would slow the guest's writes as no
    /// deployment does, so the store is on tmpfs by default (its CPU still shares the host's).
    #[arg(long, default_value = "/dev/shm/vdrep-qemu-latency-store")]
    store: PathBuf,
    /// Nice levels the receiver runs below the bench (`nice -n N`). A deployment's receiver
    /// runs in Azure and takes no CPU from the protected host's guests; here it shares the
    /// 2 cores with the guest and its qemu, so by default it yields to them as the sender's
    /// shipping does by default (the sender runs as shipped). 0: the receiver at the guest's
    /// priority (before session 13). The unprotected runs have no receiver.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=19))]
    receiver_nice: u32,
    /// The receiver's EEVDF slice, ms (0: the kernel's, before session 14). By default the
    /// one `vdrep send` gives its shipping (`vdrep::sender::priority::SHIP_SLICE_NS`): the
    /// receiver stands for one in Azure, which never delays a waking guest thread, and with
    /// a slice longer than theirs a waking guest thread preempts it at once instead of
    /// waiting up to its slice and the next tick.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=100))]
    receiver_slice_ms: u64,
    /// The vdrep binary [default: the one beside vdrep-bench].
    #[arg(long)]
    vdrep: Option<PathBuf>,
    /// Extra argument for the protected run's `vdrep send` (repeat), e.g.
    /// `--vdrep-arg=--cpu-limit=0.5`.
    #[arg(long, allow_hyphen_values = true)]
    vdrep_arg: Vec<String>,
    /// Scheduling policy of the receiver (`other`: `--receiver-nice` and
    /// `--receiver-slice-ms` as given; `idle`: `SCHED_IDLE`, which runs only when nothing
    /// else wants a core). The receiver stands for one in Azure that takes no CPU from the
    /// host: `idle` takes it as far out of the guests' way as Linux can, and makes no
    /// statement about the sender's cost (the sender runs as shipped).
    #[arg(long, default_value = "other", value_parser = ["other", "idle"])]
    receiver_policy: String,
    /// Results folder.
    #[arg(long, default_value_os_t = crate::default_results())]
    results: PathBuf,
    /// Results name (`NAME.json`, `NAME.md`); a smoke run should name its own.
    #[arg(long, default_value = "qemu_latency")]
    name: String,
    /// Seed of the offsets (round R's runs use SEED + R - 1).
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

/// One round: an unprotected run, then a protected one.
#[derive(Serialize)]
struct Round {
    round: u32,
    /// Even rounds run the protected run first.
    protected_first: bool,
    not_protected: Run,
    protected: Run,
    ratio_median: f64,
    ratio_p99: f64,
    /// [`SLOW_FACTOR`] × the unprotected run's median: a write above it is slow.
    slow_threshold_us: f64,
    share_slow_not_protected: f64,
    share_slow_protected: f64,
    /// Switches the sender made while the protected run wrote.
    switches_during_protected: usize,
    /// Seconds from each of those switches to its VM point (the cycle's time), in order.
    cycle_seconds: Vec<f64>,
    /// The protected run's writes inside and outside the views' windows.
    protected_writes: Attribution,
    /// /proc/loadavg after the round.
    loadavg: String,
}

/// The median of a figure over the rounds, and its range.
#[derive(Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(xs: impl Iterator<Item = f64>) -> Spread {
        let v: Vec<f64> = xs.collect();
        Spread {
            median: median(&v),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[derive(Serialize)]
struct Results {
    environment: report::Environment,
    disk_bytes: u64,
    region_bytes: u64,
    seconds: f64,
    interval_seconds: u64,
    /// Extra arguments of the protected run's `vdrep send`.
    vdrep_args: Vec<String>,
    /// The receiver's scheduling: `other` (nice, slice) or `idle`.
    receiver_policy: String,
    rounds: Vec<Round>,
    /// Over the rounds: the verdict is on the medians.
    ratio_median: Spread,
    ratio_p99: Spread,
    share_slow_not_protected: Spread,
    share_slow_protected: Spread,
    target_ratio_median: f64,
    target_ratio_p99: f64,
}

/// What every round shares: the VM, the guest's script, the vdrep binary and certificates.
struct Rig<'a> {
    a: &'a Args,
    vdrep: PathBuf,
    script: PathBuf,
    certs: PathBuf,
    qsd: Qsd,
}

impl Rig<'_> {
    /// One run of writes; returns the writer's figures and every write.
    fn measure(&self, round: u32, what: &str) -> anyhow::Result<(Run, Trace)> {
        let a = self.a;
        let trace = a.work.join(format!("trace-{round}-{what}.bin"));
        let v = run_writer(
            &self.script,
            &[
                "latency".into(),
                s(&self.qsd.nbd()),
                "disk0".into(),
                a.region.to_string(),
                a.seconds.to_string(),
                (a.seed + u64::from(round) - 1).to_string(),
                s(&trace),
            ],
        )?;
        let run: Run = serde_json::from_value(v).context("the writer's JSON")?;
        // The trace stays in `--work` (16 bytes a write, ~10 MB a run) beside the sender's
        // and receiver's logs, so a round can be looked at again after the bench; the next
        // invocation's fresh `--work` removes it.
        let t = Trace::read(&trace, run.writes as usize)?;
        Ok((run, t))
    }

    fn state(&self) -> PathBuf {
        self.a.work.join("state")
    }

    /// Starts a receiver on a fresh store and a sender protecting the VM; returns once the
    /// initial copy committed (point 0): from there on the sender only switches and ships
    /// cycles.
    fn protect(&self, round: u32) -> anyhow::Result<(Proc, Proc, PathBuf)> {
        let a = self.a;
        let _ = std::fs::remove_dir_all(&a.store);
        std::fs::create_dir_all(&a.store)?;
        let sched = if a.receiver_policy == "idle" {
            Sched::Idle
        } else if a.receiver_slice_ms > 0 {
            Sched::Slice(a.receiver_slice_ms * 1_000_000)
        } else {
            Sched::Kernel
        };
        let rx = Proc::spawn_sliced(
            None,
            Path::new("nice"),
            &[
                "-n".into(),
                a.receiver_nice.to_string(),
                s(&self.vdrep),
                "receive".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--store".into(),
                s(&a.store),
                "--tls".into(),
                s(&self.certs),
                "--allow".into(),
                "bench=vm1".into(),
            ],
            &a.work.join(format!("receiver-{round}.log")),
            sched,
        )?;
        let addr = rx.announced("listening on ", Duration::from_secs(20))?;
        let log = a.work.join(format!("sender-{round}.log"));
        let tx = Proc::spawn(
            None,
            &self.vdrep,
            &[
                "send".into(),
                "--to".into(),
                addr,
                "--tls".into(),
                s(&self.certs),
                "--identity".into(),
                "bench".into(),
                "--vm".into(),
                "vm1".into(),
                "--qmp".into(),
                s(&self.qsd.qmp()),
                "--drive".into(),
                "disk0".into(),
                "--nbd".into(),
                s(&self.qsd.nbd()),
                "--interval".into(),
                format!("{}s", a.interval),
                "--state".into(),
                s(&self.state()),
                "--no-progress".into(),
                "--log-format".into(),
                "json".into(),
            ]
            .into_iter()
            .chain(a.vdrep_arg.iter().cloned())
            .collect::<Vec<_>>(),
            &log,
        )?;
        wait_events(&log, msg::POINT, 1, Duration::from_secs(1800))?;
        Ok((rx, tx, log))
    }

    /// Stops the sender (a clean stop: views go, bitmaps stay) and the receiver, then
    /// `vdrep unprotect` removes the bitmaps, the replica and the sender's state: the VM is
    /// as before protection.
    fn unprotect(&self, mut rx: Proc, mut tx: Proc) -> anyhow::Result<()> {
        tx.stop()?;
        rx.stop().ok();
        let out = std::process::Command::new(&self.vdrep)
            .args(["unprotect", "--yes", "--vm", "vm1", "--drive", "disk0"])
            .arg("--store")
            .arg(&self.a.store)
            .arg("--qmp")
            .arg(self.qsd.qmp())
            .arg("--state")
            .arg(self.state())
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "vdrep unprotect: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// One round: not protected then protected, or the other way round in even rounds, so a
    /// drift of the machine's load over the rounds weighs on both sides alike.
    fn round(&self, round: u32) -> anyhow::Result<Round> {
        let protected_first = round.is_multiple_of(2);
        let bare_run = || {
            eprintln!(
                "round {round}: not protected, {} s of 4 KiB writes at queue depth 1",
                self.a.seconds
            );
            self.measure(round, "bare")
        };
        let mut bare = None;
        if !protected_first {
            bare = Some(bare_run()?);
        }
        let (rx, tx, log) = self.protect(round)?;
        eprintln!(
            "round {round}: protected (interval {} s), {} s of 4 KiB writes at queue depth 1",
            self.a.interval, self.a.seconds
        );
        let (prot, prot_t) = self.measure(round, "prot")?;
        self.unprotect(rx, tx)?;
        let (bare, bare_t) = match bare {
            Some(b) => b,
            None => bare_run()?,
        };
        let ev = events(&log)?;
        let (first, last) = prot_t.span();
        let switches = ev
            .iter()
            .filter(|e| e.message.contains(msg::SWITCH) && e.t >= first && e.t <= last)
            .count();
        let cycle_seconds = cycle_times(&ev, first, last);
        let slow = SLOW_FACTOR * bare.median_us;
        Ok(Round {
            round,
            protected_first,
            ratio_median: prot.median_us / bare.median_us,
            ratio_p99: prot.p99_us / bare.p99_us,
            slow_threshold_us: slow,
            share_slow_not_protected: bare_t.share_above(slow),
            share_slow_protected: prot_t.share_above(slow),
            switches_during_protected: switches,
            cycle_seconds,
            protected_writes: attribute(&prot_t, &windows(&ev), slow),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
            not_protected: bare,
            protected: prot,
        })
    }
}

/// Seconds from each switch between `first` and `last` (Unix seconds) to the next VM point.
fn cycle_times(ev: &[super::Event], first: f64, last: f64) -> Vec<f64> {
    ev.iter()
        .enumerate()
        .filter(|(_, e)| e.message.contains(msg::SWITCH) && e.t >= first && e.t <= last)
        .filter_map(|(i, e)| {
            ev[i + 1..]
                .iter()
                .find(|x| x.message.contains(msg::POINT))
                .map(|x| x.t - e.t)
        })
        .collect()
}

/// Writes the region once: no measured write allocates a block of the file.
fn fill_region(disk: &Path, region: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(disk)?;
    let buf = vec![0x5au8; 1 << 20];
    let mut off = 0;
    while off < region {
        let n = (region - off).min(buf.len() as u64) as usize;
        f.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    f.sync_all()?;
    Ok(())
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
    fill_region(&disk, a.region)?;
    let qsd = Qsd::start(w, &[("disk0", &disk)], true)?;
    let certs = certs(&vdrep, w, None)?;
    let rig = Rig {
        a: &a,
        vdrep,
        script,
        certs,
        qsd,
    };
    let mut rounds = Vec::new();
    for r in 1..=a.rounds {
        let round = rig.round(r)?;
        eprintln!(
            "round {r}: median {:.0} / {:.0} µs = {:.2}×, p99 {:.0} / {:.0} µs = {:.2}×",
            round.not_protected.median_us,
            round.protected.median_us,
            round.ratio_median,
            round.not_protected.p99_us,
            round.protected.p99_us,
            round.ratio_p99
        );
        rounds.push(round);
    }
    drop(rig);
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
        vdrep_args: a.vdrep_arg.clone(),
        receiver_policy: a.receiver_policy.clone(),
        ratio_median: Spread::of(rounds.iter().map(|x| x.ratio_median)),
        ratio_p99: Spread::of(rounds.iter().map(|x| x.ratio_p99)),
        share_slow_not_protected: Spread::of(rounds.iter().map(|x| x.share_slow_not_protected)),
        share_slow_protected: Spread::of(rounds.iter().map(|x| x.share_slow_protected)),
        target_ratio_median: 1.1,
        target_ratio_p99: 2.0,
        rounds,
    };
    let md = markdown(&a, &r);
    report::write(&a.results, &a.name, &r, &md)?;
    println!("{md}");
    let _ = std::fs::remove_dir_all(&a.store);
    Ok(())
}

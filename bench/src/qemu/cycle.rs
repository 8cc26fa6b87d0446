//! `vdrep-bench qemu-cycle`: a cycle of scattered dirty blocks of a qemu VM against an
//! initial copy of the same bytes, on the bench's unlimited veth link ([`crate::netns`]).
//!
//! The content is `--size` bytes of the bench mix ([`crate::gen`]: 64 KiB blocks, 25 %
//! zero, 25 % random, 50 % text). qemu-storage-daemon runs two raw disks: `copy` holds the
//! content densely; `cycle` (`--disk` bytes) starts empty.
//! 1. **Initial copy**: `vdrep send --vm copy-vm --qmp --drive copy --max-cycles 1` copies
//!    `copy` from the view of its first switch.
//! 2. `cycle-vm` (`--drive cycle`) is protected the same way (an empty disk: a short copy);
//!    the clean stop keeps its dirty bitmap. The guest (`nbd_writer.py blocks`, over the
//!    daemon's NBD export) then writes the content's 64 KiB blocks at distinct random 64 KiB
//!    slots of `cycle`, in random order: `--size` bytes of scattered dirty blocks.
//! 3. **Cycle**: the sender starts again with `--max-cycles 1`: its one round switches and
//!    ships the bitmap's dirty extents as a cycle.
//!
//! Each figure is the sender's own account, from its JSON log: the time from the switch
//! (one QMP transaction) to the VM's recovery point of that switch committed, and the
//! source MB/s it gives (`--size` / that time); the cycle's own line adds its ship time.
//! Ratio = cycle MB/s / initial copy MB/s (target ≥ 0.8). Results:
//! `qemu_cycle.{json,md}`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::{certs, events, msg, raw_image, run_writer, s, vdrep_bin, writer, Event, Proc, Qsd};
use crate::netns::{rcv_ns, snd_ns, Link, RCV_ADDR};
use crate::report;

/// `qemu-cycle`'s flags; the defaults are the figure.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bytes of content: the initial copy's disk, and the cycle's dirty bytes.
    #[arg(long, default_value = "1GiB", value_parser = crate::parse_size)]
    size: u64,
    /// The cycle disk's size (the dirty blocks are scattered over it).
    #[arg(long, default_value = "4GiB", value_parser = crate::parse_size)]
    disk: u64,
    /// Both ends on 127.0.0.1 instead of the veth link. The link's namespaces have fixed
    /// names and setting it up removes an existing one: a smoke run beside another
    /// benchmark uses this.
    #[arg(long)]
    loopback: bool,
    /// Scratch folder (recreated; holds the disks and the store).
    #[arg(long, default_value = "/var/tmp/vdrep-qemu-cycle")]
    work: PathBuf,
    /// The vdrep binary [default: the one beside vdrep-bench].
    #[arg(long)]
    vdrep: Option<PathBuf>,
    /// Results folder.
    #[arg(long, default_value_os_t = crate::default_results())]
    results: PathBuf,
    /// Results name (`NAME.json`, `NAME.md`); a smoke run should name its own.
    #[arg(long, default_value = "qemu_cycle")]
    name: String,
    /// Seed of the content and of the slots.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const BLOCK: u64 = 64 << 10;

/// One measured switch: from the switch to its VM recovery point.
#[derive(Debug, Serialize)]
struct Round {
    /// Switch to VM recovery point committed.
    seconds: f64,
    /// `--size` / `seconds`, decimal MB/s.
    source_mb_per_s: f64,
    /// Bytes the sender put on the link during the run (veth counters; 0 on loopback).
    wire_bytes: u64,
}

#[derive(Serialize)]
struct Results {
    environment: report::Environment,
    link: String,
    content_bytes: u64,
    cycle_disk_bytes: u64,
    dirty_blocks: u64,
    initial_copy: Round,
    cycle: Round,
    /// The cycle's own log line: bytes, open (block status), shipped and total seconds.
    cycle_line: serde_json::Value,
    ratio_cycle_to_initial: f64,
    target_ratio: f64,
}

/// The sender's account of its first switch: switch to VM recovery point, seconds.
fn switch_to_point(ev: &[Event]) -> anyhow::Result<f64> {
    let sw = ev
        .iter()
        .find(|e| e.message.contains(msg::SWITCH))
        .context("no switch in the sender's log")?;
    let p = ev
        .iter()
        .find(|e| e.message.contains(msg::POINT) && e.t >= sw.t)
        .context("no VM recovery point after the switch")?;
    Ok(p.t - sw.t)
}

struct Ends {
    link: Option<Link>,
    rx: Proc,
    addr: String,
    certs: PathBuf,
}

impl Ends {
    fn wire(&self) -> u64 {
        self.link
            .as_ref()
            .and_then(|l| l.tx_bytes().ok())
            .map_or(0, |b| b.0)
    }
}

fn send(
    vdrep: &Path,
    ends: &Ends,
    qsd: &Qsd,
    vm: &str,
    node: &str,
    state: &Path,
    log: &Path,
) -> anyhow::Result<()> {
    let netns = ends.link.as_ref().map(|_| snd_ns());
    let mut p = Proc::spawn(
        netns,
        vdrep,
        &[
            "send".into(),
            "--to".into(),
            ends.addr.clone(),
            "--tls".into(),
            s(&ends.certs),
            "--identity".into(),
            "bench".into(),
            "--vm".into(),
            vm.into(),
            "--qmp".into(),
            s(&qsd.qmp()),
            "--drive".into(),
            node.into(),
            "--nbd".into(),
            s(&qsd.nbd()),
            "--interval".into(),
            "1s".into(),
            "--max-cycles".into(),
            "1".into(),
            "--state".into(),
            s(state),
            "--no-progress".into(),
            "--log-format".into(),
            "json".into(),
        ],
        log,
    )?;
    p.wait(Duration::from_secs(3600))
}

/// Runs the benchmark.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.size == 0
        || !a.size.is_multiple_of(BLOCK)
        || a.disk < a.size
        || !a.disk.is_multiple_of(BLOCK)
    {
        bail!("--size must be a non-zero multiple of 64 KiB, --disk a multiple at least as large");
    }
    let vdrep = vdrep_bin(a.vdrep.clone())?;
    let w = &a.work;
    let _ = std::fs::remove_dir_all(w);
    std::fs::create_dir_all(w)?;
    let script = writer(w)?;
    let content = w.join("copy.raw");
    let spec = crate::gen::GenSpec {
        size: a.size,
        seed: a.seed,
        format: crate::gen::Format::Raw,
        allocated: 1.0,
        sparse: false,
    };
    crate::gen::generate(&spec, &content)?;
    let cycle_disk = w.join("cycle.raw");
    raw_image(&cycle_disk, a.disk)?;
    let qsd = Qsd::start(w, &[("copy", &content), ("cycle", &cycle_disk)], false)?;
    let ends = if a.loopback {
        let certs = certs(&vdrep, w, None)?;
        let rx = receiver(&vdrep, w, &certs, None, "127.0.0.1:0")?;
        let addr = rx.announced("listening on ", Duration::from_secs(20))?;
        Ends {
            link: None,
            rx,
            addr,
            certs,
        }
    } else {
        let link = Link::up(None)?;
        let certs = certs(&vdrep, w, Some(RCV_ADDR))?;
        let listen = format!("{RCV_ADDR}:7400");
        let rx = receiver(&vdrep, w, &certs, Some(rcv_ns()), &listen)?;
        rx.announced("listening on ", Duration::from_secs(20))?;
        Ends {
            link: Some(link),
            rx,
            addr: listen,
            certs,
        }
    };
    let res = measure(&a, &vdrep, &ends, &qsd, &script, &content);
    let Ends { mut rx, link, .. } = ends;
    rx.stop().ok();
    drop(link);
    drop(qsd);
    for big in [&content, &cycle_disk] {
        let _ = std::fs::remove_file(big);
    }
    let _ = std::fs::remove_dir_all(w.join("store"));
    let r = res?;
    let md = format!(
        "# A qemu cycle of scattered dirty blocks vs an initial copy\n\n\
         {} MiB of bench-mix content (64 KiB blocks: 25 % zero, 25 % random, 50 % text), \
         link: {}. Initial copy: a dense {} MiB disk copied from the view of its first switch. \
         Cycle: the same {} blocks written by the guest (NBD) at distinct random 64 KiB slots \
         of a {} MiB disk, shipped by one switch. Times are the sender's, from the switch to \
         the VM's recovery point of that switch.\n\n{}\n\
         Cycle / initial copy: **{:.2}×** the source MB/s (target ≥ 0.8×: {}). The cycle's \
         own line: {}.\n\n{} · {} · load {}\n",
        a.size >> 20,
        r.link,
        a.size >> 20,
        r.dirty_blocks,
        a.disk >> 20,
        report::table(
            &["run", "seconds", "source MB/s", "wire MB"],
            &[
                vec![
                    "initial copy".into(),
                    format!("{:.2}", r.initial_copy.seconds),
                    format!("{:.0}", r.initial_copy.source_mb_per_s),
                    format!("{:.0}", r.initial_copy.wire_bytes as f64 / 1e6),
                ],
                vec![
                    "cycle".into(),
                    format!("{:.2}", r.cycle.seconds),
                    format!("{:.0}", r.cycle.source_mb_per_s),
                    format!("{:.0}", r.cycle.wire_bytes as f64 / 1e6),
                ],
            ]
        ),
        r.ratio_cycle_to_initial,
        if r.ratio_cycle_to_initial >= 0.8 {
            "met"
        } else {
            "NOT met"
        },
        r.cycle_line,
        r.environment.date_utc,
        r.environment.git_commit,
        r.environment.loadavg,
    );
    report::write(&a.results, &a.name, &r, &md)?;
    println!("{md}");
    Ok(())
}

fn receiver(
    vdrep: &Path,
    w: &Path,
    certs: &Path,
    netns: Option<&str>,
    listen: &str,
) -> anyhow::Result<Proc> {
    Proc::spawn(
        netns,
        vdrep,
        &[
            "receive".into(),
            "--listen".into(),
            listen.into(),
            "--store".into(),
            s(&w.join("store")),
            "--tls".into(),
            s(certs),
            "--allow".into(),
            "bench=copy-vm,cycle-vm".into(),
        ],
        &w.join("receiver.log"),
    )
}

fn measure(
    a: &Args,
    vdrep: &Path,
    ends: &Ends,
    qsd: &Qsd,
    script: &Path,
    content: &Path,
) -> anyhow::Result<Results> {
    let w = &a.work;
    let mb = |secs: f64| report::mbps(a.size, secs);

    // 1. The initial copy of the content.
    eprintln!("initial copy of {} MiB", a.size >> 20);
    let log = w.join("send-initial.log");
    let wire0 = ends.wire();
    send(
        vdrep,
        ends,
        qsd,
        "copy-vm",
        "copy",
        &w.join("state-copy"),
        &log,
    )?;
    let initial_s = switch_to_point(&events(&log)?)?;
    let initial = Round {
        seconds: initial_s,
        source_mb_per_s: mb(initial_s),
        wire_bytes: ends.wire() - wire0,
    };

    // 2. The cycle VM protected (an empty disk), then the guest's scattered writes.
    let state = w.join("state-cycle");
    send(
        vdrep,
        ends,
        qsd,
        "cycle-vm",
        "cycle",
        &state,
        &w.join("send-cycle-start.log"),
    )?;
    let blocks = a.size / BLOCK;
    let mut slots: Vec<u64> = (0..a.disk / BLOCK).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    slots.shuffle(&mut rng);
    slots.truncate(blocks as usize);
    let slots_file = w.join("slots.txt");
    std::fs::write(
        &slots_file,
        slots
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    eprintln!(
        "guest writes {blocks} blocks of 64 KiB at random slots of {} MiB",
        a.disk >> 20
    );
    let wrote = run_writer(
        script,
        &[
            "blocks".into(),
            s(&qsd.nbd()),
            "cycle".into(),
            s(content),
            s(&slots_file),
        ],
    )?;
    if wrote["bytes"].as_u64() != Some(a.size) {
        bail!("the guest wrote {wrote} instead of {} bytes", a.size);
    }

    // 3. The cycle.
    eprintln!("cycle of {} MiB of scattered dirty blocks", a.size >> 20);
    let log = w.join("send-cycle.log");
    let wire0 = ends.wire();
    send(vdrep, ends, qsd, "cycle-vm", "cycle", &state, &log)?;
    let ev = events(&log)?;
    let cycle_s = switch_to_point(&ev)?;
    let line = ev
        .iter()
        .find(|e| e.message.contains(msg::CYCLE))
        .map(|e| e.fields.clone())
        .context("no cycle committed in the cycle run: the writes were not shipped as a cycle")?;
    if line["bytes"].as_u64().is_some_and(|b| b < a.size) {
        bail!("the cycle shipped fewer bytes than were written: {line}");
    }
    let cycle = Round {
        seconds: cycle_s,
        source_mb_per_s: mb(cycle_s),
        wire_bytes: ends.wire() - wire0,
    };
    Ok(Results {
        environment: report::environment(&[
            ("qemu-storage-daemon", "--version"),
            (super::PYTHON, "--version"),
        ]),
        link: if ends.link.is_some() {
            "veth, unlimited".into()
        } else {
            "loopback".into()
        },
        content_bytes: a.size,
        cycle_disk_bytes: a.disk,
        dirty_blocks: blocks,
        ratio_cycle_to_initial: cycle.source_mb_per_s / initial.source_mb_per_s,
        target_ratio: 0.8,
        initial_copy: initial,
        cycle,
        cycle_line: line,
    })
}

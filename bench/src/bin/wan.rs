//! Goodput over an impaired WAN path: vdrep (QUIC) versus `zstd | socat` (TCP).
//!
//! This machine has no netem, so the path is made in user space:
//! - `udp-relay`: vdrep through the test suite's counting UDP relay
//!   (`vdrep_tests::relay::udp`) with the delay and loss in each direction;
//! - `tun`: two network namespaces joined by a pair of TUN devices and a bridge thread that
//!   delays and drops IP packets. Both vdrep and the TCP pipe run over this same path, so
//!   the comparison is like for like: the kernel's TCP sees the real round trip and the
//!   real losses (a user-space TCP relay cannot drop segments and would hide the round trip
//!   from the sender's congestion control).
//!
//! Goodput = source bytes / wall time until the copy is committed (vdrep) or the receiving
//! `socat` has written the last byte (TCP). Random source data: compression gains nothing
//! and the transport is measured.
//!
//! `cargo build --release --bins && cargo run --release -p vdrep-bench --bin wan -- [--size-mib 32]`
//! (root: creates and removes the namespaces `vdrep-wan-a`/`vdrep-wan-b`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;
use vdrep_tests::relay::udp::{Impair, UdpRelay};

#[derive(Parser, Debug)]
struct Args {
    /// Source size in MiB.
    #[arg(long, default_value_t = 32)]
    size_mib: u64,
    /// One-way delay in ms.
    #[arg(long, default_value_t = 50)]
    delay_ms: u64,
    /// Loss probability per packet and direction.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Output prefix (.json and .md are written).
    #[arg(long, default_value = "bench/results/wan")]
    out: String,
}

#[derive(Serialize)]
struct Row {
    path: String,
    tool: String,
    seconds: f64,
    goodput_mbit: f64,
}

const NS_A: &str = "vdrep-wan-a";
const NS_B: &str = "vdrep-wan-b";
const IP_A: &str = "10.77.0.1";
const IP_B: &str = "10.77.0.2";

fn sh(args: &[&str]) -> Result<()> {
    let st = Command::new(args[0]).args(&args[1..]).status()?;
    if !st.success() {
        bail!("{args:?}: {st}");
    }
    Ok(())
}

/// Opens a TUN device (IFF_TUN | IFF_NO_PI).
fn open_tun(name: &str) -> Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("/dev/net/tun")?;
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    let flags: u16 = 0x0001 | 0x1000; // IFF_TUN | IFF_NO_PI
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: ioctl on a valid fd with a 40-byte ifreq buffer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) };
    if r != 0 {
        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Moves packets from `from` to `to` after `delay`, dropping a fraction `loss`.
fn bridge(from: File, to: File, delay: Duration, loss: f64, seed: u64, stop: Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut to = to;
    thread::spawn(move || {
        while let Ok((at, p)) = rx.recv() {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            let _ = to.write(&p);
        }
    });
    thread::spawn(move || {
        let mut from = from;
        let mut x = seed | 1;
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = from.read(&mut buf) else { return };
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let u = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            if u < loss {
                continue;
            }
            let _ = tx.send((Instant::now() + delay, buf[..n].to_vec()));
        }
    });
}

/// The two namespaces and the bridge; removed when dropped.
struct TunPath {
    stop: Arc<AtomicBool>,
}

impl TunPath {
    fn new(delay: Duration, loss: f64) -> Result<TunPath> {
        let _ = Command::new("ip").args(["netns", "del", NS_A]).status();
        let _ = Command::new("ip").args(["netns", "del", NS_B]).status();
        sh(&["ip", "netns", "add", NS_A])?;
        sh(&["ip", "netns", "add", NS_B])?;
        let a = open_tun("vdwanA")?;
        let b = open_tun("vdwanB")?;
        for (ns, dev, ip, peer) in [(NS_A, "vdwanA", IP_A, IP_B), (NS_B, "vdwanB", IP_B, IP_A)] {
            sh(&["ip", "link", "set", dev, "netns", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                dev,
            ])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                &format!("{peer}/32"),
                "dev",
                dev,
            ])?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        // SAFETY: duplicated descriptors of open files, each owned by one File.
        let (a2, b2) = unsafe {
            (
                File::from_raw_fd(libc::dup(a.as_raw_fd())),
                File::from_raw_fd(libc::dup(b.as_raw_fd())),
            )
        };
        bridge(a, b2, delay, loss, 0x51, stop.clone());
        bridge(b, a2, delay, loss, 0x77, stop.clone());
        Ok(TunPath { stop })
    }
}

impl Drop for TunPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = Command::new("ip").args(["netns", "del", NS_A]).status();
        let _ = Command::new("ip").args(["netns", "del", NS_B]).status();
    }
}

fn in_ns(ns: Option<&str>, prog: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, prog]);
            c
        }
        None => Command::new(prog),
    }
}

/// vdrep receive (in `ns_b`, on `listen`) and send (in `ns_a`, to `to(port)`).
fn run_vdrep(
    dir: &Path,
    disk: &Path,
    ns: Option<(&str, &str)>,
    listen: &str,
    relay: Option<Impair>,
) -> Result<f64> {
    let bin = vdrep_tests::vdrep_bin();
    let tls = dir.join("tls");
    let store = dir.join(format!("store-{}", rand::random::<u32>()));
    // The sender's own state folder (not the operator's ~/.local/state/vdrep).
    let state = store.with_extension("send-state");
    if !tls.exists() {
        sh(&[
            bin.to_str().unwrap(),
            "certs",
            "init",
            tls.to_str().unwrap(),
            "--sender",
            "hv01",
        ])?;
    }
    let mut rx = in_ns(ns.map(|n| n.1), bin.to_str().unwrap())
        .args([
            "receive", "--listen", listen, "--allow", "hv01=vm1", "--tls",
        ])
        .arg(&tls)
        .arg("--store")
        .arg(&store)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    let mut out = rx.stdout.take().context("stdout")?;
    let mut b = [0u8; 1];
    while out.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0] as char);
    }
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .context("receiver did not listen")?
        .parse()?;
    let _relay;
    let to = match relay {
        Some(imp) => {
            let r = UdpRelay::start(addr, imp);
            let to = r.to();
            _relay = Some(r);
            to
        }
        None => {
            _relay = None;
            addr.to_string()
        }
    };
    let t0 = Instant::now();
    let st = in_ns(ns.map(|n| n.0), bin.to_str().unwrap())
        .args([
            "send",
            "--to",
            &to,
            "--server-name",
            "localhost",
            "--identity",
            "hv01",
        ])
        .arg("--state")
        .arg(&state)
        .args(["--no-progress", "--vm", "vm1", "--tls"])
        .arg(&tls)
        .arg(disk)
        .stderr(Stdio::null())
        .status()?;
    let secs = t0.elapsed().as_secs_f64();
    let _ = rx.kill();
    let _ = rx.wait();
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(&state);
    if !st.success() {
        bail!("vdrep send: {st}");
    }
    Ok(secs)
}

/// `zstd -1 | socat` from namespace A to a `socat` in namespace B.
fn run_tcp(dir: &Path, disk: &Path) -> Result<f64> {
    let out = dir.join("tcp.out");
    let mut rx = in_ns(Some(NS_B), "sh")
        .arg("-c")
        .arg(format!(
            "socat -u TCP-LISTEN:9009,reuseaddr STDOUT | zstd -d -q -o {} -f",
            out.display()
        ))
        .spawn()?;
    thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let st = in_ns(Some(NS_A), "sh")
        .arg("-c")
        .arg(format!(
            "zstd -1 -q -c {} | socat -u STDIN TCP:{IP_B}:9009",
            disk.display()
        ))
        .status()?;
    let rst = rx.wait()?;
    let secs = t0.elapsed().as_secs_f64();
    if !st.success() || !rst.success() {
        bail!("tcp pipe: {st} / {rst}");
    }
    if std::fs::metadata(&out)?.len() != std::fs::metadata(disk)?.len() {
        bail!("tcp pipe delivered a short file");
    }
    Ok(secs)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.raw");
    let size = a.size_mib << 20;
    let mut buf = vec![0u8; 1 << 20];
    let mut f = File::create(&disk)?;
    for _ in 0..a.size_mib {
        rand::Rng::fill(&mut rand::thread_rng(), &mut buf[..]);
        f.write_all(&buf)?;
    }
    drop(f);
    let delay = Duration::from_millis(a.delay_ms);
    let mbit = |s: f64| size as f64 * 8.0 / s / 1e6;
    let mut rows = Vec::new();
    let imp = Impair {
        delay,
        loss: a.loss,
        seed: 0x3a11,
    };
    let s = run_vdrep(dir.path(), &disk, None, "127.0.0.1:0", Some(imp))?;
    rows.push(Row {
        path: "udp-relay".into(),
        tool: "vdrep".into(),
        seconds: s,
        goodput_mbit: mbit(s),
    });
    eprintln!("vdrep via UDP relay: {s:.1} s");
    let path = TunPath::new(delay, a.loss)?;
    let s = run_vdrep(
        dir.path(),
        &disk,
        Some((NS_A, NS_B)),
        &format!("{IP_B}:0"),
        None,
    )?;
    rows.push(Row {
        path: "tun".into(),
        tool: "vdrep".into(),
        seconds: s,
        goodput_mbit: mbit(s),
    });
    eprintln!("vdrep via TUN path: {s:.1} s");
    let s = run_tcp(dir.path(), &disk)?;
    rows.push(Row {
        path: "tun".into(),
        tool: "zstd -1 | socat (TCP)".into(),
        seconds: s,
        goodput_mbit: mbit(s),
    });
    eprintln!("zstd | socat via TUN path: {s:.1} s");
    drop(path);
    std::fs::write(
        format!("{}.json", a.out),
        serde_json::to_string_pretty(&rows)?,
    )?;
    let mut md = format!(
        "# WAN goodput: {} MiB random data, {} ms one-way delay, {:.1} % loss each way\n\n| path | tool | seconds | goodput Mbit/s | vs TCP |\n|---|---|---|---|---|\n",
        a.size_mib,
        a.delay_ms,
        a.loss * 100.0
    );
    let tcp = rows.last().map(|r| r.goodput_mbit).unwrap_or(1.0);
    for r in &rows {
        md += &format!(
            "| {} | {} | {:.1} | {:.2} | {:.2}× |\n",
            r.path,
            r.tool,
            r.seconds,
            r.goodput_mbit,
            r.goodput_mbit / tcp
        );
    }
    std::fs::write(format!("{}.md", a.out), &md)?;
    print!("{md}");
    Ok(())
}

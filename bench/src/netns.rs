//! Two network namespaces joined by a veth pair, so replication traffic never leaves them and
//! its wire bytes can be read from the interface counters. The [`Link`] guard removes both
//! namespaces (and with them the veth pair and anything started inside) on drop, also when
//! a benchmark fails half-way.
//!
//! The namespaces are named `PREFIX-snd` and `PREFIX-rcv`, PREFIX from the environment
//! variable `VDREP_BENCH_NETNS_PREFIX` (default `vdrep-bench`). Setting a link up removes
//! namespaces of the same names first (leftovers of a killed run), so two benchmarks that
//! share a machine need different prefixes, or one would tear down the other's link.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// The environment variable that names the namespaces' prefix.
pub const PREFIX_VAR: &str = "VDREP_BENCH_NETNS_PREFIX";
const DEFAULT_PREFIX: &str = "vdrep-bench";

/// `(sender, receiver)` namespace names, read once from [`PREFIX_VAR`].
fn names() -> &'static (String, String) {
    static NAMES: OnceLock<(String, String)> = OnceLock::new();
    NAMES.get_or_init(|| {
        let prefix = std::env::var(PREFIX_VAR)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        (format!("{prefix}-snd"), format!("{prefix}-rcv"))
    })
}

/// Namespace of the sender (`vdrep-bench-snd` by default).
pub fn snd_ns() -> &'static str {
    &names().0
}

/// Namespace of the receiver (`vdrep-bench-rcv` by default).
pub fn rcv_ns() -> &'static str {
    &names().1
}

/// veth end in the sender namespace (egress carries the data; the shaper sits here). The veth
/// pair is created inside the namespaces, so its names need not differ between prefixes.
pub const SND_IF: &str = "vdb-snd";
/// veth end in the receiver namespace.
pub const RCV_IF: &str = "vdb-rcv";
/// Receiver address (private /30, exists only inside the namespaces).
pub const RCV_ADDR: &str = "10.231.77.2";
const SND_CIDR: &str = "10.231.77.1/30";
const RCV_CIDR: &str = "10.231.77.2/30";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("ip not found: apt-get install iproute2")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut a = vec!["netns", "exec", ns, program];
    a.extend_from_slice(args);
    ip(&a)
}

/// A link shape: `None` = unlimited, `Some(bits/s)` = tc tbf at that rate.
pub type Shape = Option<u64>;

/// The namespaces and the veth pair; removed on drop.
pub struct Link {
    shape: Shape,
}

fn remove_all() {
    for ns in [snd_ns(), rcv_ns()] {
        // Kill what is still running inside (only our own processes live there).
        if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a process inside a namespace this harness created.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Link {
    /// Creates the namespaces, the veth pair and the addresses; applies `shape`.
    pub fn up(shape: Shape) -> anyhow::Result<Link> {
        remove_all(); // leftovers of a killed earlier run
        let link = Link { shape };
        let (snd, rcv) = (snd_ns(), rcv_ns());
        ip(&["netns", "add", snd])?;
        ip(&["netns", "add", rcv])?;
        ip(&[
            "link", "add", SND_IF, "netns", snd, "type", "veth", "peer", "name", RCV_IF, "netns",
            rcv,
        ])?;
        for (ns, dev, cidr) in [(snd, SND_IF, SND_CIDR), (rcv, RCV_IF, RCV_CIDR)] {
            in_ns(ns, "ip", &["addr", "add", cidr, "dev", dev])?;
            in_ns(ns, "ip", &["link", "set", dev, "up"])?;
            in_ns(ns, "ip", &["link", "set", "lo", "up"])?;
        }
        if let Some(bps) = shape {
            // Burst: 10 ms at the rate (≥ 64 KiB so GSO segments pass); queue: 50 ms.
            let burst = (bps / 8 / 100).max(64 << 10);
            let rate = format!("{bps}bit");
            let burst = format!("{burst}b");
            in_ns(
                snd,
                "tc",
                &[
                    "qdisc", "add", "dev", SND_IF, "root", "tbf", "rate", &rate, "burst", &burst,
                    "latency", "50ms",
                ],
            )
            .context("tc tbf failed: apt-get install iproute2 (needs sch_tbf)")?;
        }
        Ok(link)
    }

    /// Human name of the shape.
    pub fn shape_name(&self) -> String {
        shape_name(self.shape)
    }

    /// Bytes sent by the sender side's veth (sender → receiver) and by the receiver side's
    /// (acks), read from the kernel's counters inside the namespaces.
    pub fn tx_bytes(&self) -> anyhow::Result<(u64, u64)> {
        let read = |ns: &str, dev: &str| -> anyhow::Result<u64> {
            let o = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "cat",
                    &format!("/sys/class/net/{dev}/statistics/tx_bytes"),
                ])
                .output()?;
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .with_context(|| format!("tx_bytes of {dev} in {ns}"))
        };
        Ok((read(snd_ns(), SND_IF)?, read(rcv_ns(), RCV_IF)?))
    }
}

/// `unlimited`, `1gbit`, `100mbit`.
pub fn shape_name(s: Shape) -> String {
    match s {
        None => "unlimited".into(),
        Some(b) if b % 1_000_000_000 == 0 => format!("{}gbit", b / 1_000_000_000),
        Some(b) => format!("{}mbit", b / 1_000_000),
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        remove_all();
    }
}

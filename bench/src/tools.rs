//! The contenders of the replication benchmark, each started as a receiver in the
//! receiver namespace and a sender in the sender namespace, both under `/usr/bin/time`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::netns::{rcv_ns, snd_ns, RCV_ADDR};
use crate::timed::{Timed, Usage};

/// A contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tool {
    /// `vdrep receive` / `vdrep send` (QUIC + TLS, zstd adaptive, BLAKE3, resumable).
    Vdrep,
    /// `rsync --whole-file` to an rsync daemon (no compression).
    RsyncWhole,
    /// `rsync --whole-file --fsync`: the same copy, made durable before the client exits.
    /// rsync's daemon otherwise leaves its copy in the page cache, and the bench deletes it
    /// before the next run's `sync`, so none of its bytes reach the device in a timed run;
    /// vdrep's receiver makes every byte durable (an fdatasync per checkpoint and at the
    /// end), and on a VM those writes cost the guest CPU and time (`bench/results/ANALYSIS.md`,
    /// session 22). This is the baseline that does the same work; `RsyncWhole` stays the
    /// issue's.
    RsyncWholeFsync,
    /// `rsync -z` to an rsync daemon.
    RsyncZ,
    /// `zstd -1 -T2 | socat` to `socat | zstd -d` (no TLS, no hashing, no resume).
    ZstdSocat,
}

impl Tool {
    /// Column name in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Tool::Vdrep => "vdrep",
            Tool::RsyncWhole => "rsync --whole-file",
            Tool::RsyncWholeFsync => "rsync --whole-file --fsync",
            Tool::RsyncZ => "rsync -z",
            Tool::ZstdSocat => "zstd -1 -T2 | socat",
        }
    }
}

/// Everything a tool run needs.
pub struct Ctx {
    /// Working folder (logs, configs, certificates, destinations).
    pub dir: PathBuf,
    /// The `vdrep` binary.
    pub vdrep: PathBuf,
    /// Extra arguments for `vdrep send`.
    pub vdrep_args: Vec<String>,
}

/// What one transfer measured.
#[derive(Debug, Serialize)]
pub struct Transfer {
    /// Sender start to data complete at the receiver.
    pub wall_s: f64,
    pub sender: Usage,
    pub receiver: Usage,
    /// vdrep's own `--json` summary, for the vdrep rows.
    pub vdrep_summary: Option<serde_json::Value>,
    /// Where the copy landed (for verification).
    #[serde(skip)]
    pub dest: PathBuf,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Waits until something listens on TCP `port` in the receiver namespace.
fn wait_tcp_listen(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let o = Command::new("ip")
            .args(["netns", "exec", rcv_ns(), "ss", "-Hltn"])
            .output()?;
        if String::from_utf8_lossy(&o.stdout).contains(&format!(":{port} ")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listened on TCP {port} in {} within 10 s", rcv_ns())
}

/// Creates the vdrep certificates once.
pub fn vdrep_certs(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let certs = ctx.dir.join("certs");
    if !certs.join("ca.pem").exists() {
        let st = Command::new(&ctx.vdrep)
            .args(["certs", "init"])
            .arg(&certs)
            .args(["--sender", "bench", "--host", RCV_ADDR])
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("{}: cannot run", ctx.vdrep.display()))?;
        if !st.success() {
            bail!("vdrep certs init failed: {st}");
        }
    }
    Ok(certs)
}

fn vdrep(ctx: &Ctx, image: &Path) -> anyhow::Result<Transfer> {
    let certs = vdrep_certs(ctx)?;
    let store = ctx.dir.join("store");
    let _ = std::fs::remove_dir_all(&store);
    let bin = s(&ctx.vdrep);
    let addr = format!("{RCV_ADDR}:7400");
    let mut recv = Timed::spawn(
        Some(rcv_ns()),
        &ctx.dir,
        "vdrep-receive",
        &bin,
        &strs(&[
            "receive",
            "--listen",
            &addr,
            "--store",
            &s(&store),
            "--tls",
            &s(&certs),
            "--allow",
            "bench=vm",
        ]),
    )?;
    let out = recv.stdout().context("receiver stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.starts_with("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .context("vdrep receive did not print 'listening on' within 10 s")?;
    let state = ctx.dir.join("send-state");
    let _ = std::fs::remove_dir_all(&state);
    let mut args = strs(&[
        "send",
        "--to",
        &addr,
        "--state",
        &s(&state),
        "--tls",
        &s(&certs),
        "--identity",
        "bench",
        "--vm",
        "vm",
        "--json",
        "--no-progress",
    ]);
    args.extend(ctx.vdrep_args.iter().cloned());
    args.push(s(image));
    let t0 = Instant::now();
    let mut send = Timed::spawn(Some(snd_ns()), &ctx.dir, "vdrep-send", &bin, &args)?;
    let mut so = send.stdout().context("sender stdout")?;
    let reader = std::thread::spawn(move || {
        let mut j = String::new();
        let _ = so.read_to_string(&mut j);
        j
    });
    let sender = send.wait()?;
    let wall = t0.elapsed().as_secs_f64();
    let json = reader.join().unwrap_or_default();
    let receiver = recv.stop()?;
    let stem = image
        .file_stem()
        .map(|x| x.to_string_lossy().to_string())
        .unwrap_or_default();
    Ok(Transfer {
        wall_s: wall,
        sender,
        receiver,
        vdrep_summary: serde_json::from_str(&json).ok(),
        dest: store.join("vm").join(format!("{stem}.vhd")),
    })
}

fn rsync(ctx: &Ctx, image: &Path, extra: &[&str]) -> anyhow::Result<Transfer> {
    let dst = ctx.dir.join("rsync-dst");
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst)?;
    let conf = ctx.dir.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\nuid = root\ngid = root\nlog file = {}\n[dst]\npath = {}\nread only = no\n",
            s(&ctx.dir.join("rsyncd.log")),
            s(&dst)
        ),
    )?;
    let daemon = Timed::spawn(
        Some(rcv_ns()),
        &ctx.dir,
        "rsyncd",
        "rsync",
        &strs(&[
            "--daemon",
            "--no-detach",
            "--config",
            &s(&conf),
            "--port",
            "8730",
            "--address",
            RCV_ADDR,
        ]),
    )?;
    wait_tcp_listen(8730)?;
    let t0 = Instant::now();
    let sender = Timed::spawn(
        Some(snd_ns()),
        &ctx.dir,
        "rsync",
        "rsync",
        &[
            strs(extra),
            vec![s(image), format!("rsync://{RCV_ADDR}:8730/dst/")],
        ]
        .concat(),
    )?
    .wait()?;
    let wall = t0.elapsed().as_secs_f64();
    // Let the daemon reap its per-connection child so its CPU time is counted.
    std::thread::sleep(Duration::from_millis(300));
    let receiver = daemon.stop()?;
    Ok(Transfer {
        wall_s: wall,
        sender,
        receiver,
        vdrep_summary: None,
        dest: dst.join(image.file_name().context("image name")?),
    })
}

fn zstd_socat(ctx: &Ctx, image: &Path) -> anyhow::Result<Transfer> {
    let dst = ctx.dir.join("zstd-dst.img");
    let _ = std::fs::remove_file(&dst);
    let recv = Timed::spawn(
        Some(rcv_ns()),
        &ctx.dir,
        "zstd-receive",
        "sh",
        &strs(&[
            "-c",
            &format!(
                "socat -u TCP-LISTEN:9400,bind={RCV_ADDR},reuseaddr STDOUT | zstd -d -q -f -o '{}'",
                s(&dst)
            ),
        ]),
    )?;
    wait_tcp_listen(9400)?;
    let t0 = Instant::now();
    let sender = Timed::spawn(
        Some(snd_ns()),
        &ctx.dir,
        "zstd-send",
        "sh",
        &strs(&[
            "-c",
            &format!(
                "zstd -1 -T2 -q -c '{}' | socat -u STDIN TCP:{RCV_ADDR}:9400",
                s(image)
            ),
        ]),
    )?
    .wait()?;
    let receiver = recv.wait()?;
    Ok(Transfer {
        wall_s: t0.elapsed().as_secs_f64(),
        sender,
        receiver,
        vdrep_summary: None,
        dest: dst,
    })
}

/// Runs one transfer of `image` with `tool`.
pub fn run(tool: Tool, ctx: &Ctx, image: &Path) -> anyhow::Result<Transfer> {
    match tool {
        Tool::Vdrep => vdrep(ctx, image),
        Tool::RsyncWhole => rsync(ctx, image, &["--whole-file"]),
        Tool::RsyncWholeFsync => rsync(ctx, image, &["--whole-file", "--fsync"]),
        Tool::RsyncZ => rsync(ctx, image, &["-z"]),
        Tool::ZstdSocat => zstd_socat(ctx, image),
    }
}

/// Checks the copy against the raw source (qemu-img compare reads vdrep's fixed VHD).
pub fn verify(tool: Tool, image: &Path, t: &Transfer) -> anyhow::Result<()> {
    let dst_fmt = if tool == Tool::Vdrep { "vpc" } else { "raw" };
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", dst_fmt])
        .arg(image)
        .arg(&t.dest)
        .output()
        .context("qemu-img not found: install qemu-utils")?;
    if !o.status.success() {
        bail!(
            "{}: copy differs from the source: {}",
            tool.label(),
            String::from_utf8_lossy(&o.stdout).trim()
        );
    }
    Ok(())
}

/// Removes what a transfer left and flushes dirty pages, so the next run starts clean.
pub fn cleanup(t: &Transfer) {
    let _ = std::fs::remove_file(&t.dest);
    let _ = Command::new("sync").status();
}

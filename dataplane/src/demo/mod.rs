//! `vdrep demo`: the whole product in one command on one machine. It makes a realistic VHDX
//! with qemu-img, starts a receiver with a local page-blob store as its own process, replicates
//! over QUIC with mutual TLS on loopback, verifies the replica against the source with
//! vdrep's readers (and `qemu-img compare` where present), and prints the summary and where
//! the replica is.

pub mod content;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::disk::{self, OpenOptions, VirtualDisk};
use crate::sender::{self, SendOptions, Summary, VmSpec};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Working folder (replaced contents).
    pub dir: PathBuf,
    /// Virtual size of the generated disk.
    pub size: u64,
    /// "vhdx" or "vhd".
    pub format: String,
    /// Upload threads.
    pub threads: usize,
}

/// Kills the receiver process when the demo ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGTERM first: the receiver drains and exits; then make sure.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn need(tool: &str) -> anyhow::Result<()> {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!("{tool} is required for the demo: apt-get install qemu-utils (or run `bash ops/setup.sh`)");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes the demo disk: realistic content converted by qemu-img, then a qemu-io write that
/// straddles a block boundary and one in the last sector.
fn make_disk(o: &DemoOptions) -> anyhow::Result<PathBuf> {
    let raw = o.dir.join("source.raw");
    content::write_raw(&raw, o.size, 2026).context("cannot write the demo content")?;
    let (ext, fmt, opts) = match o.format.as_str() {
        "vhdx" => ("vhdx", "vhdx", "subformat=dynamic,block_size=8M"),
        "vhd" => ("vhd", "vpc", "subformat=dynamic"),
        f => bail!("--format {f}: use vhdx or vhd"),
    };
    let disk = o.dir.join(format!("disk0.{ext}"));
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", fmt, "-o", opts])
        .arg(&raw)
        .arg(&disk))?;
    std::fs::remove_file(&raw)?;
    let d = disk::open(&disk, OpenOptions::default())?;
    let size = d.info().virtual_size;
    run(Command::new("qemu-io")
        .args([
            "-f",
            fmt,
            "-c",
            &format!("write -P 0xa5 {} 1M", (8 << 20) - (512 << 10)),
            "-c",
            &format!("write -P 0x5a {} 512", size - 512),
        ])
        .arg(&disk))?;
    Ok(disk)
}

fn start_receiver(
    o: &DemoOptions,
    tls: &Path,
    store: &Path,
) -> anyhow::Result<(ChildGuard, String)> {
    let exe = std::env::current_exe().context("cannot find the vdrep binary")?;
    let log = std::fs::File::create(o.dir.join("receiver.log"))?;
    let mut child = Command::new(exe)
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--allow",
            "demo-host=demo-vm",
        ])
        .arg("--store")
        .arg(store)
        .arg("--tls")
        .arg(tls)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start the receiver")?;
    let stdout = child.stdout.take().context("receiver stdout")?;
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| {
            format!(
                "receiver did not start (see {})",
                o.dir.join("receiver.log").display()
            )
        })?
        .to_string();
    Ok((guard, addr))
}

/// Compares two disks chunk by chunk (the replica may be longer: zero padding to 1 MiB).
fn verify(src: &dyn VirtualDisk, replica: &dyn VirtualDisk) -> anyhow::Result<()> {
    let size = src.info().virtual_size;
    if replica.info().virtual_size < size {
        bail!(
            "replica is {} bytes, source {size}",
            replica.info().virtual_size
        );
    }
    let step = 4u64 << 20;
    let mut off = 0;
    while off < size {
        let n = (size - off).min(step) as usize;
        let a = src.read_at(off, n)?;
        let b = replica.read_at(off, n)?;
        if a != b {
            let i = a
                .iter()
                .zip(b.iter())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            bail!(
                "replica differs from the source at offset {}",
                off + i as u64
            );
        }
        off += n as u64;
    }
    let pad = replica.info().virtual_size - size;
    if pad > 0 && replica.read_at(size, pad as usize)?.iter().any(|&x| x != 0) {
        bail!("replica padding after offset {size} is not zero");
    }
    Ok(())
}

/// Runs the demo and returns the summary and the replica's path.
pub fn run_demo(o: &DemoOptions) -> anyhow::Result<(Summary, PathBuf)> {
    need("qemu-img")?;
    need("qemu-io")?;
    if o.dir.exists() {
        std::fs::remove_dir_all(&o.dir)
            .with_context(|| format!("{}: cannot clear the demo folder", o.dir.display()))?;
    }
    std::fs::create_dir_all(&o.dir)?;
    let dir = o.dir.canonicalize()?;
    let o = &DemoOptions {
        dir: dir.clone(),
        ..o.clone()
    };
    eprintln!(
        "demo: making a {} {} disk with qemu-img in {}",
        crate::sender::human(o.size),
        o.format,
        dir.display()
    );
    let disk_path = make_disk(o)?;
    let tls = dir.join("tls");
    crate::tls::certs::init(&tls, &["demo-host".to_string()], &[], 30, false)?;
    let store = dir.join("store");
    let (_receiver, addr) = start_receiver(o, &tls, &store)?;
    eprintln!(
        "demo: receiver listening on {addr} (QUIC, mutual TLS), store {}",
        store.display()
    );
    let opts = SendOptions {
        to: addr,
        server_name: Some("localhost".into()),
        tls: tls.clone(),
        identity: "demo-host".into(),
        threads: o.threads,
        give_up_after: Duration::from_secs(60),
        // The demo's own state folder: never the invoking user's.
        state_dir: Some(dir.join("state")),
        ..SendOptions::default()
    };
    let vms = [VmSpec {
        name: "demo-vm".into(),
        disks: vec![disk_path.clone()],
        group: None,
    }];
    let rt = crate::transport::runtime()?;
    let summary = rt.block_on(sender::run(&vms, &opts))?;
    let replica = store.join("demo-vm").join("disk0.vhd");
    let src = disk::open(&disk_path, OpenOptions::default())?;
    let rep = disk::open(&replica, OpenOptions::default())?;
    if rep.info().format != disk::DiskFormat::VhdFixed {
        bail!(
            "{}: replica is {:?}, expected a fixed VHD",
            replica.display(),
            rep.info().format
        );
    }
    verify(src.as_ref(), rep.as_ref())?;
    eprintln!("demo: replica verified byte for byte against the source (vdrep readers)");
    let fmt = if o.format == "vhd" { "vpc" } else { "vhdx" };
    run(Command::new("qemu-img")
        .args(["compare", "-q", "-f", fmt, "-F", "vpc"])
        .arg(&disk_path)
        .arg(&replica))
    .context("qemu-img compare found a difference")?;
    eprintln!("demo: qemu-img compare: images are identical");
    eprintln!(
        "demo: its files take {} in {} (source, replica, state): remove them with `rm -rf {}`",
        crate::sender::human(du(&dir)),
        dir.display(),
        dir.display()
    );
    Ok((summary, replica))
}

/// Bytes allocated under `dir` (what removing it frees; sparse files count what they use).
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

//! The qemu change source's figures (issue 18): what protection costs the guest's writes
//! ([`latency`], `vdrep-bench qemu-latency`) and how fast a cycle of scattered dirty blocks
//! ships against an initial copy of the same bytes ([`cycle`], `vdrep-bench qemu-cycle`).
//!
//! Both run a real `qemu-storage-daemon` as the VM: its disks, a QMP socket, and an NBD
//! server with a writable export per disk that plays the guest (written by
//! `nbd_writer.py` with python3-libnbd). vdrep is given that server's socket (`--nbd`: qemu
//! runs one NBD server) and adds its views' exports there. The sender logs JSON lines
//! (`--log-format json`): the figures come from their timestamps and fields, so a
//! measurement is the sender's own account of a switch, a copy or a cycle.

pub mod cycle;
pub mod latency;
pub mod latency_trace;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

/// Debian's python3, which has python3-libnbd (a pyenv `python3` first on PATH has not).
pub const PYTHON: &str = "/usr/bin/python3";
const WRITER: &str = include_str!("nbd_writer.py");

/// The `vdrep` binary: `given`, else the one beside this benchmark's binary.
pub fn vdrep_bin(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let p = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("vdrep"),
    };
    if !p.is_file() {
        bail!(
            "{} missing: run `cargo build --release --bins` first",
            p.display()
        );
    }
    Ok(p)
}

/// A qemu-storage-daemon with a QMP socket and an NBD server, each disk a node with a
/// writable NBD export of the same name (the guest). Killed on drop.
pub struct Qsd {
    child: Child,
    dir: PathBuf,
}

impl Qsd {
    /// Starts the daemon in `dir` over `disks` (node name, raw image); `direct` opens the
    /// images with `cache.direct=on` (O_DIRECT: guest writes reach the disk, not the page
    /// cache).
    pub fn start(dir: &Path, disks: &[(&str, &Path)], direct: bool) -> anyhow::Result<Qsd> {
        let qmp = dir.join("qmp.sock");
        let nbd = dir.join("nbd.sock");
        let _ = std::fs::remove_file(&qmp);
        let _ = std::fs::remove_file(&nbd);
        let cache = if direct { ",cache.direct=on" } else { "" };
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--chardev")
            .arg(format!(
                "socket,id=mon,path={},server=on,wait=off",
                qmp.display()
            ))
            .args(["--monitor", "chardev=mon"])
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()));
        for (i, (node, path)) in disks.iter().enumerate() {
            cmd.arg("--blockdev").arg(format!(
                "driver=file,filename={},node-name=file{i}{cache}",
                path.display()
            ));
            cmd.arg("--blockdev")
                .arg(format!("driver=raw,file=file{i},node-name={node}{cache}"));
            cmd.arg("--export").arg(format!(
                "type=nbd,id=guest{i},node-name={node},name={node},writable=on"
            ));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("qsd.log"))?))
            .spawn()
            .context("qemu-storage-daemon not found: bash ops/setup.sh (qemu >= 10)")?;
        let mut q = Qsd {
            child,
            dir: dir.to_path_buf(),
        };
        for _ in 0..500 {
            if qmp.exists() && nbd.exists() {
                return Ok(q);
            }
            if let Some(st) = q.child.try_wait()? {
                bail!(
                    "qemu-storage-daemon exited at start ({st}): {}",
                    std::fs::read_to_string(dir.join("qsd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("qemu-storage-daemon did not come up within 10 s")
    }

    /// The QMP socket.
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The NBD server's socket (the guest's exports, and vdrep's views).
    pub fn nbd(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `nbd_writer.py` into `dir` and checks that python3-libnbd imports.
pub fn writer(dir: &Path) -> anyhow::Result<PathBuf> {
    let ok = Command::new(PYTHON)
        .args(["-c", "import nbd"])
        .status()
        .with_context(|| format!("{PYTHON} not found"))?
        .success();
    if !ok {
        bail!("python3-libnbd missing: apt-get install python3-libnbd (ops/setup.sh)");
    }
    let p = dir.join("nbd_writer.py");
    std::fs::write(&p, WRITER)?;
    Ok(p)
}

/// Runs the writer with `args` and returns the JSON it printed.
pub fn run_writer(script: &Path, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let o = Command::new(PYTHON)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run the NBD writer")?;
    if !o.status.success() {
        bail!(
            "nbd_writer.py {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    serde_json::from_slice(&o.stdout).with_context(|| {
        format!(
            "nbd_writer.py printed no JSON: {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

/// How [`Proc::spawn_sliced`] schedules a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sched {
    /// As the bench runs.
    Kernel,
    /// `SCHED_OTHER` with this EEVDF slice, ns.
    Slice(u64),
    /// `SCHED_IDLE`.
    Idle,
}

/// A vdrep process (optionally inside a network namespace), stderr to `log`; killed on
/// drop.
pub struct Proc {
    child: Option<Child>,
    /// Its stderr.
    pub log: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `bin args` (in namespace `netns` when given).
    pub fn spawn(
        netns: Option<&str>,
        bin: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        Proc::spawn_sliced(netns, bin, args, log, Sched::Kernel)
    }

    /// [`Proc::spawn`], the process and its threads scheduled as `sched` says (set in the
    /// child before it runs `bin`, with the bench's nice: see
    /// `vdrep::sender::priority::SHIP_SLICE_NS` for why a long slice lets the guest's
    /// threads preempt it).
    pub fn spawn_sliced(
        netns: Option<&str>,
        bin: &Path,
        args: &[String],
        log: &Path,
        sched: Sched,
    ) -> anyhow::Result<Proc> {
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if sched != Sched::Kernel {
            let nice = vdrep::sender::priority::thread_nice()?;
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the closure makes one system call and
            // allocates nothing.
            unsafe {
                c.pre_exec(move || match sched {
                    Sched::Slice(ns) => vdrep::sender::priority::set_thread_slice(nice, ns),
                    Sched::Idle => vdrep::sender::priority::set_thread_idle(nice),
                    Sched::Kernel => Ok(()),
                });
            }
        }
        let mut child = c
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let out = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Ok(Proc {
            child: Some(child),
            log: log.to_path_buf(),
            lines,
        })
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest.
    pub fn announced(&self, prefix: &str, within: Duration) -> anyhow::Result<String> {
        let end = std::time::Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.trim().strip_prefix(prefix) {
                        return Ok(rest.to_string());
                    }
                }
                Err(_) => bail!(
                    "no {prefix:?} within {within:?}; log {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                ),
            }
        }
    }

    /// Waits up to `within` for the process to exit by itself; fails unless it exited 0.
    pub fn wait(&mut self, within: Duration) -> anyhow::Result<()> {
        let end = std::time::Instant::now() + within;
        let Some(c) = self.child.as_mut() else {
            return Ok(());
        };
        loop {
            if let Some(st) = c.try_wait()? {
                self.child = None;
                if !st.success() {
                    bail!(
                        "vdrep exited {st}; log {}:\n{}",
                        self.log.display(),
                        tail(&self.log)
                    );
                }
                return Ok(());
            }
            if std::time::Instant::now() > end {
                bail!(
                    "vdrep did not end within {within:?}; log {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (a clean stop: for a qemu VM, views and exports go, bitmaps stay), then
    /// waits up to 30 s.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(c) = &self.child {
            // Through `ip netns exec` the pid is vdrep's own (exec replaces it).
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        self.wait(Duration::from_secs(30))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last 40 lines of a log.
pub fn tail(log: &Path) -> String {
    let t = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// One event of a sender's JSON log.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unix seconds.
    pub t: f64,
    /// The message.
    pub message: String,
    /// All fields.
    pub fields: serde_json::Value,
}

/// The events of a JSON log (`--log-format json`), in order; other lines are skipped.
pub fn events(log: &Path) -> anyhow::Result<Vec<Event>> {
    let text = std::fs::read_to_string(log)?;
    let mut out = Vec::new();
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let Some(t) = v["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        out.push(Event {
            t: t.as_nanosecond() as f64 / 1e9,
            message: v["fields"]["message"].as_str().unwrap_or("").to_string(),
            fields: v["fields"].clone(),
        });
    }
    Ok(out)
}

/// Waits until the log holds `n` events whose message contains `what`.
pub fn wait_events(log: &Path, what: &str, n: usize, within: Duration) -> anyhow::Result<()> {
    let end = std::time::Instant::now() + within;
    loop {
        let have = events(log)?
            .iter()
            .filter(|e| e.message.contains(what))
            .count();
        if have >= n {
            return Ok(());
        }
        if std::time::Instant::now() > end {
            bail!(
                "{have} of {n} {what:?} within {within:?}; log {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Messages of the sender's log the figures are read from.
pub mod msg {
    /// Each switch of the VM's disks (one QMP transaction).
    pub const SWITCH: &str = "qemu switch of the VM's disks";
    /// A switch's views removed (after its cycle read them): the end of the guest's
    /// copy-before-write waits.
    pub const VIEWS_REMOVED: &str = "qemu views removed";
    /// A VM recovery point committed (after the copy or the cycle of a switch).
    pub const POINT: &str = "VM recovery point committed";
    /// A cycle committed (`bytes`, `seconds`, `open_seconds`, `shipped_seconds`).
    pub const CYCLE: &str = "cycle committed";
}

/// Makes vdrep certificates for sender `bench` (and `host` in the receiver's certificate).
pub fn certs(vdrep: &Path, dir: &Path, host: Option<&str>) -> anyhow::Result<PathBuf> {
    let certs = dir.join("certs");
    let mut c = Command::new(vdrep);
    c.args(["certs", "init"])
        .arg(&certs)
        .args(["--sender", "bench"]);
    if let Some(h) = host {
        c.args(["--host", h]);
    }
    let st = c.stdout(Stdio::null()).status()?;
    if !st.success() {
        bail!("vdrep certs init failed: {st}");
    }
    Ok(certs)
}

/// Creates a raw image of `size` bytes (sparse).
pub fn raw_image(path: &Path, size: u64) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)?;
    f.set_len(size)?;
    Ok(())
}

/// `p` as a string argument.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

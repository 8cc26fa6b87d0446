//! A real `qemu-storage-daemon` per test: images made with `qemu-img`, a QMP monitor on a
//! unix socket, optionally an NBD server with a writable export per disk that plays the
//! guest (written with `qemu-io`). Every child dies with the test process (PDEATHSIG) and
//! is killed on drop; every test arms a watchdog.

#![allow(dead_code)]

pub mod checks;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vdrep_qemu::qmp::Qmp;

/// Aborts the test process when a test runs longer than `limit` (its children follow
/// through PDEATHSIG), so no test can hang.
pub fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("test exceeded {limit:?}: aborting");
        std::process::abort();
    });
}

/// Fails with the install command when `tool` is missing.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: install it with `apt-get install -y qemu-utils` (qemu >= 10, from \
         bookworm-backports on Debian 12) or run `bash ops/setup.sh`"
    );
}

/// Makes a child die with the test process.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Runs a tool to completion (bounded by `timeout`), failing the test on error.
pub fn run(args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new("timeout");
    cmd.arg("60").args(args);
    let out = die_with_parent(&mut cmd)
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An image of `size` bytes in `format`, filled with byte `fill`.
pub fn make_image(dir: &Path, name: &str, format: &str, size: u64, fill: u8) -> PathBuf {
    require("qemu-img");
    require("qemu-io");
    let p = dir.join(format!("{name}.{format}"));
    let ps = p.to_str().unwrap();
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        format,
        ps,
        &size.to_string(),
    ]);
    run(&[
        "qemu-io",
        "-f",
        format,
        "-c",
        &format!("write -q -P {fill} 0 {size}"),
        ps,
    ]);
    p
}

/// One disk of the daemon.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The image.
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// The format node's name.
    pub node: String,
}

/// A running qemu-storage-daemon.
pub struct Qsd {
    pub dir: PathBuf,
    pub disks: Vec<Disk>,
    /// True when the daemon runs an NBD server with a writable `guest-NODE` export per disk.
    pub guest_exports: bool,
    child: Option<Child>,
}

impl Qsd {
    /// Starts a daemon in `dir` over `disks`.
    pub fn start(dir: &Path, disks: Vec<Disk>, guest_exports: bool) -> Qsd {
        require("qemu-storage-daemon");
        let mut q = Qsd {
            dir: dir.to_path_buf(),
            disks,
            guest_exports,
            child: None,
        };
        q.spawn();
        q
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The daemon's own NBD server (with the guest exports).
    pub fn nbd_socket(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.qmp_socket());
        let _ = std::fs::remove_file(self.nbd_socket());
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--chardev").arg(format!(
            "socket,id=mon,path={},server=on,wait=off",
            self.qmp_socket().display()
        ));
        cmd.args(["--monitor", "chardev=mon"]);
        for (i, d) in self.disks.iter().enumerate() {
            cmd.arg("--blockdev").arg(format!(
                "driver=file,filename={},node-name=file{i}",
                d.path.display()
            ));
            cmd.arg("--blockdev").arg(format!(
                "driver={},file=file{i},node-name={}",
                d.format, d.node
            ));
        }
        if self.guest_exports {
            cmd.arg("--nbd-server").arg(format!(
                "addr.type=unix,addr.path={}",
                self.nbd_socket().display()
            ));
            for d in &self.disks {
                cmd.arg("--export").arg(format!(
                    "type=nbd,id=guest-{n},node-name={n},name=guest-{n},writable=on",
                    n = d.node
                ));
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let child = die_with_parent(&mut cmd)
            .spawn()
            .expect("start qemu-storage-daemon");
        self.child = Some(child);
        let mut sockets = vec![self.qmp_socket()];
        if self.guest_exports {
            sockets.push(self.nbd_socket());
        }
        for _ in 0..500 {
            if sockets.iter().all(|s| s.exists()) {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("qemu-storage-daemon exited at start: {st}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("qemu-storage-daemon did not create its sockets within 10 s");
    }

    /// A new QMP session.
    pub fn qmp(&self) -> Qmp {
        Qmp::connect(self.qmp_socket(), Duration::from_secs(20)).expect("QMP connect")
    }

    /// Kills the daemon with `signal` and waits for it.
    pub fn kill(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
            for _ in 0..500 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills (`signal`) and starts the daemon again over the same images.
    pub fn restart(&mut self, signal: i32) {
        self.kill(signal);
        self.spawn();
    }

    /// Writes as the guest: `(offset, length, pattern byte)` through the disk's writable
    /// export, with `qemu-io`, in one process.
    pub fn guest_write(&self, node: &str, writes: &[(u64, u64, u8)]) {
        assert!(self.guest_exports, "this daemon has no guest exports");
        guest_write_via(&self.nbd_socket(), node, writes);
    }
}

/// Writes as the guest through export `guest-NODE` on the NBD server at `socket`.
pub fn guest_write_via(socket: &Path, node: &str, writes: &[(u64, u64, u8)]) {
    let url = format!("nbd+unix:///guest-{node}?socket={}", socket.display());
    let mut args: Vec<String> = vec!["qemu-io".into(), "-f".into(), "raw".into()];
    for (off, len, pat) in writes {
        args.push("-c".into());
        args.push(format!("write -q -P {pat} {off} {len}"));
    }
    args.push(url);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs);
}

impl Drop for Qsd {
    fn drop(&mut self) {
        self.kill(libc::SIGKILL);
    }
}

/// A small deterministic generator for write positions and patterns.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

//! Real `vdrep` processes for end-to-end replication tests: certificates, a receiver guard
//! that learns its bound address and kills the process when dropped, and sender runs whose
//! exit code, `--json` summary and log the tests inspect.
//!
//! Logs go to files in the test's folder (never pipes that could fill up and stall a
//! process); `NO_COLOR` keeps them free of escape codes so tests can search them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{vdrep_command, vdrep_ok};

/// `vdrep certs init DIR --sender NAME...`: a CA, the receiver's and each sender's pair.
pub fn certs(dir: &Path, senders: &[&str]) -> PathBuf {
    let mut args = vec!["certs", "init", dir.to_str().unwrap()];
    for s in senders {
        args.extend(["--sender", s]);
    }
    vdrep_ok(&args);
    dir.to_path_buf()
}

fn quiet_env(c: &mut Command) -> &mut Command {
    c.env("NO_COLOR", "1").env("VDREP_LOG", "info")
}

/// Reads a log file as text (empty if it does not exist yet).
pub fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> String {
    let v: Vec<&str> = log.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Waits until `path` contains `needle`, up to `timeout`; returns whether it did.
pub fn wait_for_log(path: &Path, needle: &str, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if read_log(path).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running `vdrep receive`. Dropping it kills the process.
pub struct Receiver {
    child: Option<Child>,
    /// The bound address (from its `listening on ADDR` line).
    pub addr: SocketAddr,
    /// Its stderr log (appended to across restarts).
    pub log: PathBuf,
    store: Store,
    tls: PathBuf,
    allow: Vec<String>,
    /// Extra environment (kept across restarts).
    env: Vec<(String, String)>,
}

/// Where a receiver keeps replicas.
#[derive(Clone)]
enum Store {
    Local(PathBuf),
    /// Account URL, container, SAS.
    Azure(String, String, String),
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 (port 0: any free port) with `--allow` entries like
    /// `hv01=vm1,vm2`, and waits for it to listen.
    pub fn start(store: &Path, tls: &Path, allow: &[&str]) -> Receiver {
        Self::start_env(store, tls, allow, &[])
    }

    /// [`Self::start`] with extra environment (e.g. `VDREP_TEST_CLOCK_OFFSET_FILE`).
    pub fn start_env(store: &Path, tls: &Path, allow: &[&str], env: &[(&str, &str)]) -> Receiver {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            &Store::Local(store.to_path_buf()),
            tls,
            &allow.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &store.with_extension("receiver.log"),
            &env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    /// Starts a receiver on 127.0.0.1 whose replicas are page blobs in `container` of the
    /// account at `url` (Azurite), authorised by `sas` (passed in the environment).
    pub fn start_azure(
        url: &str,
        container: &str,
        sas: &str,
        tls: &Path,
        allow: &[&str],
        log: &Path,
    ) -> Receiver {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            &Store::Azure(url.into(), container.into(), sas.into()),
            tls,
            &allow.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            log,
            &[],
        )
    }

    fn start_on(
        listen: SocketAddr,
        store: &Store,
        tls: &Path,
        allow: &[String],
        log: &Path,
        env: &[(String, String)],
    ) -> Receiver {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut c = vdrep_command();
        quiet_env(&mut c)
            .args(["receive", "--listen", &listen.to_string()])
            .arg("--tls")
            .arg(tls);
        match store {
            Store::Local(dir) => {
                c.arg("--store").arg(dir);
            }
            Store::Azure(url, container, sas) => {
                c.args(["--azure-url", url, "--azure-container", container])
                    .env("VDREP_AZURE_SAS", sas);
            }
        }
        for a in allow {
            c.args(["--allow", a]);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(logf)
            .spawn()
            .expect("cannot start vdrep receive");
        let stdout = child.stdout.take().unwrap();
        // The line arrives within a second; a reader thread keeps a hung process from
        // hanging the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the receiver never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "receiver printed no `listening on` line in 20 s; log:\n{}",
                    read_log(log)
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first line {line:?}; log:\n{}", read_log(log))
            })
            .parse()
            .unwrap();
        Receiver {
            child: Some(child),
            addr,
            log: log.to_path_buf(),
            store: store.clone(),
            tls: tls.to_path_buf(),
            allow: allow.to_vec(),
            env: env.to_vec(),
        }
    }

    /// `127.0.0.1:PORT`, for `--to`.
    pub fn to(&self) -> String {
        self.addr.to_string()
    }

    /// The receiver's log so far.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// The process id (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9, no chance to checkpoint or drain.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (up to 15 s, kill -9 after) until it exited: it drains, so the
    /// disks it held (local locks, Azure leases) are released.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > Duration::from_secs(15) {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("the receiver did not stop within 15 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the receiver again on the same port, store and log (after [`Self::kill9`]).
    /// UDP ports are free again at once; a few tries cover a slow kernel.
    pub fn restart(&mut self) {
        self.kill9();
        let r = Self::start_on(
            self.addr,
            &self.store,
            &self.tls,
            &self.allow,
            &self.log,
            &self.env,
        );
        self.child = r.into_child();
    }

    fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The arguments of a `vdrep send` run.
#[derive(Clone)]
pub struct Send {
    /// `--to`.
    pub to: String,
    /// `--tls`.
    pub tls: PathBuf,
    /// `--identity`.
    pub identity: String,
    /// `--vm` (None when the VMs come from `--config`).
    pub vm: Option<String>,
    /// The disks.
    pub disks: Vec<PathBuf>,
    /// More flags (`--give-up-after 3s`, `--config F`, …).
    pub extra: Vec<String>,
    /// Where stderr goes.
    pub log: PathBuf,
    /// Extra environment (e.g. `VDREP_TEST_CLOCK_OFFSET`).
    pub env: Vec<(String, String)>,
}

impl Send {
    /// A send of `disks` of `vm` as `identity`, logging to `log`.
    pub fn new(
        to: &str,
        tls: &Path,
        identity: &str,
        vm: &str,
        disks: &[&Path],
        log: &Path,
    ) -> Self {
        Send {
            to: to.into(),
            tls: tls.into(),
            identity: identity.into(),
            vm: Some(vm.into()),
            disks: disks.iter().map(|p| p.to_path_buf()).collect(),
            extra: Vec::new(),
            log: log.into(),
            env: Vec::new(),
        }
    }

    /// Sets an environment variable of the sender process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Adds flags.
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    fn command(&self) -> Command {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = vdrep_command();
        quiet_env(&mut c)
            .args(["send", "--to", &self.to, "--identity", &self.identity])
            .arg("--tls")
            .arg(&self.tls)
            .args(["--json", "--no-progress"]);
        if let Some(vm) = &self.vm {
            c.args(["--vm", vm]);
        }
        c.args(&self.extra).args(&self.disks);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        // The default state folder (unreported failed jobs) is the test's own folder, never
        // the runner's home: one test's failed jobs must not reach another test's store.
        if let Some(dir) = self.log.parent() {
            c.env("XDG_STATE_HOME", dir);
        }
        c.stdout(Stdio::piped()).stderr(logf);
        c
    }

    /// Starts the sender without waiting.
    pub fn spawn(&self) -> Child {
        self.command().spawn().expect("cannot start vdrep send")
    }

    /// Runs to the end (killed after `timeout`).
    pub fn run(&self, timeout: Duration) -> SendResult {
        let t0 = Instant::now();
        let child = self.spawn();
        finish(child, t0, timeout, &self.log)
    }
}

/// How a sender run ended.
#[derive(Debug)]
pub struct SendResult {
    /// Exit status.
    pub status: ExitStatus,
    /// The `--json` summary, if it printed one.
    pub summary: Option<serde_json::Value>,
    /// Its log (the whole file, earlier runs included).
    pub log: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl SendResult {
    /// The exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts exit 0 and returns the summary.
    pub fn ok(&self) -> &serde_json::Value {
        assert!(
            self.status.success(),
            "send failed ({}):\n{}",
            self.status,
            self.log
        );
        self.summary
            .as_ref()
            .expect("send --json printed a summary")
    }

    /// A summary counter.
    pub fn count(&self, key: &str) -> u64 {
        self.ok()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("summary has no {key}: {:?}", self.summary))
    }
}

/// Waits for a spawned sender (killing it after `timeout`) and collects its result.
pub fn finish(mut child: Child, t0: Instant, timeout: Duration, log: &Path) -> SendResult {
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vdrep send still running after {timeout:?}; log:\n{}",
                read_log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().unwrap_or_default();
    SendResult {
        status,
        summary: serde_json::from_str(&out).ok(),
        log: read_log(log),
        elapsed: t0.elapsed(),
    }
}

/// `qemu-img compare` of a source image and its replica (a fixed VHD, read as `vpc`):
/// panics with qemu's words unless they are identical.
pub fn assert_replica_identical(src: &Path, src_fmt: &str, replica: &Path) {
    crate::require_qemu();
    assert!(
        replica.is_file(),
        "no replica at {} (store holds: {:?})",
        replica.display(),
        replica
            .parent()
            .and_then(|d| std::fs::read_dir(d).ok())
            .map(|r| r
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>())
    );
    let out = Command::new("qemu-img")
        .args(["compare", "-f", crate::qemu_fmt(src_fmt), "-F", "vpc"])
        .arg(src)
        .arg(replica)
        .output()
        .expect("cannot run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        src.display(),
        replica.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

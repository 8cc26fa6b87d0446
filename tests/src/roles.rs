//! Long-running `vdrep` roles for the observability and sidecar tests: a process whose stdout
//! announcements (`listening on ADDR`, `metrics on ADDR`, `sidecar on ADDR`) are collected,
//! whose stderr goes to a log file, and which is killed when dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::procs::read_log;
use crate::vdrep_command;

/// A running `vdrep` process.
pub struct Role {
    child: Option<Child>,
    announced: Arc<Mutex<BTreeMap<String, String>>>,
    /// Its stderr log.
    pub log: PathBuf,
}

/// The announcements a role prints on stdout, by prefix.
pub const ANNOUNCEMENTS: [&str; 3] = ["listening on ", "metrics on ", "sidecar on "];

impl Role {
    /// `vdrep receive` on a free loopback port into `DIR/store`, allowing `allow`
    /// (`SENDER=VM`), with `/metrics` on a free port when `metrics`; logs to
    /// `DIR/receiver.log`.
    pub fn receiver(dir: &Path, tls: &Path, allow: &str, metrics: bool) -> Role {
        let extra: &[&str] = if metrics {
            &["--metrics", "127.0.0.1:0"]
        } else {
            &[]
        };
        Role::receiver_with(dir, tls, &[allow], extra)
    }

    /// `vdrep receive` on a free loopback port into `DIR/store`, allowing each of `allow`
    /// (`SENDER=VM`), with the further arguments `extra` (e.g. `--max-connections 1`; a
    /// `--metrics` among them is waited for too); logs to `DIR/receiver.log`. One place
    /// for the receiver the peer tests (busy, hostile, stream flow) attack.
    pub fn receiver_with(dir: &Path, tls: &Path, allow: &[&str], extra: &[&str]) -> Role {
        let store = dir.join("store");
        let mut args: Vec<String> = [
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store.to_str().unwrap(),
            "--tls",
            tls.to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        for a in allow {
            args.extend(["--allow".to_string(), a.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut expect = vec!["listening on "];
        if extra.contains(&"--metrics") {
            expect.push("metrics on ");
        }
        Role::start(&args, &dir.join("receiver.log"), &expect)
    }

    /// Starts `vdrep ARGS` and waits (20 s at most) until it announced every prefix in
    /// `expect` (from [`ANNOUNCEMENTS`]).
    pub fn start(args: &[String], log: &Path, expect: &[&str]) -> Role {
        Self::start_env(args, log, expect, &[])
    }

    /// [`Role::start`] with extra environment variables (e.g. the test clock offset).
    pub fn start_env(args: &[String], log: &Path, expect: &[&str], env: &[(&str, &str)]) -> Role {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = vdrep_command()
            .args(args)
            .env("NO_COLOR", "1")
            .env("VDREP_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(logf)
            .spawn()
            .expect("cannot start vdrep");
        let stdout = child.stdout.take().unwrap();
        let announced: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
        let a2 = announced.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                for p in ANNOUNCEMENTS {
                    if let Some(v) = line.trim().strip_prefix(p) {
                        a2.lock().unwrap().insert(p.to_string(), v.to_string());
                    }
                }
            }
        });
        let mut r = Role {
            child: Some(child),
            announced,
            log: log.to_path_buf(),
        };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let done = {
                let a = r.announced.lock().unwrap();
                expect.iter().all(|p| a.contains_key(*p))
            };
            if done {
                break;
            }
            if Instant::now() > end || r.try_wait().is_some() {
                r.kill();
                panic!(
                    "vdrep {args:?} did not announce {expect:?} in 20 s; log:\n{}",
                    read_log(log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// The start of a `vdrep send` to this receiver: `send --to ADDR --tls TLS --identity
    /// ID`; the caller adds the VMs, disks and options its test is about.
    pub fn send_args(&self, tls: &Path, identity: &str) -> Vec<String> {
        [
            "send",
            "--to",
            &self.addr("listening on "),
            "--tls",
            &tls.display().to_string(),
            "--identity",
            identity,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    }

    /// The address announced after `prefix` (e.g. `"metrics on "`).
    pub fn addr(&self, prefix: &str) -> String {
        self.announced
            .lock()
            .unwrap()
            .get(prefix)
            .cloned()
            .unwrap_or_else(|| panic!("no {prefix:?} announcement"))
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The process id (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `f` returns `Some`, polling every 100 ms up to `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

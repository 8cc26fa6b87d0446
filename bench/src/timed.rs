//! Measuring child processes from outside: every tool (vdrep and baselines alike) runs under
//! GNU `/usr/bin/time`, which reports the wall time, the user and system CPU seconds and the
//! peak RSS from `wait4`'s rusage. CPU seconds include the tool's own waited-for children
//! (rsync's forked daemon children, both sides of a `sh -c 'a | b'` pipe); peak RSS is the
//! largest single process among them, not a sum.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

/// What `/usr/bin/time` reported for one process tree.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Wall seconds as measured by this harness.
    pub wall_s: f64,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident set size, MiB.
    pub peak_rss_mib: f64,
}

/// A process started under `/usr/bin/time`, optionally inside a network namespace.
pub struct Timed {
    child: Child,
    out: PathBuf,
    started: Instant,
    what: String,
}

/// Builds `[ip netns exec NS] /usr/bin/time -f FMT -o OUT PROGRAM ARGS...`.
pub fn command(netns: Option<&str>, out: &Path, program: &str, args: &[String]) -> Command {
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "/usr/bin/time"]);
            c
        }
        None => Command::new("/usr/bin/time"),
    };
    c.args(["-f", "%e %U %S %M", "-o"])
        .arg(out)
        .arg(program)
        .args(args);
    c
}

impl Timed {
    /// Starts `program args` under time; stdout is piped (for "listening on" lines and JSON).
    pub fn spawn(
        netns: Option<&str>,
        dir: &Path,
        tag: &str,
        program: &str,
        args: &[String],
    ) -> anyhow::Result<Timed> {
        let out = dir.join(format!("{tag}.time"));
        let _ = std::fs::remove_file(&out);
        let what = format!("{program} {}", args.join(" "));
        let child = command(netns, &out, program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("{tag}.stderr")))
                    .context("cannot create stderr log")?,
            ))
            .spawn()
            .with_context(|| {
                format!("cannot start {program} under /usr/bin/time: apt-get install time iproute2")
            })?;
        Ok(Timed {
            child,
            out,
            started: Instant::now(),
            what,
        })
    }

    /// The child's stdout.
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits for the tool to exit; fails unless it exited 0.
    pub fn wait(mut self) -> anyhow::Result<Usage> {
        let st = self.child.wait()?;
        let wall = self.started.elapsed().as_secs_f64();
        let u = parse(&self.out, wall)?;
        if !st.success() {
            bail!("{} failed: {st} (see the .stderr log)", self.what);
        }
        Ok(u)
    }

    /// Asks the measured tool (the child of `time`) to stop with SIGTERM, then collects its
    /// usage; a tool ended by our signal is not a failure.
    pub fn stop(mut self) -> anyhow::Result<Usage> {
        let wall = self.started.elapsed().as_secs_f64();
        for pid in timed_children(self.child.id()) {
            // SAFETY: plain kill(2) on a pid we started (a child of our `time`).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not stop within 15 s of SIGTERM", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        parse(&self.out, wall)
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            for pid in timed_children(self.child.id()) {
                // SAFETY: kill(2) on a process we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The processes `time` measures: the children of the `time` process at or below `root`
/// (`ip netns exec` execs `time` in place, but a fork would be followed too).
fn timed_children(root: u32) -> Vec<i32> {
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        if comm.trim() == "time" {
            return children(p).into_iter().map(|c| c as i32).collect();
        }
        stack.extend(children(p));
    }
    vec![]
}

fn parse(out: &Path, wall: f64) -> anyhow::Result<Usage> {
    let s = std::fs::read_to_string(out)
        .with_context(|| format!("{}: /usr/bin/time wrote no report", out.display()))?;
    // time prefixes notes like "Command exited with non-zero status 1"; the numbers are last.
    let line = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() != 4 {
        bail!("{}: unexpected /usr/bin/time report {s:?}", out.display());
    }
    Ok(Usage {
        wall_s: wall,
        cpu_s: v[1] + v[2],
        peak_rss_mib: v[3] / 1024.0,
    })
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

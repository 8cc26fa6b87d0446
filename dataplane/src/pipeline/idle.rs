//! Whether the host has CPU to spare for a higher compression level: the adaptive
//! controller (`super::adapt`) climbs only while it has. A concept of its own beside the
//! controller: which CPU time counts as spare (idle, I/O wait, work at a positive nice
//! value, never the sender's own) and how `/proc/stat` and `/proc/self/stat` say it.

/// Share of the host's CPU time spare between samples (from `/proc/stat`): above
/// [`SPARE_IDLE`] there is CPU to spend on a higher level.
///
/// Spare is idle, I/O wait, and time spent at a positive nice value (`nice` column): niced
/// work (builds, batch jobs) yields its CPU to the sender (CFS gives a nice-0 thread ~98 % of
/// a core against a nice-19 one), so it does not take the CPU a higher level would use.
/// Counting it as busy kept the level at its start (1) for a whole 100 Mbit/s run on a host
/// where a build ran at nice 19 — 1.00× the zstd pipe instead of 1.10×
/// (bench/results/ANALYSIS.md, session 13).
///
/// The sender's own time is never spare: when its shipping runs at a positive nice value
/// (`--nice`, the default for qemu VMs: `sender::priority`), its CPU lands in the same
/// `nice` column, and counting it would let the level climb on the CPU the sender itself
/// takes. So the process's own CPU time (`/proc/self/stat`) is taken off the spare time
/// while the calling thread runs niced.
#[derive(Debug, Default)]
pub struct CpuIdle {
    /// (spare, total, the process's own) jiffies at the last sample.
    last: Option<(u64, u64, u64)>,
}

/// Spare share of the host's CPU above which compression may climb.
pub const SPARE_IDLE: f64 = 0.3;

impl CpuIdle {
    /// Whether the host had more than [`SPARE_IDLE`] spare since the last call (true when it
    /// cannot tell: no `/proc/stat`, first call).
    pub fn spare(&mut self) -> bool {
        // SAFETY: getpriority only reads the calling thread's priority (who = 0 is the
        // calling thread on Linux); -1 with errno set is an error, read as "not niced".
        let niced = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) } > 0;
        let own = if niced {
            own_cpu_jiffies().unwrap_or(0)
        } else {
            0
        };
        match read_proc_stat() {
            Some(sample) => self.spare_after(sample, own),
            None => true,
        }
    }

    /// As [`CpuIdle::spare`] with the next (spare, total) sample given, and the process's
    /// own CPU jiffies (0 when its time does not count as spare).
    fn spare_after(&mut self, (spare, total): (u64, u64), own: u64) -> bool {
        match self.last.replace((spare, total, own)) {
            Some((s0, t0, o0)) if total > t0 => {
                let others = spare
                    .saturating_sub(s0)
                    .saturating_sub(own.saturating_sub(o0));
                others as f64 / (total - t0) as f64 > SPARE_IDLE
            }
            _ => true,
        }
    }
}

/// The process's user + system time in clock ticks (`/proc/self/stat`), the unit of
/// `/proc/stat`.
fn own_cpu_jiffies() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_own_stat(&text)
}

/// utime and stime are fields 14 and 15; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn parse_own_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (nice + idle + iowait, total) jiffies of the first `cpu` line of `/proc/stat`.
fn read_proc_stat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&text)
}

/// The columns are user, nice, system, idle, iowait, irq, softirq, steal, guest,
/// guest_nice; the kernel counts guest time in user and nice as well, so the total is the
/// first eight.
fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    Some((v[1] + v[3] + v[4], v.iter().sum()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pipeline::adapt::{AdaptiveLevel, Compression, LevelReport, MAX_ADAPTIVE_LEVEL};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn proc_stat_gives_idle_and_total() {
        let text = "cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 1 2 3 4 5\n";
        assert_eq!(parse_proc_stat(text), Some((850, 1000)));
        // Guest time is already in user and nice: not counted twice.
        let text = "cpu  100 5 50 800 45 0 0 0 30 5\n";
        assert_eq!(parse_proc_stat(text), Some((850, 1000)));
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert!(CpuIdle::default().spare(), "the first sample cannot tell");
    }

    /// `/proc/stat`'s first line (100 jiffies a second) after `secs` seconds on 2 cores, of
    /// which `own` core-seconds went to work at nice 0 (the sender and receiver) and `niced`
    /// to work at nice 19 (a build).
    fn proc_stat_after(secs: u64, own: f64, niced: f64) -> String {
        let (user, nice) = ((own * 100.0) as u64, (niced * 100.0) as u64);
        let idle = 200 * secs - user - nice;
        format!("cpu  {user} {nice} 0 {idle} 0 0 0 0 0 0\n")
    }

    #[test]
    fn the_senders_own_niced_time_is_not_spare() {
        // A qemu sender ships at nice 10: its 1.5 cores land in the nice column beside a
        // guest's 0.5 at nice 0, nothing idle. Counted as spare, the level would climb on
        // the sender's own CPU; without it there is none.
        let mut idle = CpuIdle::default();
        let first = parse_proc_stat(&proc_stat_after(0, 0.0, 0.0)).unwrap();
        assert!(idle.spare_after(first, 0));
        let mut spare = Vec::new();
        for t in 1..=5 {
            let sample = parse_proc_stat(&proc_stat_after(t, 0.5 * t as f64, 1.5 * t as f64));
            spare.push(idle.spare_after(sample.unwrap(), 150 * t));
        }
        assert_eq!(spare, [false; 5]);
        // The same samples with the niced time another process's: spare.
        let mut idle = CpuIdle::default();
        assert!(idle.spare_after(first, 0));
        let sample = parse_proc_stat(&proc_stat_after(1, 0.5, 1.5)).unwrap();
        assert!(idle.spare_after(sample, 0));
    }

    #[test]
    fn the_processs_own_cpu_time_is_read_after_its_name() {
        let line = "4242 (vdrep (send) x) S 1 2 3 4 5 6 7 8 9 10 170 30 0 0 20 0 9 0 100\n";
        assert_eq!(parse_own_stat(line), Some(200));
        assert_eq!(parse_own_stat("4242 (vdrep"), None);
        assert!(own_cpu_jiffies().is_some());
    }

    #[test]
    fn a_build_at_nice_19_does_not_hold_the_level_at_its_start() {
        // Session 12's 1.00× run: the link waited the whole run, the sender and receiver used
        // 0.6 of the 2 cores and a build at nice 19 the rest; idle alone (0 %) said "no spare
        // CPU" at every tick and the level stayed at 1.
        let a = AdaptiveLevel::new(1, true);
        let mut idle = CpuIdle::default();
        let first = parse_proc_stat(&proc_stat_after(0, 0.0, 0.0)).unwrap();
        assert!(idle.spare_after(first, 0));
        for t in 1..=20 {
            let sample = parse_proc_stat(&proc_stat_after(t, 0.6 * t as f64, 1.4 * t as f64));
            a.waited_for_link(ms(240));
            a.waited_for_cpu(ms(5));
            a.tick_with_spare_cpu(idle.spare_after(sample.unwrap(), 0));
        }
        assert_eq!(a.current(), Compression::Zstd(MAX_ADAPTIVE_LEVEL));
        // At the top there is nothing to hold back: not counted.
        a.waited_for_link(ms(240));
        a.tick_with_spare_cpu(false);
        assert_eq!(a.report().climbs_held, 0);
        // The same host with the other work at nice 0 has no CPU to give: the level holds,
        // and the report says why.
        let b = AdaptiveLevel::new(1, true);
        let mut idle = CpuIdle::default();
        assert!(idle.spare_after(first, 0));
        for t in 1..=20 {
            let sample = parse_proc_stat(&proc_stat_after(t, 2.0 * t as f64, 0.0));
            b.waited_for_link(ms(240));
            b.note_read(1 << 20);
            b.tick_with_spare_cpu(idle.spare_after(sample.unwrap(), 0));
        }
        assert_eq!(b.current(), Compression::Zstd(1));
        assert_eq!(
            b.report(),
            LevelReport {
                read_bytes_by_level: vec![("1".to_string(), 20 << 20)],
                climbs_held: 20,
            }
        );
    }
}

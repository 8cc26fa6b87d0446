//! `vdrep status --watch`: a live table of every disk the sidecar knows — VM, disk, phase,
//! percent of the current full copy, rate and ETA (from the copied bytes between two polls),
//! RPO and health. On a terminal it redraws in place; otherwise (a pipe, a log) it prints one
//! plain line per disk per refresh, each with the time, so it reads as a log.

use super::CliResult;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;

use crate::clock::Clock;
use crate::sender::progress::{human_duration, mbit};

/// Copied bytes of each (vm, disk) at the previous poll.
pub type Seen = HashMap<(String, String), u64>;

/// The header and one row per disk of `/v1/vms`; `seen` (the previous poll, `dt` ago) gives
/// the rates, and is updated.
pub fn rows(v: &Value, seen: &mut Seen, dt: Duration) -> Vec<Vec<String>> {
    let mut out = vec![[
        "VM", "DISK", "PHASE", "DONE", "RATE", "ETA", "RPO", "HEALTH",
    ]
    .map(String::from)
    .to_vec()];
    for vm in v["vms"].as_array().into_iter().flatten() {
        for d in vm["disks"].as_array().into_iter().flatten() {
            let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
            let key = (s("vm"), s("disk"));
            let copied = d["copied_bytes"].as_u64().unwrap_or(0);
            let size = d["size_bytes"].as_u64().unwrap_or(0);
            let copying = matches!(d["phase"].as_str(), Some("initial" | "resyncing"));
            let rate = seen
                .get(&key)
                .filter(|_| !dt.is_zero())
                .map(|prev| copied.saturating_sub(*prev) as f64 / dt.as_secs_f64());
            seen.insert(key.clone(), copied);
            let pct = if size == 0 {
                "-".to_string()
            } else {
                format!("{:.1} %", copied.min(size) as f64 * 100.0 / size as f64)
            };
            let (rate_s, eta) = match (copying, rate) {
                (true, Some(r)) if r >= 1.0 => (
                    mbit(r),
                    human_duration(Duration::from_secs_f64(
                        size.saturating_sub(copied) as f64 / r,
                    )),
                ),
                (true, Some(_)) => (mbit(0.0), "unknown".into()),
                _ => ("-".into(), "-".into()),
            };
            out.push(vec![
                key.0,
                key.1,
                s("phase"),
                pct,
                rate_s,
                eta,
                d["rpo_seconds"]
                    .as_u64()
                    .map(|r| human_duration(Duration::from_secs(r)))
                    .unwrap_or_else(|| "-".into()),
                s("health"),
            ]);
        }
    }
    out
}

/// Polls with `poll` every `every`, `count` times (`None`: until interrupted), and shows
/// each answer: redrawn in place on a terminal, as timestamped plain lines otherwise.
pub fn watch(
    every: Duration,
    count: Option<u64>,
    poll: impl Fn() -> CliResult<Value>,
    table: impl Fn(&[Vec<String>]) -> String,
) -> CliResult<()> {
    let clock = crate::clock::process();
    let terminal = std::io::stdout().is_terminal();
    let mut seen = Seen::new();
    let mut last = clock.now();
    let mut n = 0u64;
    loop {
        let v = poll()?;
        let now = clock.now();
        let r = rows(&v, &mut seen, now.saturating_duration_since(last));
        last = now;
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear, then the table: a redraw in place.
            writeln!(out, "\x1b[H\x1b[2J{}", table(&r))?;
        } else {
            let at = clock
                .now_utc()
                .round(jiff::Unit::Second)
                .unwrap_or(clock.now_utc());
            for row in r.iter().skip(1) {
                writeln!(out, "{at} {}", row.join("  "))?;
            }
        }
        out.flush()?;
        drop(out);
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(copied: u64, phase: &str) -> Value {
        serde_json::json!({"vms": [{"vm": "web", "disks": [{
            "vm": "web", "disk": "os", "phase": phase, "health": "normal",
            "copied_bytes": copied, "size_bytes": 1u64 << 30, "rpo_seconds": null
        }]}]})
    }

    #[test]
    fn rate_and_eta_come_from_two_polls_of_a_copy() {
        let mut seen = Seen::new();
        let first = rows(&status(0, "initial"), &mut seen, Duration::ZERO);
        assert_eq!(first[0].join(" "), "VM DISK PHASE DONE RATE ETA RPO HEALTH");
        assert_eq!(first[1][4..6], ["-", "-"], "no rate from one poll");
        // 12.5 MB in 1 s: 100 Mbit/s; (1 GiB - 12.5 MB) left at that pace.
        let second = rows(
            &status(12_500_000, "initial"),
            &mut seen,
            Duration::from_secs(1),
        );
        assert_eq!(second[1][3], "1.2 %");
        assert_eq!(second[1][4], "100.0 Mbit/s");
        assert_eq!(second[1][5], "1m 24s");
        // A protected disk shows no copy rate, its RPO instead.
        let mut p = status(1 << 30, "protected");
        p["vms"][0]["disks"][0]["rpo_seconds"] = 95.into();
        let third = rows(&p, &mut seen, Duration::from_secs(1));
        assert_eq!(
            third[1][2..],
            ["protected", "100.0 %", "-", "-", "1m 35s", "normal"]
        );
    }
}

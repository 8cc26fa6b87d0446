//! Results files: `NAME.json` (everything measured) and `NAME.md` (the table a reader wants),
//! both in the results folder, plus the facts of the machine the numbers came from.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::Serialize;

/// Where and with what a run was made.
#[derive(Debug, Serialize)]
pub struct Environment {
    pub date_utc: String,
    pub git_commit: String,
    pub kernel: String,
    pub cpus: usize,
    pub tools: Vec<String>,
    /// /proc/loadavg at the end of the run: the machine is shared, so a high load explains noise.
    pub loadavg: String,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| format!("{program}: not found"))
}

/// Collects the environment, naming the versions of `tools` (program, version flag).
pub fn environment(tools: &[(&str, &str)]) -> Environment {
    Environment {
        date_utc: first_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        git_commit: first_line(
            "git",
            &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"],
        ),
        kernel: first_line("uname", &["-r"]),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        tools: tools.iter().map(|(p, f)| first_line(p, &[f])).collect(),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Writes `dir/name.json` and `dir/name.md`.
pub fn write(dir: &Path, name: &str, json: &impl Serialize, md: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let j = dir.join(format!("{name}.json"));
    std::fs::write(&j, serde_json::to_string_pretty(json)? + "\n")
        .with_context(|| format!("{}: cannot write", j.display()))?;
    let m = dir.join(format!("{name}.md"));
    std::fs::write(&m, md).with_context(|| format!("{}: cannot write", m.display()))?;
    eprintln!("results: {} and {}", j.display(), m.display());
    Ok(())
}

/// A Markdown table.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", head.join(" | "));
    s += &format!("|{}\n", " --- |".repeat(head.len()));
    for r in rows {
        // A `|` inside a cell (the zstd pipe) would split the column.
        let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
        s += &format!("| {} |\n", cells.join(" | "));
    }
    s
}

/// Decimal megabytes per second.
pub fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// Bytes in GiB, for per-GiB figures.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

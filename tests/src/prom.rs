//! Prometheus for the tests: a role's `/metrics` scraped, one sample read from the text
//! exposition, and `promtool check metrics` (lint included) on it. One copy for every test
//! that reads or checks metrics.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::http::get;
use crate::require_tool;

/// The text exposition at `http://ADDR/metrics` (`ADDR` as a role announced it after
/// `metrics on `).
pub fn scrape(addr: &str) -> String {
    get(addr, "/metrics").body
}

/// The value of the sample `name{labels}` in a Prometheus text exposition, where every
/// `(label, value)` in `labels` matches.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, lbl) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let ok = labels
            .iter()
            .all(|(k, v)| lbl.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        if ok {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// `promtool check metrics` on `text`; returns its complaints (empty = accepted without a
/// lint remark). Fails the test when promtool is not installed.
pub fn promtool_check(text: &str) -> String {
    require_tool("promtool", "apt-get install prometheus");
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        msg
    } else {
        format!("promtool failed ({}): {msg}", out.status)
    }
}

//! What a sender is told: its VMs and disks, and how to send them (the command line and
//! config file map onto [`SendOptions`]); and the stable names disks get at the receiver.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::throttle::BandwidthPolicy;

/// One VM and its disks.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// VM name (the receiver authorises senders per VM).
    pub name: String,
    /// Disk image paths, replicated in this order.
    pub disks: Vec<PathBuf>,
    /// The consistency group the VM switches with (`send --group`, `group` of a `[[vm]]`);
    /// `None`: the VM switches alone.
    pub group: Option<String>,
}

/// How to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Receiver address, `HOST:PORT`.
    pub to: String,
    /// Name checked against the receiver's certificate (default: the host in `to`).
    pub server_name: Option<String>,
    /// Folder with `ca.pem` and `IDENTITY.pem`/`.key`.
    pub tls: PathBuf,
    /// This sender's name (its certificate).
    pub identity: String,
    /// Parallel streams per disk (upload threads per VM), 1..=32.
    pub threads: usize,
    /// zstd level (0 = off).
    pub level: i32,
    /// Let the level follow the link.
    pub adaptive: bool,
    /// Largest extent read at once.
    pub chunk: u32,
    /// Keep retrying recoverable errors this long, then exit 75.
    pub give_up_after: Duration,
    /// Show progress bars (when stderr is a terminal).
    pub progress: bool,
    /// Continuous protection: give up (exit 75) after this long without progress, retrying
    /// at the fast pace meanwhile. `None` (the default): retry forever on the retry schedule.
    pub protect_give_up_after: Option<Duration>,
    /// Bandwidth policy of the host, shared by all streams and VMs of this sender.
    pub bandwidth: BandwidthPolicy,
    /// Where `bandwidth` came from ("flags", "config", "default"), for the one start-up
    /// line that says which policy won (see `sender::run_jobs`).
    pub bandwidth_source: &'static str,
    /// RPO above which a VM warns (default: twice the interval).
    pub rpo_threshold: Option<Duration>,
    /// Resynchronise committed replicas at once (`--resync`).
    pub resync: bool,
    /// Rehash the target's data during a resync (`--verify`): the receiver ignores its
    /// durable hash index, reads its whole working image, and repairs the index (catches a
    /// replica changed behind the receiver's back).
    pub verify: bool,
    /// State folder: jobs that failed before they could be reported wait here
    /// (default [`crate::sender::pending::default_state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// CPU budget of the sender process (`--cpu-limit`; `None`: unlimited).
    pub cpu_limit: Option<crate::cpu::CpuLimit>,
    /// The shipping's nice value (`--nice`; `None`: [`crate::sender::priority::resolve`]'s
    /// default).
    pub nice: Option<i32>,
    /// qemu VMs to protect through QMP (`--vm VM --qmp SOCKET`; protection only).
    pub qemu: Vec<crate::sender::qemu::QemuSpec>,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            to: String::new(),
            server_name: None,
            tls: PathBuf::new(),
            identity: String::new(),
            threads: 4,
            level: 1,
            adaptive: true,
            chunk: 1 << 20,
            give_up_after: Duration::from_secs(600),
            progress: true,
            protect_give_up_after: None,
            bandwidth: BandwidthPolicy::NoThrottle,
            bandwidth_source: "default",
            rpo_threshold: None,
            resync: false,
            verify: false,
            state_dir: None,
            cpu_limit: None,
            nice: None,
            qemu: Vec::new(),
        }
    }
}

/// Longest disk name the receiver accepts (`sink::validate_name`).
const MAX_NAME: usize = 64;

/// `stem` with the collision `suffix` (`""`, `-2`, …), shortened when the two would pass
/// [`MAX_NAME`]: the first (55 − k) characters, `-`, 8 hex digits of the stem's BLAKE3, then
/// the k-character suffix: 64 characters, stable across runs, and two long stems that share
/// their first characters still get different names.
fn fit_name(stem: &str, suffix: &str) -> String {
    if stem.len() + suffix.len() <= MAX_NAME {
        return format!("{stem}{suffix}");
    }
    let hash = blake3::hash(stem.as_bytes());
    let hex: String = hash.as_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // The stem is ASCII here (see `disk_names`), so characters are bytes.
    let keep = (MAX_NAME - 9).saturating_sub(suffix.len()).min(stem.len());
    format!("{}-{hex}{suffix}", &stem[..keep])
}

/// Names disks by their file stem; a stem used twice in one VM gets `-2`, `-3`, … in the
/// order the disks were given, so names are stable across runs with the same command line.
/// A name that would pass 64 characters is shortened by [`fit_name`] instead of being
/// refused by the receiver.
pub fn disk_names(disks: &[PathBuf]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut used: HashSet<String> = HashSet::new();
    disks
        .iter()
        .map(|p| {
            let stem: String = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "disk".into())
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let stem = stem.trim_start_matches('.').to_string();
            let stem = if stem.is_empty() { "disk".into() } else { stem };
            let n = seen.entry(stem.clone()).or_insert(0);
            *n += 1;
            let mut name = if *n == 1 {
                fit_name(&stem, "")
            } else {
                fit_name(&stem, &format!("-{n}"))
            };
            while !used.insert(name.clone()) {
                *n += 1;
                name = fit_name(&stem, &format!("-{n}"));
            }
            name
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashing_stems_get_numbered_in_command_line_order() {
        let v: Vec<PathBuf> = [
            "/a/os.vhdx",
            "/b/os.vhd",
            "/c/data.raw",
            "/d/os.vhdx",
            "/e/os-2.vhd",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(disk_names(&v), vec!["os", "os-2", "data", "os-3", "os-2-2"]);
    }

    #[test]
    fn stems_over_64_characters_are_shortened_with_a_hash_and_keep_their_collision_suffix() {
        let long = "a".repeat(70);
        let other = format!("{}b", "a".repeat(69)); // same first 69 characters
        let exact = "c".repeat(64);
        let v: Vec<PathBuf> = [
            format!("/x/{long}.vhdx"),
            format!("/y/{long}.vhd"),
            format!("/z/{other}.raw"),
            format!("/w/{exact}.vhdx"),
            format!("/v/{exact}.raw"),
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let names = disk_names(&v);
        let hex = |s: &str| blake3::hash(s.as_bytes()).to_hex()[..8].to_string();
        assert_eq!(names[0], format!("{}-{}", &long[..55], hex(&long)));
        assert_eq!(names[1], format!("{}-{}-2", &long[..53], hex(&long)));
        assert_eq!(names[2], format!("{}-{}", &other[..55], hex(&other)));
        assert_eq!(names[3], exact, "64 characters fit as they are");
        assert_eq!(names[4], format!("{}-{}-2", &exact[..53], hex(&exact)));
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for n in &names {
            assert!(n.len() <= 64, "{n}");
            crate::sink::validate_name("disk name", n).unwrap();
        }
        // Stable across runs.
        assert_eq!(disk_names(&v), names);
    }
}

//! The switch intent `D.hrl.switch`: which disks switch their logs together, into which
//! cycles — written beside every disk of the set before the first rename, so a switch
//! interrupted by a crash can be completed for *all* of them (by the next tracked write or
//! the next sender start), never for some.
//!
//! The file is small text, made durable by write, fsync and rename (a reader never sees
//! half of it), and checked on reading:
//!
//! ```text
//! vdrep-switch-intent 1
//! {"vms":[{"vm":"vm1","cycle":7}],"disks":[{"vm":"vm1","disk":"/vms/os.raw","cycle":7,"size":8388608}]}
//! blake3 <64 hex digits of the line above>
//! ```
//!
//! The process that runs the switch holds an exclusive `flock` on the file from before it
//! exists (on its temporary name) until it removes it, so a writer can tell a switch in
//! progress (locked) from one whose sender died (unlocked).
//!
//! `vms[].cycle` is the VM cycle: the highest cycle any of its disks switches into. Each
//! disk keeps its own cycle number (`disks[].cycle`, the name of its closed log): the
//! store takes a disk's cycles strictly one after another, and a VM's disks can differ
//! (a resync commits one more cycle on one disk), so one number for all would not fit the
//! store as it is.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lock::LockGuard;
use super::TrackingError;

const MAGIC: &str = "vdrep-switch-intent 1";
/// More disks than any set can hold (16 VMs of a group × their disks): a larger count is
/// corruption, not a set.
const MAX_DISKS: usize = 4096;
/// An intent larger than this is not one (paths are bounded by the OS).
const MAX_BYTES: u64 = 4 << 20;

/// A VM taking part in a switch, with its cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentVm {
    /// The VM's name.
    pub vm: String,
    /// The VM cycle this switch closes (the highest of its disks' cycles).
    pub cycle: u64,
}

/// A disk taking part in a switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentDisk {
    /// The VM the disk belongs to.
    pub vm: String,
    /// The disk's absolute path (its logs are beside it).
    pub disk: String,
    /// The disk's cycle this switch closes: its active log becomes `D.NNNNNNNN.hrl`.
    pub cycle: u64,
    /// The disk's virtual size (to reopen its logs without opening the disk).
    pub size: u64,
}

/// One switch of a set of disks (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchIntent {
    /// The VMs of the set.
    pub vms: Vec<IntentVm>,
    /// Every disk of the set.
    pub disks: Vec<IntentDisk>,
}

impl SwitchIntent {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        let body = serde_json::to_string(self).unwrap_or_default();
        let sum = blake3::hash(body.as_bytes());
        format!("{MAGIC}\n{body}\nblake3 {}\n", sum.to_hex()).into_bytes()
    }

    /// Parses and checks an intent read from `path` (named in every error).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<SwitchIntent, TrackingError> {
        let bad = |problem: String| TrackingError::Intent {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            bad(format!(
                "not text (byte {} is not UTF-8): torn or corrupt",
                e.valid_up_to()
            ))
        })?;
        let mut lines = text.split('\n');
        let magic = lines.next().unwrap_or_default();
        if magic != MAGIC {
            return Err(bad(format!(
                "first line is {:?}, not {MAGIC:?}: not a switch intent of this version",
                magic.chars().take(40).collect::<String>()
            )));
        }
        let (Some(body), Some(sum), Some(""), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(bad(
                "not three complete lines (magic, body, checksum): torn or corrupt".into(),
            ));
        };
        let want = sum
            .strip_prefix("blake3 ")
            .ok_or_else(|| bad("the checksum line does not start with `blake3 `".into()))?;
        if blake3::hash(body.as_bytes()).to_hex().as_str() != want {
            return Err(bad("checksum mismatch: the file is torn or corrupt".into()));
        }
        let intent: SwitchIntent = serde_json::from_str(body)
            .map_err(|e| bad(format!("body is not a switch intent: {e}")))?;
        intent.check().map_err(bad)?;
        Ok(intent)
    }

    fn check(&self) -> Result<(), String> {
        if self.disks.is_empty() || self.disks.len() > MAX_DISKS {
            return Err(format!(
                "{} disks: a switch has 1..={MAX_DISKS}",
                self.disks.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.disks {
            if !Path::new(&d.disk).is_absolute() {
                return Err(format!("disk path {:?} is not absolute", d.disk));
            }
            if !seen.insert(&d.disk) {
                return Err(format!("disk {:?} is listed twice", d.disk));
            }
            if d.cycle == 0 || d.size == 0 {
                return Err(format!(
                    "disk {:?}: cycle and size must be positive",
                    d.disk
                ));
            }
            let Some(vm) = self.vms.iter().find(|v| v.vm == d.vm) else {
                return Err(format!(
                    "disk {:?} belongs to VM {:?}, which is not listed",
                    d.disk, d.vm
                ));
            };
            if d.cycle > vm.cycle {
                return Err(format!(
                    "disk {:?} switches into cycle {}, after its VM's cycle {}",
                    d.disk, d.cycle, vm.cycle
                ));
            }
        }
        Ok(())
    }

    /// The disks' paths.
    pub fn disk_paths(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.disks.iter().map(|d| PathBuf::from(&d.disk))
    }
}

/// Writes `intent` to `path` durably (temporary file, fsync, rename) with the returned
/// `flock` held on it from before it exists: a reader that finds the file locked knows a
/// live process runs the switch. The folder is not synced here (the switch syncs each
/// folder once for all its files).
pub(super) fn write(path: &Path, intent: &SwitchIntent) -> Result<LockGuard, TrackingError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |op, e| TrackingError::Io {
        path: path.to_path_buf(),
        op,
        source: e,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(|e| io("create switch intent", e))?;
    let guard = LockGuard::on_file(file).map_err(|e| io("lock switch intent", e))?;
    let mut f = guard.file();
    f.write_all(&intent.encode())
        .map_err(|e| io("write switch intent", e))?;
    f.sync_all().map_err(|e| io("sync switch intent", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("rename switch intent", e))?;
    Ok(guard)
}

/// An intent found beside a disk, with the open file (for its lock).
pub(super) struct Found {
    /// The file as opened.
    pub file: std::fs::File,
    /// Its content.
    pub intent: SwitchIntent,
}

/// Reads the intent at `path`; `None` if there is none.
pub(super) fn read(path: &Path) -> Result<Option<Found>, TrackingError> {
    let io = |op, e| TrackingError::Io {
        path: path.to_path_buf(),
        op,
        source: e,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open switch intent", e)),
    };
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| io("read switch intent", e))?;
    let intent = SwitchIntent::decode(&bytes, path)?;
    Ok(Some(Found { file, intent }))
}

/// Whether `file` (opened from `path`) is still the file at `path` (not removed or
/// replaced by a newer intent since).
pub(super) fn still_at(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the intent at `path` if it is still the one in `file` (missing is fine).
pub(super) fn remove_if_same(file: &std::fs::File, path: &Path) -> Result<(), TrackingError> {
    if !still_at(file, path) {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TrackingError::Io {
            path: path.to_path_buf(),
            op: "remove switch intent",
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SwitchIntent {
        SwitchIntent {
            vms: vec![IntentVm {
                vm: "vm1".into(),
                cycle: 7,
            }],
            disks: vec![
                IntentDisk {
                    vm: "vm1".into(),
                    disk: "/vms/vm1/os.raw".into(),
                    cycle: 7,
                    size: 8 << 20,
                },
                IntentDisk {
                    vm: "vm1".into(),
                    disk: "/vms/vm1/data disk\n.vhd".into(),
                    cycle: 6,
                    size: 4 << 20,
                },
            ],
        }
    }

    fn err(bytes: &[u8]) -> String {
        SwitchIntent::decode(bytes, Path::new("/vms/vm1/os.raw.hrl.switch"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_intent_round_trips_with_any_path() {
        let i = sample();
        let p = Path::new("x");
        assert_eq!(SwitchIntent::decode(&i.encode(), p).unwrap(), i);
    }

    #[test]
    fn a_torn_intent_is_refused_naming_the_file_at_every_length() {
        let b = sample().encode();
        for n in 0..b.len() {
            let e = err(&b[..n]);
            assert!(e.starts_with("/vms/vm1/os.raw.hrl.switch: "), "{n}: {e}");
            assert!(e.contains("switch intent"), "{n}: {e}");
        }
    }

    #[test]
    fn a_corrupt_intent_is_refused_naming_the_file_and_the_problem() {
        let b = sample().encode();
        // One changed byte in the body: the checksum says so.
        let mut c = b.clone();
        let at = MAGIC.len() + 12;
        c[at] ^= 0x01;
        let e = err(&c);
        assert!(e.contains("checksum mismatch"), "{e}");
        // Garbage, another file's text, bad UTF-8.
        assert!(err(b"\x00\x01\x02").contains("not a switch intent of this version"));
        assert!(err(b"hello\n").contains("not a switch intent of this version"));
        assert!(err(&[0xff, 0xfe]).contains("not text"));
        // Extra trailing bytes.
        let mut x = b.clone();
        x.extend_from_slice(b"more\n");
        assert!(err(&x).contains("three complete lines"), "{}", err(&x));
    }

    #[test]
    fn an_intent_that_checks_out_but_makes_no_sense_is_refused() {
        let mut i = sample();
        i.disks[0].disk = "relative.raw".into();
        assert!(err(&i.encode()).contains("not absolute"));
        let mut i = sample();
        i.disks[1].disk = i.disks[0].disk.clone();
        assert!(err(&i.encode()).contains("listed twice"));
        let mut i = sample();
        i.vms.clear();
        assert!(err(&i.encode()).contains("not listed"));
        let mut i = sample();
        i.disks.clear();
        assert!(err(&i.encode()).contains("0 disks"));
        let mut i = sample();
        i.disks[0].cycle = 9;
        assert!(err(&i.encode()).contains("after its VM's cycle"));
        // Unknown fields are not ignored.
        let body = r#"{"vms":[],"disks":[],"x":1}"#;
        let text = format!(
            "{MAGIC}\n{body}\nblake3 {}\n",
            blake3::hash(body.as_bytes()).to_hex()
        );
        assert!(err(text.as_bytes()).contains("body is not a switch intent"));
    }

    #[test]
    fn a_written_intent_is_locked_until_its_guard_drops() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw.hrl.switch");
        let g = write(&p, &sample()).unwrap();
        let found = read(&p).unwrap().unwrap();
        assert_eq!(found.intent, sample());
        assert!(still_at(&found.file, &p));
        let again = std::fs::File::open(&p).unwrap();
        assert!(LockGuard::try_on_file(again).unwrap().is_none(), "held");
        drop(g);
        let again = std::fs::File::open(&p).unwrap();
        assert!(LockGuard::try_on_file(again).unwrap().is_some(), "released");
        remove_if_same(&found.file, &p).unwrap();
        assert!(read(&p).unwrap().is_none());
        assert!(!still_at(&found.file, &p));
    }
}

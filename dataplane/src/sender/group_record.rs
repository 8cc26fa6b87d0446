//! The switches of a consistency group, as the sender records them in its state folder
//! (`STATE/groups/NAME.json`): each group switch's `group_cycle`, its instant and the VM
//! cycle of every member it switched.
//!
//! **Why a record, and why before the renames.** A group point is the set of the members'
//! VM points closed by one switch; they carry the same `group_cycle` and `time`. The closed
//! logs on disk say which VM cycle they close, not which group switch made them, and a
//! sender killed inside a switch (completed later by a writer or the next start) ships them
//! from a later run. So the switch is recorded durably *before* anything is renamed
//! (`cycle::switch_vms`' `before`): a closed log of a group member always has its record.
//! A record whose switch never happened (killed before the renames) is harmless: its VM
//! cycles are switched again by the next switch, recorded later with a higher
//! `group_cycle`, and the newest record of a VM cycle wins.
//!
//! A qemu member (`super::group_qemu`) is not in a record's VMs: its VM cycle follows from
//! its views, known only after the switch, and its own point plan (`STATE/qemu/VM/
//! point.json`, written before it ships) carries the group cycle recorded here.
//!
//! `group_cycle` only grows: the next is one more than the newest recorded (at least 1).
//! The file keeps the newest [`KEEP`] switches (a sender ships each switch's cycles before
//! the group's next switch, so only the newest few are ever looked up).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tracking::IntentVm;

/// Switches kept in the file.
pub const KEEP: usize = 64;
/// Largest record file read (64 switches of 16 VMs with long names stay far below).
const MAX_BYTES: u64 = 4 << 20;

/// One group switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSwitch {
    /// The group's switch number, the same in every member's point.
    pub group_cycle: u64,
    /// The switch instant (the sender's clock), Unix milliseconds: every member's point
    /// of this switch carries it as its `time`.
    pub unix_ms: i64,
    /// The members switched and each one's VM cycle.
    pub vms: Vec<IntentVm>,
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFile {
    group: String,
    /// Oldest first.
    switches: Vec<GroupSwitch>,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The file could not be read or replaced.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was tried.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a group record (edited or corrupt): fix or remove it (the group's
    /// numbering then restarts after the newest `group_cycle` the receiver knows).
    #[error("{path}: not a group switch record ({problem}); fix or remove it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The record file of `group` in the state folder.
pub fn path(state: &Path, group: &str) -> PathBuf {
    state.join("groups").join(format!("{group}.json"))
}

fn load(path: &Path, group: &str) -> Result<RecordFile, RecordError> {
    let io = |op| {
        move |source| RecordError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(RecordFile {
                group: group.to_string(),
                switches: Vec::new(),
            })
        }
        Err(e) => return Err(io("open")(e)),
    };
    let mut bytes = Vec::new();
    use std::io::Read;
    f.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read"))?;
    let corrupt = |problem: String| RecordError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    if bytes.len() as u64 > MAX_BYTES {
        return Err(corrupt(format!("larger than {MAX_BYTES} bytes")));
    }
    let r: RecordFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if r.group != group {
        return Err(corrupt(format!("it is group {:?}'s", r.group)));
    }
    if r.switches
        .windows(2)
        .any(|w| w[1].group_cycle <= w[0].group_cycle)
    {
        return Err(corrupt("group cycles out of order".into()));
    }
    Ok(r)
}

/// Replaces the file durably (write, fsync, rename, folder fsync).
fn save(path: &Path, r: &RecordFile) -> Result<(), RecordError> {
    use std::io::Write;
    let io = |op| {
        move |source| RecordError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create folder"))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
    let body = serde_json::to_vec_pretty(r).map_err(|e| io("encode")(std::io::Error::other(e)))?;
    f.write_all(&body).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    std::fs::rename(&tmp, path).map_err(io("rename"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync folder"))?;
    Ok(())
}

/// Records a switch of `group` about to happen at `unix_ms` with each member's VM cycle,
/// durably, and returns its `group_cycle` (one more than the newest recorded, and above
/// `floor`: a group cycle some store already holds).
pub fn record(
    path: &Path,
    group: &str,
    unix_ms: i64,
    vms: &[IntentVm],
    floor: u64,
) -> Result<u64, RecordError> {
    let mut r = load(path, group)?;
    let last = r.switches.last().map_or(0, |s| s.group_cycle);
    let group_cycle = last.max(floor) + 1;
    r.switches.push(GroupSwitch {
        group_cycle,
        unix_ms,
        vms: vms.to_vec(),
    });
    let extra = r.switches.len().saturating_sub(KEEP);
    r.switches.drain(..extra);
    save(path, &r)?;
    Ok(group_cycle)
}

/// The group switch that closed `vm`'s VM cycle `vm_cycle` (the newest record naming it),
/// if recorded.
pub fn lookup(
    path: &Path,
    group: &str,
    vm: &str,
    vm_cycle: u64,
) -> Result<Option<GroupSwitch>, RecordError> {
    let r = load(path, group)?;
    Ok(r.switches
        .into_iter()
        .rev()
        .find(|s| s.vms.iter().any(|v| v.vm == vm && v.cycle == vm_cycle)))
}

/// Every recorded switch of `group`, oldest first.
pub fn switches(path: &Path, group: &str) -> Result<Vec<GroupSwitch>, RecordError> {
    Ok(load(path, group)?.switches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vms(v: &[(&str, u64)]) -> Vec<IntentVm> {
        v.iter()
            .map(|&(vm, cycle)| IntentVm {
                vm: vm.into(),
                cycle,
            })
            .collect()
    }

    #[test]
    fn group_cycles_grow_and_the_newest_record_of_a_vm_cycle_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "erp");
        assert_eq!(
            record(&p, "erp", 1000, &vms(&[("a", 1), ("b", 1)]), 0).unwrap(),
            1
        );
        // A switch recorded but never renamed (killed before): its VM cycles come again.
        assert_eq!(
            record(&p, "erp", 2000, &vms(&[("a", 2), ("b", 2)]), 0).unwrap(),
            2
        );
        assert_eq!(
            record(&p, "erp", 3000, &vms(&[("a", 2), ("b", 2)]), 0).unwrap(),
            3
        );
        let s = lookup(&p, "erp", "b", 2).unwrap().unwrap();
        assert_eq!((s.group_cycle, s.unix_ms), (3, 3000));
        assert_eq!(lookup(&p, "erp", "a", 1).unwrap().unwrap().group_cycle, 1);
        assert_eq!(lookup(&p, "erp", "c", 1).unwrap(), None);
        // A floor from the store lifts the numbering.
        assert_eq!(record(&p, "erp", 4000, &vms(&[("a", 3)]), 10).unwrap(), 11);
        assert!(
            lookup(&p, "other", "a", 1).is_err(),
            "another group's file is refused"
        );
    }

    #[test]
    fn the_record_keeps_the_newest_switches_and_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "g");
        for i in 1..=(KEEP as u64 + 5) {
            record(&p, "g", i as i64, &vms(&[("a", i)]), 0).unwrap();
        }
        let all = switches(&p, "g").unwrap();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all.last().unwrap().group_cycle, KEEP as u64 + 5);
        std::fs::write(&p, b"{\"group\":\"g\",\"switches\":[").unwrap();
        let e = record(&p, "g", 1, &vms(&[("a", 1)]), 0).unwrap_err();
        assert!(e.to_string().contains("fix or remove"), "{e}");
    }
}

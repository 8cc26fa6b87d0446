//! What a qemu change source keeps across restarts, in `STATE/qemu/VM/`:
//! - `state.json`: the last switch's generation (bitmap names never repeat), whether vdrep
//!   started qemu's NBD server, and per disk the bitmap that holds every write not yet
//!   committed at the receiver (`None`: the disk is fresh or needs a resync, and is read in
//!   full from the next view);
//! - `NAME.resync`: present, with the reason, while the disk needs a resync (a bitmap lost
//!   or inconsistent): delta replication stops for it until a block-checksum resync from a
//!   view commits;
//! - `point.json`: the round's VM point plan while its point is not committed
//!   (`super::point`).
//!
//! The file is replaced durably (write, fsync, rename); a disk's bitmap moves to the new
//! generation only once the cycle that shipped the old one is committed, so a crash at any
//! point leaves a bitmap that over-approximates the unshipped writes, never one that misses
//! some.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sender::points::PointPlan;

/// The round's VM point plan.
const PLAN: &str = "point.json";

/// A disk's part of the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskState {
    /// The node-name the bitmap lives on.
    pub node: String,
    /// The bitmap holding every write the receiver has not committed.
    pub bitmap: Option<String>,
}

/// `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// The newest generation a switch used.
    pub generation: u32,
    /// vdrep started qemu's NBD server (a crashed run's server is stopped at the next start).
    #[serde(default)]
    pub nbd_started: bool,
    /// Per store name.
    #[serde(default)]
    pub disks: BTreeMap<String, DiskState>,
}

/// The state folder of one VM.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// `STATE/qemu/VM`.
    pub fn new(state: &Path, vm: &str) -> StateDir {
        StateDir {
            dir: state.join("qemu").join(vm),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The resync mark of disk `name`.
    pub fn resync_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.resync"))
    }

    /// The state, or the default when none was written yet.
    pub fn load(&self) -> std::io::Result<VmState> {
        match std::fs::read(self.file()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::other(format!(
                    "{}: unreadable ({e}); remove it to start protection over (a full resync)",
                    self.file().display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(VmState::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the state durably.
    pub fn save(&self, s: &VmState) -> std::io::Result<()> {
        self.replace("state.json", s)
    }

    /// Writes `FILE` in the folder durably (write, fsync, rename, fsync of the folder).
    fn replace(&self, file: &str, value: &impl Serialize) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{file}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(file))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Records the round's VM point plan durably (`point.json`).
    pub fn save_plan(&self, plan: &PointPlan) -> std::io::Result<()> {
        self.replace(PLAN, plan)
    }

    /// The VM point plan of a round whose point is not committed, if any.
    pub fn load_plan(&self) -> std::io::Result<Option<PointPlan>> {
        match std::fs::read(self.dir.join(PLAN)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| std::io::Error::other(format!("{PLAN}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the VM point plan (none is fine).
    pub fn clear_plan(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(PLAN)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Why disk `name` needs a resync, if it does.
    pub fn resync_reason(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.resync_path(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Marks disk `name` "resync required".
    pub fn mark_resync(&self, name: &str, reason: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let p = self.resync_path(name);
        let mut f = std::fs::File::create(&p)?;
        f.write_all(format!("{reason}\n").as_bytes())?;
        f.sync_all()
    }

    /// Clears the mark.
    pub fn clear_resync(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.resync_path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_resync_marks_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path(), "vm1");
        assert_eq!(s.load().unwrap(), VmState::default());
        let mut v = VmState {
            generation: 7,
            nbd_started: true,
            ..Default::default()
        };
        v.disks.insert(
            "os".into(),
            DiskState {
                node: "os0".into(),
                bitmap: Some("vdrep-7".into()),
            },
        );
        s.save(&v).unwrap();
        assert_eq!(s.load().unwrap(), v);
        assert_eq!(s.resync_reason("os"), None);
        s.mark_resync("os", "bitmap lost").unwrap();
        assert_eq!(s.resync_reason("os").as_deref(), Some("bitmap lost"));
        assert!(dir.path().join("qemu/vm1/os.resync").exists());
        s.clear_resync("os").unwrap();
        s.clear_resync("os").unwrap();
        assert_eq!(s.resync_reason("os"), None);

        assert_eq!(s.load_plan().unwrap(), None);
        let plan = PointPlan {
            vm: "vm1".into(),
            vm_cycle: 8,
            switch_unix_ms: 99,
            group: None,
            group_cycle: None,
            disks: vec![crate::sender::points::PlanDisk {
                name: "os".into(),
                cycle: 8,
            }],
            one_instant: true,
        };
        s.save_plan(&plan).unwrap();
        assert_eq!(s.load_plan().unwrap(), Some(plan));
        s.clear_plan().unwrap();
        s.clear_plan().unwrap();
        assert_eq!(s.load_plan().unwrap(), None);
    }
}

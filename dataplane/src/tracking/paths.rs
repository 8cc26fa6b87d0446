//! Names of the change-log files beside a disk.

use std::io;
use std::path::{Path, PathBuf};

/// The files of one disk's change tracking.
#[derive(Debug, Clone)]
pub struct LogPaths {
    /// `D.hrl`.
    pub active: PathBuf,
    /// `D.hrl.lock`.
    pub lock: PathBuf,
    /// `D.hrl.shipped`: the `UniqueId` of the last log whose cycle the receiver committed
    /// (the next log's `PreviousUniqueId` must equal it).
    pub shipped: PathBuf,
    /// `D.hrl.resync`: present when delta replication stopped; holds the reason.
    pub resync: PathBuf,
    /// `D.hrl.hashes`: the block-hash table behind the per-cycle digests.
    pub hashes: PathBuf,
    /// `D.hrl.switch`: the intent of a log switch of a set of disks (a VM's, a group's),
    /// present from before its first rename until its old logs are closed
    /// ([`super::SwitchIntent`]).
    pub switch: PathBuf,
    /// The disk `D` itself (named in switch intents).
    pub disk: PathBuf,
    dir: PathBuf,
    stem: String,
}

impl LogPaths {
    /// Paths for the disk at `disk`.
    pub fn new(disk: &Path) -> Self {
        let dir = disk
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let stem = disk
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        LogPaths {
            active: dir.join(format!("{stem}.hrl")),
            lock: dir.join(format!("{stem}.hrl.lock")),
            shipped: dir.join(format!("{stem}.hrl.shipped")),
            resync: dir.join(format!("{stem}.hrl.resync")),
            hashes: dir.join(format!("{stem}.hrl.hashes")),
            switch: dir.join(format!("{stem}.hrl.switch")),
            disk: disk.to_path_buf(),
            dir,
            stem,
        }
    }

    /// `D.NNNNNNNN.hrl`: the closed log of `cycle`.
    pub fn closed(&self, cycle: u64) -> PathBuf {
        self.dir.join(format!("{}.{cycle:08}.hrl", self.stem))
    }

    /// `D.NNNNNNNN.hrl.digest`: the disk digest at the switch that closed `cycle`'s log.
    pub fn digest(&self, cycle: u64) -> PathBuf {
        self.dir
            .join(format!("{}.{cycle:08}.hrl.digest", self.stem))
    }

    /// `D.NNNNNNNN.hrl.point`: the VM switch that closes `cycle` (the sender's point plan,
    /// `sender::points`), kept until the receiver recorded the VM's point.
    pub fn point_plan(&self, cycle: u64) -> PathBuf {
        self.dir.join(format!("{}.{cycle:08}.hrl.point", self.stem))
    }

    /// Point plans beside the disk, oldest cycle first.
    pub fn point_plans(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let prefix = format!("{}.", self.stem);
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(num) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".hrl.point"))
            else {
                continue;
            };
            if num.len() >= 8 && num.bytes().all(|c| c.is_ascii_digit()) {
                if let Ok(c) = num.parse::<u64>() {
                    v.push((c, e.path()));
                }
            }
        }
        v.sort();
        Ok(v)
    }

    /// `D.hrl.next.N`: the next active log, made before the switch that closes cycle N
    /// moves the active one, so a switch killed half-way is finished at the next start.
    pub fn next(&self, cycle: u64) -> PathBuf {
        self.dir.join(format!("{}.hrl.next.{cycle}", self.stem))
    }

    /// A prepared next log left by an interrupted switch, with its cycle.
    pub fn find_next(&self) -> io::Result<Option<(u64, PathBuf)>> {
        let prefix = format!("{}.hrl.next.", self.stem);
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(c) = name.strip_prefix(&prefix).and_then(|n| n.parse().ok()) {
                return Ok(Some((c, e.path())));
            }
        }
        Ok(None)
    }

    /// Closed logs, oldest cycle first.
    pub fn closed_logs(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let prefix = format!("{}.", self.stem);
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let Some(num) = rest.strip_suffix(".hrl") else {
                continue;
            };
            if num.len() >= 8 && num.bytes().all(|c| c.is_ascii_digit()) {
                if let Ok(c) = num.parse::<u64>() {
                    v.push((c, e.path()));
                }
            }
        }
        v.sort();
        Ok(v)
    }

    /// Every change-tracking file of this disk now in its folder, sorted: the ones named
    /// above plus closed logs, digests, VM point plans (`D.NNNNNNNN.hrl.point`, see
    /// `sender/points.rs`), prepared next logs and the `.tmp` files their
    /// replacements leave after a crash. `unprotect` removes exactly these, so it matches
    /// names by their form instead of by the cycles it can still find (a committed cycle's
    /// digest may outlive its log). The disk itself never matches: every name here has the
    /// disk's whole file name followed by `.`.
    pub fn existing_files(&self) -> io::Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if self.is_tracking_file(&name) {
                v.push(e.path());
            }
        }
        v.sort();
        Ok(v)
    }

    /// Whether `name` (a file name in [`LogPaths::dir`]) is one of this disk's tracking files.
    fn is_tracking_file(&self, name: &str) -> bool {
        let Some(rest) = name
            .strip_prefix(self.stem.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return false;
        };
        let rest = rest.strip_suffix(".tmp").unwrap_or(rest);
        if let Some(n) = rest.strip_prefix("hrl.next.") {
            return !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit());
        }
        if matches!(
            rest,
            "hrl" | "hrl.lock" | "hrl.shipped" | "hrl.resync" | "hrl.hashes" | "hrl.switch"
        ) {
            return true;
        }
        let num = rest
            .strip_suffix(".hrl.digest")
            .or_else(|| rest.strip_suffix(".hrl.point"))
            .or_else(|| rest.strip_suffix(".hrl"));
        num.is_some_and(|n| n.len() >= 8 && n.bytes().all(|c| c.is_ascii_digit()))
    }

    /// The folder holding the disk and its logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes renames in the folder durable.
    pub fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_files_are_the_disks_tracking_files_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ours = [
            "os.vhdx.hrl",
            "os.vhdx.hrl.tmp",
            "os.vhdx.hrl.lock",
            "os.vhdx.hrl.shipped",
            "os.vhdx.hrl.shipped.tmp",
            "os.vhdx.hrl.resync",
            "os.vhdx.hrl.hashes",
            "os.vhdx.hrl.switch",
            "os.vhdx.hrl.switch.tmp",
            "os.vhdx.hrl.next.12",
            "os.vhdx.00000011.hrl",
            "os.vhdx.00000009.hrl.digest",
            "os.vhdx.00000009.hrl.point",
            "os.vhdx.00000010.hrl.point.tmp",
            "os.vhdx.123456789.hrl",
        ];
        let others = [
            "os.vhdx",
            "os.vhdx.bak",
            "os.vhdx.hrl.notes",
            "os.vhdx.hrl.next.",
            "os.vhdx.0001.hrl",
            "os.vhdx.0000000x.hrl",
            "os.vhdx.00000009.hrl.plan",
            "os.vhd.hrl",
            "xos.vhdx.hrl",
            "data.vhdx.hrl",
            "data.vhdx.00000001.hrl",
        ];
        for n in ours.iter().chain(&others) {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        let mut want: Vec<PathBuf> = ours.iter().map(|n| d.join(n)).collect();
        want.sort();
        let p = LogPaths::new(&d.join("os.vhdx"));
        assert_eq!(p.existing_files().unwrap(), want);
    }
}

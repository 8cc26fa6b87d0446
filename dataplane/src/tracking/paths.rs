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
            dir,
            stem,
        }
    }

    /// `D.NNNNNNNN.hrl`: the closed log of `cycle`.
    pub fn closed(&self, cycle: u64) -> PathBuf {
        self.dir.join(format!("{}.{cycle:08}.hrl", self.stem))
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

    /// Makes renames in the folder durable.
    pub fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

//! The local store's VM point manifest: `STORE/VM/points`, replaced whole through
//! `STORE/VM/points.tmp` (write, fsync, rename, fsync `VM/`), so a crash leaves the old or
//! the new manifest. Writers (receivers, the store's migration) take `VM/.points.lock`
//! (flock), a dot file like `.jobs.lock`: no disk's file starts with a dot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::{lock_waiting, StoreFs};
use crate::sink::vm_points::{VmPoints, VM_POINTS_FILE, VM_POINTS_TMP};
use crate::sink::SinkError;

/// The lock writers of the manifest take.
pub const VM_POINTS_LOCK: &str = ".points.lock";

/// The manifest of the VM whose folder is `dir`.
pub struct ManifestFile {
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
}

impl ManifestFile {
    /// The manifest in `dir` (`STORE/VM`).
    pub fn new(fs: Arc<dyn StoreFs>, dir: &Path) -> ManifestFile {
        ManifestFile {
            fs,
            dir: dir.to_path_buf(),
        }
    }

    /// `STORE/VM/points`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(VM_POINTS_FILE)
    }

    /// The manifest, `None` when the VM has none.
    pub fn load(&self) -> Result<Option<VmPoints>, SinkError> {
        let path = self.path();
        match self.fs.read_file(&path) {
            Ok(Some(bytes)) => VmPoints::decode(&bytes, &path).map(Some),
            Ok(None) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(SinkError::io(&path, "read", 0, e)),
        }
    }

    /// Read, change under the lock, replace whole if `f` says it changed.
    pub fn update(
        &self,
        f: &mut dyn FnMut(&mut VmPoints, bool) -> Result<bool, SinkError>,
    ) -> Result<(), SinkError> {
        let _guard = lock_waiting(self.fs.as_ref(), &self.dir, &self.dir.join(VM_POINTS_LOCK))?;
        let old = self.load()?;
        let existed = old.is_some();
        let mut m = old.unwrap_or_else(|| VmPoints::new(Vec::new()));
        if !f(&mut m, existed)? {
            return Ok(());
        }
        let path = self.path();
        let tmp = self.dir.join(VM_POINTS_TMP);
        let io = |op| {
            let p = path.clone();
            move |e| SinkError::io(p, op, 0, e)
        };
        self.fs.write_file(&tmp, &m.encode()).map_err(io("write"))?;
        self.fs.sync_file(&tmp).map_err(io("fsync"))?;
        self.fs.rename(&tmp, &path).map_err(io("rename"))?;
        self.fs.sync_dir(&self.dir).map_err(io("fsync folder"))?;
        Ok(())
    }

    /// Removes the manifest, its temporary file and its lock (the VM's last disk went).
    pub fn remove(&self) -> Result<(), SinkError> {
        for n in [VM_POINTS_FILE, VM_POINTS_TMP, VM_POINTS_LOCK] {
            let p = self.dir.join(n);
            self.fs
                .remove_file(&p)
                .map_err(|e| SinkError::io(&p, "remove", 0, e))?;
        }
        Ok(())
    }
}

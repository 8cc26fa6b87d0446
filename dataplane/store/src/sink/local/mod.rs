//! The local page-blob store: one sparse fixed-VHD file per disk plus a durable state record,
//! laid out exactly as the Azure page blob will be (see `LAYOUT.md` beside this file, the
//! versioned description of the directory).
//!
#![doc = include_str!("LAYOUT.md")]
//!
//! All file access goes through [`fs::StoreFs`], so crash tests run this very code on the
//! durability model ([`crate::sink::fault::SimFs`]).

mod cycle;
mod cycle_bufs;
mod disk;
mod files;
pub mod fs;
mod locks;
pub mod log;
mod points;
mod reader;
pub mod state;
mod synced;
mod vm_points;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdrep_proto::Guid;

use super::JobFile;
use crate::sink::{validate_name, DiskKey, PointReader, ReplicaDisk, ReplicaStore, SinkError};
pub use cycle::CYCLE_BUFFER;
pub use disk::LocalDisk;
use fs::{RealFs, StoreFs};
pub use reader::LocalPointReader;

/// Content of `STORE/FORMAT` written by this build.
///
/// Version 2 added delta cycles (redo logs), recovery points (undo logs) and the state
/// record version 2. Version 3 writes cycles in place behind the newest point's undo log
/// (no redo log, no "applying" phase; state record version 3). Version 4 adds the VM's
/// recovery points (`VM/points`, [`crate::sink::vm_points`]); a version 3 store is opened
/// as it is and upgraded by [`ReplicaStore::upgrade`] (the receiver, at start). Versions 1
/// and 2 are refused: neither was deployed, and a version 2 store could hold a
/// half-applied cycle only its redo log can finish.
pub const STORE_FORMAT: &str = "vdrep-store 4";
/// The previous format: the same files without VM points. Opened, listed, and upgraded by
/// the receiver at start.
pub const STORE_FORMAT_V3: &str = "vdrep-store 3";

/// The files of one disk (see `LAYOUT.md`).
#[derive(Debug, Clone)]
pub struct DiskPaths {
    /// `STORE/VM`.
    pub dir: PathBuf,
    /// `STORE/VM/NAME.vhd`: the committed replica.
    pub vhd: PathBuf,
    /// `STORE/VM/NAME.vhd.partial`: an initial copy in progress.
    pub partial: PathBuf,
    /// `STORE/VM/NAME.state`: the state record.
    pub state: PathBuf,
    /// `STORE/VM/NAME.state.tmp`: where a new state record is written before its rename.
    pub state_tmp: PathBuf,
    /// `STORE/VM/NAME.lock`: flock'd while a receiver has the disk open.
    pub lock: PathBuf,
    /// `STORE/VM/NAME.hidx`: the receiver's resync index of the working image.
    pub hidx: PathBuf,
    /// `NAME`: the prefix of the disk's cycle logs.
    pub stem: String,
}

impl DiskPaths {
    /// The paths of `key` under `root`.
    pub fn new(root: &Path, key: &DiskKey) -> DiskPaths {
        let dir = root.join(&key.vm);
        let f = |suffix: &str| dir.join(format!("{}{suffix}", key.disk));
        DiskPaths {
            vhd: f(".vhd"),
            partial: f(".vhd.partial"),
            state: f(".state"),
            state_tmp: f(".state.tmp"),
            lock: f(".lock"),
            hidx: f(".hidx"),
            stem: key.disk.clone(),
            dir,
        }
    }

    /// `STORE/VM/NAME.pK.undo`: what cycle K+1 overwrote, to rebuild recovery point K.
    pub fn undo(&self, point: u64) -> PathBuf {
        self.dir.join(format!("{}.p{point}.undo", self.stem))
    }

    /// Which cycle log of this disk a directory entry is, if any: `(true, N)` for
    /// `NAME.cN.redo` (store version 2; never made now), `(false, K)` for `NAME.pK.undo`
    /// (strictly parsed, so another disk's files, whose names may share the prefix, never
    /// match).
    pub fn parse_log(&self, file_name: &str) -> Option<(bool, u64)> {
        let rest = file_name.strip_prefix(&self.stem)?.strip_prefix('.')?;
        let (redo, num) = if let Some(n) = rest.strip_prefix('c') {
            (true, n.strip_suffix(".redo")?)
        } else {
            (false, rest.strip_prefix('p')?.strip_suffix(".undo")?)
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || num.len() > 20 {
            return None;
        }
        Some((redo, num.parse().ok()?))
    }
}

/// A store in a local directory.
pub struct LocalStore {
    root: PathBuf,
    fs: Arc<dyn StoreFs>,
    cycle_buffer: usize,
    /// The store's `FORMAT` was [`STORE_FORMAT_V3`] when opened (not upgraded yet).
    v3: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("root", &self.root)
            .finish()
    }
}

impl LocalStore {
    /// Opens the store at `root` on the real filesystem, creating it if absent.
    pub fn open(root: &Path) -> Result<LocalStore, SinkError> {
        LocalStore::open_with_fs(root, Arc::new(RealFs))
    }

    /// Opens the store at `root` on `fs` (the real one or a model). An empty or absent
    /// directory becomes a store; a directory with a different `FORMAT` is refused, and so
    /// is a non-empty directory without one (it is not a vdrep store).
    pub fn open_with_fs(root: &Path, fs: Arc<dyn StoreFs>) -> Result<LocalStore, SinkError> {
        let format = root.join("FORMAT");
        fs.create_dir_all(root)
            .map_err(|e| SinkError::io(root, "create store directory", 0, e))?;
        let mut v3 = false;
        match fs
            .read_file(&format)
            .map_err(|e| SinkError::io(&format, "read", 0, e))?
        {
            Some(bytes) => {
                let found = String::from_utf8_lossy(&bytes).trim_end().to_string();
                v3 = found == STORE_FORMAT_V3;
                if found != STORE_FORMAT && !v3 {
                    return Err(SinkError::StoreVersion {
                        path: format,
                        found,
                        expected: STORE_FORMAT.into(),
                    });
                }
            }
            None => {
                let entries = fs
                    .list_dir(root)
                    .map_err(|e| SinkError::io(root, "list", 0, e))?;
                if entries.iter().any(|n| !n.starts_with('.')) {
                    return Err(SinkError::StoreVersion {
                        path: format,
                        found: "(missing, directory not empty: not a vdrep store)".into(),
                        expected: STORE_FORMAT.into(),
                    });
                }
                let tmp = root.join(format!(".FORMAT.tmp.{}", std::process::id()));
                let data = format!("{STORE_FORMAT}\n");
                fs.write_file(&tmp, data.as_bytes())
                    .and_then(|_| fs.sync_file(&tmp))
                    .and_then(|_| fs.rename(&tmp, &format))
                    .and_then(|_| fs.sync_dir(root))
                    .map_err(|e| SinkError::io(&format, "write", 0, e))?;
            }
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
            fs,
            cycle_buffer: CYCLE_BUFFER,
            v3: std::sync::atomic::AtomicBool::new(v3),
        })
    }

    /// Sets how many bytes of an open cycle's writes each disk buffers before moving them
    /// into the replica (default [`CYCLE_BUFFER`]; at least 1). Small values make
    /// tests exercise the mid-cycle flush; each flush costs an undo-log sync and a state
    /// record.
    pub fn with_cycle_buffer(mut self, bytes: usize) -> LocalStore {
        self.cycle_buffer = bytes.max(1);
        self
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The files of a disk.
    pub fn paths(&self, key: &DiskKey) -> DiskPaths {
        DiskPaths::new(&self.root, key)
    }

    /// Opens a disk, returning the concrete type (tests and tools that need more than the
    /// trait).
    pub fn open_local(
        &self,
        key: &DiskKey,
        virtual_size: u64,
        source_id: Guid,
    ) -> Result<LocalDisk, SinkError> {
        key.validate()?;
        let paths = self.paths(key);
        self.fs
            .create_dir_all(&paths.dir)
            .map_err(|e| SinkError::io(&paths.dir, "create VM directory", 0, e))?;
        LocalDisk::open(
            self.fs.clone(),
            key.clone(),
            paths,
            virtual_size,
            source_id,
            self.cycle_buffer,
        )
    }
}

impl ReplicaStore for LocalStore {
    fn open_disk(
        &self,
        key: &DiskKey,
        virtual_size: u64,
        source_id: Guid,
    ) -> Result<Arc<dyn ReplicaDisk>, SinkError> {
        Ok(Arc::new(self.open_local(key, virtual_size, source_id)?))
    }

    fn list_disks(&self, vm: Option<&str>) -> Result<Vec<DiskKey>, SinkError> {
        let vms = match vm {
            Some(v) => {
                validate_name("VM name", v)?;
                vec![v.to_string()]
            }
            None => self
                .fs
                .list_dir(&self.root)
                .map_err(|e| SinkError::io(&self.root, "list", 0, e))?
                .into_iter()
                .filter(|n| validate_name("VM name", n).is_ok())
                .collect(),
        };
        let mut keys = Vec::new();
        for v in vms {
            let dir = self.root.join(&v);
            let names = match self.fs.list_dir(&dir) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
                Err(e) => return Err(SinkError::io(&dir, "list", 0, e)),
            };
            for n in names {
                if let Some(disk) = n.strip_suffix(".state") {
                    if let Ok(k) = DiskKey::new(&v, disk) {
                        keys.push(k);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn describe(&self) -> String {
        format!("local store {}", self.root.display())
    }

    fn point_reader(&self, key: &DiskKey) -> Result<Box<dyn PointReader>, SinkError> {
        key.validate()?;
        Ok(Box::new(LocalPointReader::open(
            self.fs.clone(),
            self.paths(key),
            key.clone(),
        )?))
    }

    fn remove_disk(&self, key: &DiskKey) -> Result<(), SinkError> {
        key.validate()?;
        let p = self.paths(key);
        let io = |path: &Path, op| {
            let path = path.to_path_buf();
            move |e| SinkError::io(path, op, 0, e)
        };
        let names = match self.fs.list_dir(&p.dir) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SinkError::io(&p.dir, "list", 0, e)),
        };
        // Held until the end: no receiver can open the disk while its files go.
        let _lock = self
            .fs
            .try_lock(&p.lock)
            .map_err(io(&p.lock, "lock"))?
            .ok_or_else(|| SinkError::Locked {
                path: p.lock.clone(),
            })?;
        let mut doomed = vec![
            p.vhd.clone(),
            p.partial.clone(),
            p.state_tmp.clone(),
            p.hidx.clone(),
        ];
        doomed.extend(
            names
                .iter()
                .filter(|n| p.parse_log(n).is_some())
                .map(|n| p.dir.join(n)),
        );
        doomed.push(p.state.clone());
        for f in &doomed {
            self.fs.remove_file(f).map_err(io(f, "remove"))?;
        }
        self.fs
            .remove_file(&p.lock)
            .map_err(io(&p.lock, "remove"))?;
        self.fs
            .sync_dir(&p.dir)
            .map_err(io(&p.dir, "fsync directory"))?;
        drop(_lock);
        // The VM's points go with its last disk, and so does its folder.
        if self.list_disks(Some(&key.vm))?.is_empty() {
            vm_points::ManifestFile::new(self.fs.clone(), &p.dir).remove()?;
        }
        self.fs.remove_dir(&p.dir).map_err(io(&p.dir, "remove"))?;
        Ok(())
    }

    fn record_job(&self, job: &crate::jobs::Job) -> Result<(), SinkError> {
        validate_name("VM name", &job.vm)?;
        JobFile::new(self.fs.clone(), &self.root.join(&job.vm)).upsert(job)
    }

    fn jobs(&self, vm: Option<&str>) -> Result<Vec<crate::jobs::Job>, SinkError> {
        let vms = match vm {
            Some(v) => {
                validate_name("VM name", v)?;
                vec![v.to_string()]
            }
            None => {
                let mut v: Vec<String> = self
                    .fs
                    .list_dir(&self.root)
                    .map_err(|e| SinkError::io(&self.root, "list", 0, e))?
                    .into_iter()
                    .filter(|n| validate_name("VM name", n).is_ok())
                    .collect();
                v.sort();
                v
            }
        };
        let mut out = Vec::new();
        for v in vms {
            let dir = self.root.join(&v);
            // `FORMAT` and other plain files are not VM folders.
            match self.fs.exists(&dir.join(super::job_file::JOBS_FILE)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
                Err(e) => return Err(SinkError::io(&dir, "stat", 0, e)),
            }
            out.extend(JobFile::new(self.fs.clone(), &dir).load()?);
        }
        Ok(out)
    }

    fn remove_jobs(&self, vm: &str) -> Result<(), SinkError> {
        validate_name("VM name", vm)?;
        let dir = self.root.join(vm);
        JobFile::new(self.fs.clone(), &dir).remove_all()?;
        self.fs
            .remove_dir(&dir)
            .map_err(|e| SinkError::io(&dir, "remove", 0, e))
    }

    fn available_bytes(&self) -> Result<Option<u64>, SinkError> {
        free_bytes(&self.root).map(Some)
    }

    fn upgrade(&self) -> Result<Option<String>, SinkError> {
        use std::sync::atomic::Ordering;
        if !self.v3.load(Ordering::SeqCst) {
            return Ok(None);
        }
        // The manifests first, then FORMAT: an upgrade cut short is run again.
        let vms = crate::sink::vm_points::migrate(self)?;
        let format = self.root.join("FORMAT");
        let tmp = self
            .root
            .join(format!(".FORMAT.tmp.{}", std::process::id()));
        let data = format!("{STORE_FORMAT}\n");
        self.fs
            .write_file(&tmp, data.as_bytes())
            .and_then(|_| self.fs.sync_file(&tmp))
            .and_then(|_| self.fs.rename(&tmp, &format))
            .and_then(|_| self.fs.sync_dir(&self.root))
            .map_err(|e| SinkError::io(&format, "write", 0, e))?;
        self.v3.store(false, Ordering::SeqCst);
        Ok(Some(format!(
            "store upgraded from {STORE_FORMAT_V3:?} to {STORE_FORMAT:?}: {} VM(s) got their points from before VM-wide switches ({})",
            vms.len(),
            vms.join(", ")
        )))
    }

    fn vm_points(&self, vm: &str) -> Result<Option<crate::sink::vm_points::VmPoints>, SinkError> {
        validate_name("VM name", vm)?;
        vm_points::ManifestFile::new(self.fs.clone(), &self.root.join(vm)).load()
    }

    fn update_vm_points(
        &self,
        vm: &str,
        f: &mut dyn FnMut(&mut crate::sink::vm_points::VmPoints, bool) -> Result<bool, SinkError>,
    ) -> Result<(), SinkError> {
        validate_name("VM name", vm)?;
        vm_points::ManifestFile::new(self.fs.clone(), &self.root.join(vm)).update(f)
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir` (statvfs).
fn free_bytes(dir: &Path) -> Result<u64, SinkError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        SinkError::io(
            dir,
            "statvfs",
            0,
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(SinkError::io(
            dir,
            "statvfs",
            0,
            std::io::Error::last_os_error(),
        ));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

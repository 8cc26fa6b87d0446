//! The file-level steps of the local store, shared by open/recovery and the disk
//! operations: range checks, the in-progress copy file, footer checks and the atomic state
//! write. Their ordering is the crash-safety argument of `LAYOUT.md`.

use std::path::Path;
use std::sync::Arc;

use vdrep_proto::formats::vhd::{Footer, FOOTER_SIZE};
use vdrep_proto::Guid;

use super::fs::{DataFile, StoreFs};
use super::state::{self, Listed, Record};
use super::DiskPaths;
use crate::layout::{replica_file_size, replica_virtual_size};
use crate::sink::{lifecycle, RecoveryPoint, SinkError};

pub(super) fn io_err(
    path: &Path,
    op: &'static str,
    offset: u64,
) -> impl FnOnce(std::io::Error) -> SinkError {
    let path = path.to_path_buf();
    move |e| SinkError::io(path, op, offset, e)
}

pub(super) fn corrupt(path: &Path, offset: u64, problem: impl Into<String>) -> SinkError {
    SinkError::CorruptState {
        path: path.to_path_buf(),
        offset,
        problem: problem.into(),
    }
}

/// The lifecycle's range check (one check and message for every sink).
pub(super) use crate::sink::lifecycle::check_range;

/// Creates a fresh sparse in-progress copy (a new file, never a truncated old one, so no
/// stale byte of an earlier copy can survive a crash) and makes its name and size durable.
pub(super) fn create_partial(
    fs: &dyn StoreFs,
    paths: &DiskPaths,
    size: u64,
) -> Result<Arc<dyn DataFile>, SinkError> {
    remove_partial(fs, paths)?;
    let f =
        fs.open_data(&paths.partial, Some(size))
            .map_err(io_err(&paths.partial, "create", 0))?;
    f.sync_data()
        .map_err(io_err(&paths.partial, "fdatasync", 0))?;
    fs.sync_dir(&paths.dir)
        .map_err(io_err(&paths.dir, "fsync directory", 0))?;
    Ok(f)
}

/// Removes the in-progress copy durably, if there is one.
pub(super) fn remove_partial(fs: &dyn StoreFs, paths: &DiskPaths) -> Result<(), SinkError> {
    if fs
        .exists(&paths.partial)
        .map_err(io_err(&paths.partial, "stat", 0))?
    {
        fs.remove_file(&paths.partial)
            .and_then(|_| fs.sync_dir(&paths.dir))
            .map_err(io_err(&paths.partial, "remove", 0))?;
    }
    Ok(())
}

pub(super) fn check_len(f: &dyn DataFile, path: &Path, want: u64) -> Result<(), SinkError> {
    let len = f.size().map_err(io_err(path, "stat", 0))?;
    if len != want {
        return Err(corrupt(
            path,
            len,
            format!("file is {len} bytes, the disk needs {want}"),
        ));
    }
    Ok(())
}

/// The footer's unique id if `path` exists, has the replica's size and a valid footer.
pub(super) fn footer_id(
    fs: &dyn StoreFs,
    path: &Path,
    virtual_size: u64,
) -> Result<Option<Guid>, SinkError> {
    if !fs.exists(path).map_err(io_err(path, "stat", 0))? {
        return Ok(None);
    }
    let f = fs.open_data(path, None).map_err(io_err(path, "open", 0))?;
    check_len(f.as_ref(), path, replica_file_size(virtual_size))?;
    let at = replica_virtual_size(virtual_size);
    let mut buf = [0u8; FOOTER_SIZE];
    f.read_at(at, &mut buf)
        .map_err(io_err(path, "read footer", at))?;
    Ok(Footer::decode(&buf)
        .ok()
        .filter(|ft| ft.current_size == at)
        .map(|ft| ft.unique_id))
}

/// Writes the state record atomically: temp file, fsync, rename, fsync directory.
pub(super) fn persist(fs: &dyn StoreFs, paths: &DiskPaths, rec: &Record) -> Result<(), SinkError> {
    let bytes = state::encode(rec);
    fs.write_file(&paths.state_tmp, &bytes)
        .map_err(io_err(&paths.state_tmp, "write", 0))?;
    fs.sync_file(&paths.state_tmp)
        .map_err(io_err(&paths.state_tmp, "fsync", 0))?;
    fs.rename(&paths.state_tmp, &paths.state)
        .map_err(io_err(&paths.state, "rename state", 0))?;
    fs.sync_dir(&paths.dir)
        .map_err(io_err(&paths.dir, "fsync directory", 0))
}

/// The record after the in-progress copy of `rec` has become the committed replica: `point`
/// (as cycle 0) is its only recovery point, the previous generation's points are gone.
pub(super) fn committed_record(rec: &Record, point: &RecoveryPoint) -> Record {
    Record {
        disk: lifecycle::committed_after_initial(&rec.disk),
        pending: None,
        points: vec![Listed {
            point: RecoveryPoint {
                cycle: 0,
                ..point.clone()
            },
            undo_len: 0,
        }],
    }
}

/// Unix seconds now (receiver clock).
pub(super) fn now_unix() -> u64 {
    crate::clock::unix_secs()
}

pub(super) fn invalid(path: &Path, offset: u64, problem: impl Into<String>) -> SinkError {
    SinkError::InvalidState {
        path: path.to_path_buf(),
        offset,
        problem: problem.into(),
    }
}

/// Creates a log file afresh (never reusing an old file's bytes) with its header, durably:
/// data and name are synced before any state record names it.
pub(super) fn create_log(
    fs: &dyn StoreFs,
    dir: &Path,
    path: &Path,
    header: &[u8],
) -> Result<Arc<dyn DataFile>, SinkError> {
    fs.remove_file(path).map_err(io_err(path, "remove", 0))?;
    let f = fs
        .open_data(path, Some(0))
        .map_err(io_err(path, "create", 0))?;
    f.write_at(0, header)
        .map_err(io_err(path, "write header", 0))?;
    f.sync_data().map_err(io_err(path, "fdatasync", 0))?;
    fs.sync_dir(dir)
        .map_err(io_err(dir, "fsync directory", 0))?;
    Ok(f)
}

/// `NAME.hidx`, the receiver's resync index of the disk (layout in
/// [`crate::resync::index`]), on the store's filesystem so crash models see it too.
pub(super) struct IndexFile {
    fs: Arc<dyn StoreFs>,
    path: std::path::PathBuf,
    dir: std::path::PathBuf,
    /// The open file and whether it was created since the directory was last synced.
    file: std::sync::Mutex<Option<(Arc<dyn DataFile>, bool)>>,
}

impl IndexFile {
    pub(super) fn new(fs: Arc<dyn StoreFs>, paths: &DiskPaths) -> IndexFile {
        IndexFile {
            fs,
            path: paths.hidx.clone(),
            dir: paths.dir.clone(),
            file: std::sync::Mutex::new(None),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut (Arc<dyn DataFile>, bool)) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut g = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("index file lock poisoned"))?;
        if g.is_none() {
            let created = !self.fs.exists(&self.path)?;
            let size = if created { Some(0) } else { None };
            *g = Some((self.fs.open_data(&self.path, size)?, created));
        }
        match g.as_mut() {
            Some(h) => f(h),
            None => Err(std::io::Error::other("index file not open")),
        }
    }
}

impl crate::resync::index::IndexFile for IndexFile {
    fn size(&self) -> std::io::Result<Option<u64>> {
        let open = self.file.lock().map(|g| g.is_some()).unwrap_or(false);
        if !open && !self.fs.exists(&self.path)? {
            return Ok(None);
        }
        self.with(|(f, _)| f.size()).map(Some)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.with(|(f, _)| f.read_at(offset, buf))
    }
    /// Creates the file anew at `len` (sparse): a stale file left longer (a disk that was
    /// larger before, a crash while it grew) would otherwise keep its length, and an index
    /// whose file is not exactly its length is stale at every later open, so every resync
    /// would read the whole replica.
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut g = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("index file lock poisoned"))?;
        let created = match g.as_ref() {
            Some((_, created)) => *created,
            None => !self.fs.exists(&self.path)?,
        };
        *g = Some((self.fs.open_data(&self.path, Some(len))?, created));
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.with(|(f, _)| f.write_at(offset, data))
    }
    fn sync(&self) -> std::io::Result<()> {
        self.with(|(f, created)| {
            f.sync_data()?;
            if *created {
                self.fs.sync_dir(&self.dir)?;
                *created = false;
            }
            Ok(())
        })
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

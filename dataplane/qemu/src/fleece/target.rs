//! The temporary qcow2 image behind a view: the copy-before-write filter copies a block
//! there before the guest overwrites it, so the view can still read the old contents.
//!
//! Cost while a view lives: every first guest write to a block since the view was taken is
//! preceded by a read of the old block and a write of it into this image, and the image grows
//! by the blocks the guest overwrote. If the image cannot grow (its filesystem is full), the
//! filter fails the *guest's* write, which is why a switch checks first that the scratch
//! filesystem can hold the disks' full size ([`check_room`]).
//!
//! The image is created through QMP (`blockdev-create`), not with `qemu-img`, so it is made
//! by the same qemu, with the same permissions and mount namespace, that will write it.
//!
//! It is opened with `cache.no-flush=on`: it never outlives its view (a
//! crashed run's is deleted at the next start), so nothing written to it needs to reach the
//! disk. Without it, closing the image at teardown flushed every copied block (up to the
//! disk's size) to the disk before the file was deleted, and the guest's own writes waited
//! behind that flush: measured with a 1 GiB region written at random, a teardown of 0.80 s
//! (0.51 s of it the flush) during which the guest's writes took 1.9 ms at the median, against
//! 0.06 s and 40 µs with it (`bench/results/ANALYSIS.md`, session 11). The copy-before-write
//! wait itself is the same either way: it is the read of the old block from the disk.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::qmp::Qmp;

use super::error::FleeceError;
use super::names::ViewNames;
use super::wait::poll_until;

/// Bytes an unprivileged writer may still use on the filesystem of `dir` (statvfs
/// `f_bavail * f_frsize`).
pub fn free_bytes(dir: &Path) -> Result<u64, FleeceError> {
    let scratch = |source| FleeceError::Scratch {
        path: dir.to_path_buf(),
        source,
    };
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| scratch(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(scratch(std::io::Error::last_os_error()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The most the scratch image of a `size`-byte disk can take on its filesystem: every block
/// copied, plus qcow2's metadata: per 64 KiB cluster an L2 entry (8 bytes) and a refcount
/// (2 bytes), under `size / 4096` together, and the header, L1 and refcount tables (a few
/// clusters: 1 MiB). Checking for `size` alone left a view whose guest overwrote the whole
/// disk short of a few clusters, and the filter would then have failed the guest's write.
pub fn scratch_need(size: u64) -> u64 {
    size.saturating_add(size / 4096).saturating_add(1 << 20)
}

/// Fails with [`FleeceError::NoRoom`] unless `dir`'s filesystem has `need` bytes free.
pub fn check_room(dir: &Path, need: u64) -> Result<(), FleeceError> {
    let available = free_bytes(dir)?;
    if available < need {
        return Err(FleeceError::NoRoom {
            dir: dir.to_path_buf(),
            need,
            available,
        });
    }
    Ok(())
}

/// The cache options of the scratch image's nodes: flushes are skipped (see the top of this
/// file); writes go through the page cache, as by default.
fn scratch_cache() -> serde_json::Value {
    json!({"direct": false, "no-flush": true})
}

/// Creates the scratch image `path` of `size` bytes and opens it as node `names.target`.
/// On failure whatever was created is removed again.
pub(crate) fn create_target(
    qmp: &mut Qmp,
    names: &ViewNames,
    path: &Path,
    size: u64,
    limit: Duration,
) -> Result<(), FleeceError> {
    created_or_removed(qmp, names, path, |q| {
        create_steps(q, names, path, size, limit)
    })
}

/// Runs `steps`, which create a view's target at `path`; on failure removes whatever they
/// created, so no half-made target outlives the error (the scratch image and the copy's
/// file alike).
pub(crate) fn created_or_removed(
    qmp: &mut Qmp,
    names: &ViewNames,
    path: &Path,
    steps: impl FnOnce(&mut Qmp) -> Result<(), FleeceError>,
) -> Result<(), FleeceError> {
    let r = steps(qmp);
    if r.is_err() {
        let _ = remove_target(qmp, names, path);
    }
    r
}

fn create_steps(
    qmp: &mut Qmp,
    names: &ViewNames,
    path: &Path,
    size: u64,
    limit: Duration,
) -> Result<(), FleeceError> {
    create_file_node(qmp, names, path, 0, limit)?;
    let qcow2 = json!({"driver": "qcow2", "file": names.target_file, "size": size});
    run_create_job(qmp, &names.create_job, qcow2, path, limit)?;
    qmp.execute(
        "blockdev-add",
        Some(
            json!({"driver": "qcow2", "node-name": names.target, "file": names.target_file,
                    "cache": scratch_cache()}),
        ),
    )?;
    Ok(())
}

/// Creates file `path` of `size` bytes (sparse) and opens it as node `names.target_file`,
/// with the scratch image's cache options. qemu creates the file itself, so it owns it with
/// its own user and umask.
pub(crate) fn create_file_node(
    qmp: &mut Qmp,
    names: &ViewNames,
    path: &Path,
    size: u64,
    limit: Duration,
) -> Result<(), FleeceError> {
    let filename = path.to_string_lossy();
    let file = json!({"driver": "file", "filename": filename, "size": size});
    run_create_job(qmp, &names.create_job, file, path, limit)?;
    qmp.execute(
        "blockdev-add",
        Some(
            json!({"driver": "file", "node-name": names.target_file, "filename": filename,
                    "cache": scratch_cache()}),
        ),
    )?;
    Ok(())
}

/// Runs one `blockdev-create` job to its end and dismisses it.
fn run_create_job(
    qmp: &mut Qmp,
    job: &str,
    options: serde_json::Value,
    path: &Path,
    limit: Duration,
) -> Result<(), FleeceError> {
    qmp.execute(
        "blockdev-create",
        Some(json!({"job-id": job, "options": options})),
    )?;
    poll_until(qmp, &format!("job {job} concluding"), limit, |q| {
        Ok(q.jobs()?
            .iter()
            .any(|j| j.id == job && j.status == "concluded"))
    })?;
    let failed = qmp
        .jobs()?
        .into_iter()
        .find(|j| j.id == job)
        .and_then(|j| j.error);
    qmp.execute("job-dismiss", Some(json!({"id": job})))?;
    match failed {
        Some(detail) => Err(FleeceError::TargetCreate {
            path: path.to_path_buf(),
            detail,
        }),
        None => Ok(()),
    }
}

/// Closes the scratch image's nodes (those that exist) and deletes its file.
pub(crate) fn remove_target(
    qmp: &mut Qmp,
    names: &ViewNames,
    path: &Path,
) -> Result<(), FleeceError> {
    let nodes = qmp.named_block_nodes()?;
    for n in [&names.target, &names.target_file] {
        if nodes
            .iter()
            .any(|x| x.node_name.as_deref() == Some(n.as_str()))
        {
            super::view::del_node(qmp, n)?;
        }
    }
    remove_file(path)
}

/// Deletes a scratch file; one already gone is fine.
pub(crate) fn remove_file(path: &Path) -> Result<(), FleeceError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FleeceError::Scratch {
            path: PathBuf::from(path),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_without_room_for_the_disks_is_refused_as_transient() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        check_room(dir.path(), free / 2).unwrap();
        let e = check_room(dir.path(), u64::MAX).unwrap_err();
        assert!(
            matches!(e, FleeceError::NoRoom { need: u64::MAX, .. }),
            "{e}"
        );
        assert!(e.is_transient());
        let gone = check_room(&dir.path().join("missing"), 1).unwrap_err();
        assert!(matches!(gone, FleeceError::Scratch { .. }), "{gone}");
    }
}

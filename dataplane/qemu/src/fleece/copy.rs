//! A cycle's view as qemu's own copy of the dirty blocks (session 18): instead of a
//! `sync=none` fleecing view that lives while vdrep reads it over NBD, the switch's
//! transaction starts `blockdev-backup sync=bitmap` with the previous bitmap
//! (`bitmap-mode: never`, the bitmap is left as it is) into a sparse raw file of the disk's
//! size. qemu copies the dirty blocks at the instant, each block the guest overwrites
//! first copied before its write, as for a fleecing view; once the job ends, nothing
//! stands between the guest and its disk any more, and vdrep reads the copy (exported
//! read-only, with the previous bitmap for block status) at its own pace.
//!
//! Why: measured with `bench/src/qemu/drain_rig.py` (1 GiB of dirty 64 KiB blocks, 4 KiB
//! guest writes at queue depth 1, `bench/results/ANALYSIS.md` session 18), qemu's copy took
//! 0.89 s and 1.0 CPU-s of qemu-storage-daemon, against a view drained over NBD of
//! 1.6–2.0 s with 1.3–1.6 CPU-s of qemu-storage-daemon and 0.9 of the drain; 12–17 guest
//! writes inside it were slow, against 520–590, and the guest lost 0.88 s against 1.6–1.9 s.
//! The price: those few writes waited up to 0.27 s each (the guest's writes nearly stop
//! while qemu copies, where a drained view lets ~1,100 through at a p99 of 18–24 ms).
//! `blockdev-backup`'s `x-perf` (fewer workers, smaller chunks) traded that back for more
//! slow writes and a longer copy (`drain_rig_s18_backup.txt`); qemu's defaults are kept.
//!
//! Only a cycle's view can be a copy: it holds the dirty blocks alone (each 64 KiB
//! block-copy cluster touched by the bitmap, which is every digest piece a dirty extent
//! touches), so a reader of anything else would read zeros. The sender asks for a copy
//! only for a disk whose next step is a cycle ([`super::SwitchDisk::copy`]) and fences the
//! rest of the view off.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::qmp::{Qmp, QmpError};

use super::error::FleeceError;
use super::names::ViewNames;
use super::target::{create_file_node, created_or_removed};
use super::view::View;
use super::wait::POLL_INTERVAL;

/// The most a copy's file can take on its filesystem: every block of the disk copied (a
/// raw file has no metadata of its own).
pub fn copy_need(size: u64) -> u64 {
    size
}

/// Creates the copy's sparse raw file of `size` bytes and opens it as node
/// `names.target_file` (the job's target and, once copied, the export's node). On failure
/// whatever was created is removed again.
pub(crate) fn create_copy_target(
    qmp: &mut Qmp,
    names: &ViewNames,
    path: &Path,
    size: u64,
    limit: Duration,
) -> Result<(), FleeceError> {
    created_or_removed(qmp, names, path, |q| {
        create_file_node(q, names, path, size, limit)
    })
}

/// The copy job's transaction action (after the bitmap actions of the switch). The job is
/// neither finalized nor dismissed by itself ([`wait_copied`] does both): finalizing removes
/// its copy-before-write filter, which drains the disk, and a job finalizing itself does
/// that from whatever ran qemu's event loop. Inside a FUSE export's synchronous guest write
/// that drain waits for the write that runs it: qemu-storage-daemon 10.0 hung so in the
/// tests. Finalized from QMP, the drain runs between guest requests.
pub(crate) fn copy_action(v: &View, previous_bitmap: &str) -> Value {
    json!({"type": "blockdev-backup", "data": {
        "job-id": v.names.job,
        "device": v.node,
        "target": v.names.target_file,
        "sync": "bitmap",
        "bitmap": previous_bitmap,
        "bitmap-mode": "never",
        "filter-node-name": v.names.filter,
        "auto-finalize": false,
        "auto-dismiss": false,
    }})
}

/// Waits until the copy job of `v` has copied, finalizes it (its filter leaves the disk)
/// and dismisses it. A job that fails, or makes
/// no progress for `stall_limit`, is an error (transient: the next round takes a new view
/// from the same bitmap). A big cycle takes as long as qemu needs to copy it: only a stall
/// is bounded.
pub(crate) fn wait_copied(
    qmp: &mut Qmp,
    v: &View,
    stall_limit: Duration,
) -> Result<(), FleeceError> {
    let id = &v.names.job;
    let mut last = None;
    let mut still = Duration::ZERO;
    loop {
        let job = qmp.jobs()?.into_iter().find(|j| &j.id == id);
        let Some(job) = job else {
            return Err(FleeceError::CopyFailed {
                node: v.node.clone(),
                detail: format!("job {id} is gone before it ended"),
            });
        };
        if job.status == "pending" {
            qmp.execute("job-finalize", Some(json!({ "id": id })))?;
            continue;
        }
        if job.status == "concluded" {
            qmp.execute("job-dismiss", Some(json!({ "id": id })))?;
            return match job.error {
                Some(detail) => Err(FleeceError::CopyFailed {
                    node: v.node.clone(),
                    detail,
                }),
                None => Ok(()),
            };
        }
        if last == Some(job.current_progress) {
            still += POLL_INTERVAL;
            if still >= stall_limit {
                return Err(QmpError::WaitExpired {
                    path: qmp.path().to_path_buf(),
                    what: format!(
                        "copy job {id} moving on ({} of {} bytes)",
                        job.current_progress, job.total_progress
                    ),
                    waited_ms: stall_limit.as_millis() as u64,
                }
                .into());
            }
        } else {
            still = Duration::ZERO;
            last = Some(job.current_progress);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Exports the copy read-only, with the previous bitmap of the disk for block status (qemu
/// takes a bitmap of another node when its size matches the export's).
pub(crate) fn export_copy(
    qmp: &mut Qmp,
    v: &View,
    previous_bitmap: &str,
) -> Result<(), FleeceError> {
    qmp.execute(
        "block-export-add",
        Some(json!({
            "type": "nbd",
            "id": v.names.export,
            "node-name": v.names.target_file,
            "name": v.names.export,
            "writable": false,
            "bitmaps": [{"node": v.node, "name": previous_bitmap}],
        })),
    )?;
    Ok(())
}

//! Resynchronisation on an operator's request: the disk's change history restarts (a fresh
//! active log, no pending cycles, no resync mark) and the disk is copied in full as a new
//! copy generation; the receiver keeps the old replica until the new copy commits, then
//! delta cycles continue from cycle 1.
//!
//! A block-checksum comparison that sends only differing blocks is a later optimisation; the
//! full copy already skips unallocated and zero ranges.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::info;
use vdrep_proto::Guid;

use super::disk::{copy_initial, open_disk, Opened, Shared};
use super::protect::{ensure_hash_table, Protected};
use super::{ControlStream, SendError};

/// Resynchronises every disk of the VM whose resync an operator requested.
pub async fn resync_requested(
    conn: &quinn::Connection,
    ctrl: &mut ControlStream,
    disks: &Arc<Vec<Arc<Mutex<Protected>>>>,
    opened: &mut [Option<Opened>],
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    for (d, slot) in disks.iter().zip(opened.iter_mut()) {
        let job = d
            .lock()
            .map(|g| g.job.clone())
            .map_err(|_| SendError::Internal("a lock was poisoned".into()))?;
        if !sh.board.take_resync(&job.vm, &job.name) {
            continue;
        }
        info!(vm = %job.vm, disk = %job.name, "resync: restarting change tracking and copying the disk");
        let d2 = d.clone();
        tokio::task::spawn_blocking(move || restart_tracking(&d2))
            .await
            .map_err(|e| SendError::Internal(format!("resync task: {e}")))?
            .map_err(|e| SendError::Internal(format!("{}/{}: resync: {e}", job.vm, job.name)))?;
        sh.board.copy_started(&job.vm, &job.name, true);
        job.progress.reset_for_copy(&sh.stats);
        let o = open_disk(ctrl, &job, true).await?;
        copy_initial(conn, ctrl, &job, &o, sh).await?;
        sh.board.committed(&job.vm, &job.name, 0);
        if let Ok(mut g) = d.lock() {
            g.committed_cycle = Some(0);
            g.fresh = false;
        }
        ensure_hash_table(d).await;
        *slot = Some(o);
        info!(vm = %job.vm, disk = %job.name, "resync committed; delta cycles continue");
    }
    Ok(())
}

/// Under the log lock: drops the closed logs and their digests, the active log, the
/// block-hash table and the resync mark, and starts a new active log (writes from now on are the next cycle's).
fn restart_tracking(d: &Mutex<Protected>) -> Result<(), String> {
    let g = d.lock().map_err(|_| "lock poisoned".to_string())?;
    let t = &g.tracker;
    let locked = t.lock().map_err(|e| e.to_string())?;
    for (c, p) in t.pending().map_err(|e| e.to_string())? {
        let _ = std::fs::remove_file(t.paths().digest(c));
        remove(&p)?;
    }
    remove(&t.paths().active)?;
    remove(&t.paths().resync)?;
    // The block-hash table may miss writes of the dropped logs: it is recomputed.
    remove(&t.paths().hashes)?;
    locked
        .start(Guid::NIL, SystemTime::now())
        .map_err(|e| e.to_string())?;
    t.set_shipped_id(Guid::NIL).map_err(|e| e.to_string())?;
    Ok(())
}

fn remove(p: &std::path::Path) -> Result<(), String> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

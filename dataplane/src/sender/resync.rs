//! Resynchronisation on an operator's request: the disk's change history restarts (a fresh
//! active log, no pending cycles, no resync mark) and the disk is copied in full as a new
//! copy generation; the receiver keeps the old replica until the new copy commits, then
//! delta cycles continue from cycle 1.
//!
//! The copy runs on a new connection (the receiver opens a disk once per connection), so
//! the protection loop ends its attempt with [`SendError::Restart`] and the next attempt
//! opens the disk with `full_copy`. A marker beside the logs (`D.hrl.fullcopy`) is written
//! before the history is dropped and removed once the copy commits: a sender that crashes
//! in between copies the disk in full when it starts again, never ships cycles over the gap.
//!
//! A block-checksum comparison that sends only differing blocks is a later optimisation; the
//! full copy already skips unallocated and zero ranges.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::info;
use vdrep_proto::Guid;

use super::disk::Shared;
use super::protect::Protected;
use super::SendError;
use crate::tracking::Tracker;

/// `D.hrl.fullcopy`: present from a resync's start until its copy commits.
pub fn full_copy_marker(t: &Tracker) -> PathBuf {
    t.paths().resync.with_extension("fullcopy")
}

/// Restarts the history of every disk of the VM whose resync an operator requested and
/// ends the attempt so they are copied anew; `Ok` when none was requested.
pub async fn resync_requested(
    disks: &Arc<Vec<Arc<Mutex<Protected>>>>,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    let mut restarted = Vec::new();
    for d in disks.iter() {
        let job = d
            .lock()
            .map(|g| g.job.clone())
            .map_err(|_| SendError::Internal("a lock was poisoned".into()))?;
        if !sh.board.take_resync(&job.vm, &job.name) {
            continue;
        }
        info!(vm = %job.vm, disk = %job.name, "resync: restarting change tracking; the disk is copied anew");
        let d2 = d.clone();
        tokio::task::spawn_blocking(move || restart_tracking(&d2))
            .await
            .map_err(|e| SendError::Internal(format!("resync task: {e}")))?
            .map_err(|e| SendError::Internal(format!("{}/{}: resync: {e}", job.vm, job.name)))?;
        sh.board.copy_started(&job.vm, &job.name, true);
        job.progress.reset_for_copy(&sh.stats);
        restarted.push(format!("{}/{}", job.vm, job.name));
    }
    if restarted.is_empty() {
        Ok(())
    } else {
        Err(SendError::Restart(format!(
            "resync of {}",
            restarted.join(", ")
        )))
    }
}

/// Under the log lock: writes the full-copy marker, drops the closed logs and their
/// digests, the active log, the block-hash table (it may miss the dropped logs' writes) and
/// the resync mark, and starts a new active log (writes from now on are the next cycle's).
fn restart_tracking(d: &Mutex<Protected>) -> Result<(), String> {
    let mut g = d.lock().map_err(|_| "lock poisoned".to_string())?;
    let t = g.tracker.clone();
    let locked = t.lock().map_err(|e| e.to_string())?;
    let marker = full_copy_marker(&t);
    write_durably(&marker, b"resync requested: the disk is copied in full\n")?;
    for (c, p) in t.pending().map_err(|e| e.to_string())? {
        let _ = std::fs::remove_file(t.paths().digest(c));
        remove(&p)?;
    }
    remove(&t.paths().active)?;
    remove(&t.paths().hashes)?;
    remove(&t.paths().resync)?;
    locked
        .start(Guid::NIL, SystemTime::now())
        .map_err(|e| e.to_string())?;
    t.set_shipped_id(Guid::NIL).map_err(|e| e.to_string())?;
    g.fresh = true;
    Ok(())
}

fn write_durably(p: &std::path::Path, text: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
    f.write_all(text)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if let Some(dir) = p.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn remove(p: &std::path::Path) -> Result<(), String> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

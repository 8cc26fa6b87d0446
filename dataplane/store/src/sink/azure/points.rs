//! Recovery points as snapshots (listing, read-only access, download) and the lease's
//! renewal: the parts of the Azure disk that work on a container and a blob name alone.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vdrep_proto::Guid;

use super::blob::{Container, PageRuleError, MAX_PUT_PAGE};
use super::rest::RestError;
use super::rest_err;
use super::state;
use crate::layout::replica_file_size;
use crate::sink::{DiskKey, DiskState, RecoveryPoint, SinkError};

/// A recovery point and the snapshot that holds it.
#[derive(Debug, Clone)]
pub(super) struct Snap {
    pub(super) point: RecoveryPoint,
    pub(super) id: String,
    pub(super) replica: Guid,
}

fn unhex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = s
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

/// The recovery-point snapshots of the blob (any generation), oldest first, one per
/// (replica, cycle): a retried snapshot request may have made two.
pub(super) fn list_snaps(c: &Container, blob: &str) -> Result<Vec<Snap>, SinkError> {
    let items = c.list(blob, true).map_err(rest_err)?;
    let mut out: Vec<Snap> = Vec::new();
    for i in items {
        if i.name != blob {
            continue;
        }
        let (Some(id), Some(cycle)) = (
            i.snapshot.clone(),
            i.metadata.get("vdrepcycle").and_then(|v| v.parse().ok()),
        ) else {
            continue;
        };
        let m = |k: &str| i.metadata.get(k).cloned().unwrap_or_default();
        let replica = m("vdrepreplica").parse().unwrap_or(Guid::NIL);
        let point = RecoveryPoint {
            cycle,
            created_unix: m("vdrepcreated").parse().unwrap_or(0),
            bytes: m("vdrepbytes").parse().unwrap_or(0),
            digest: unhex32(&m("vdrepdigest")),
        };
        // Snapshot ids are ISO timestamps: lexical order is time order.
        out.retain(|s| !(s.replica == replica && s.point.cycle == cycle && s.id < id));
        if !out
            .iter()
            .any(|s| s.replica == replica && s.point.cycle == cycle)
        {
            out.push(Snap { point, id, replica });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The snapshots of the committed generation up to the committed cycle.
pub(super) fn committed_snaps(
    c: &Container,
    blob: &str,
    st: &DiskState,
) -> Result<Vec<Snap>, SinkError> {
    if !st.initial_committed {
        return Ok(Vec::new());
    }
    Ok(list_snaps(c, blob)?
        .into_iter()
        .filter(|s| s.replica == st.replica_id && s.point.cycle <= st.committed_cycle)
        .collect())
}

/// Read-only access to a disk's recovery points without opening it (no lease): what
/// failover and `points` use, so they never disturb the replicating receiver.
pub fn read_only_points(
    c: &Container,
    key: &DiskKey,
) -> Result<Vec<(RecoveryPoint, String, u64)>, SinkError> {
    let blob = format!("{}/{}.vhd", key.vm, key.disk);
    let sblob = format!("{}/{}.state", key.vm, key.disk);
    let Some((bytes, _)) = c.get_blob(&sblob).map_err(rest_err)? else {
        return Err(SinkError::InvalidState {
            path: c.url(&sblob).into(),
            offset: 0,
            problem: "no such replica (state blob missing)".into(),
        });
    };
    let st = state::decode(&bytes).map_err(|problem| SinkError::CorruptState {
        path: c.url(&sblob).into(),
        offset: 0,
        problem,
    })?;
    let size = replica_file_size(st.virtual_size);
    Ok(committed_snaps(c, &blob, &st)?
        .into_iter()
        .map(|s| (s.point, s.id, size))
        .collect())
}

/// Downloads snapshot `snap` of `blob` into a local file at `out` (written beside it, then
/// renamed over it, like `qemu-img convert`), reading only the ranges Get Page Ranges
/// reports on the snapshot; the rest stays sparse zeros. Returns the bytes downloaded.
pub fn download_snapshot(
    c: &Container,
    blob: &str,
    snap: &str,
    size: u64,
    out: &Path,
) -> Result<u64, SinkError> {
    let tmp = out.with_extension("vhd.download");
    let io = |op, e| SinkError::io(out, op, 0, e);
    let f = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    f.set_len(size).map_err(|e| io("truncate", e))?;
    let mut done = 0u64;
    for r in c.page_ranges(blob, Some(snap)).map_err(rest_err)?.iter() {
        let mut at = r.start;
        let end = r.end.min(size);
        while at < end {
            let n = (end - at).min(MAX_PUT_PAGE as u64);
            let data = c.get_range(blob, Some(snap), at, n).map_err(rest_err)?;
            std::os::unix::fs::FileExt::write_all_at(&f, &data, at).map_err(|e| io("write", e))?;
            done += data.len() as u64;
            at += n;
        }
    }
    let mut f = f;
    f.flush().map_err(|e| io("flush", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    std::fs::rename(&tmp, out).map_err(|e| io("rename", e))?;
    Ok(done)
}

/// Takes the lease again if it merely *expired* (the service was unreachable for longer than
/// the lease); a broken lease (an operator's act) or one held by another receiver is not
/// taken over.
pub(super) fn reacquire_if_expired(
    c: &Container,
    blob: &str,
    lease: &str,
    secs: u32,
) -> Result<(), RestError> {
    let state = c.lease_state(blob)?;
    if state != "expired" {
        return Err(RestError {
            url: c.url(blob),
            op: "acquire lease",
            offset: 0,
            status: Some(409),
            code: "LeaseLost".into(),
            message: format!("lease state is {state:?}"),
            recoverable: true,
        });
    }
    tracing::warn!(blob, "the lease had expired; re-acquiring it");
    c.acquire_lease(blob, lease, secs)
}

/// [`check_put_page`] ran before: the client cannot refuse the page again.
pub(super) fn unreachable_rule(r: PageRuleError) -> RestError {
    RestError {
        url: String::new(),
        op: "put page",
        offset: r.offset,
        status: None,
        code: "PageRule".into(),
        message: r.problem.into(),
        recoverable: false,
    }
}

pub(super) fn renew_loop(
    c: &Container,
    blob: &str,
    lease: &str,
    secs: u32,
    stop: &(Mutex<bool>, Condvar),
    lost: &AtomicBool,
) {
    let period = Duration::from_secs((secs / 3).max(1) as u64);
    let mut stopped = stop.0.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (g, _) = stop
            .1
            .wait_timeout(stopped, period)
            .unwrap_or_else(|p| p.into_inner());
        stopped = g;
        if *stopped {
            let _ = c.release_lease(blob, lease);
            return;
        }
        let renewed = match c.renew_lease(blob, lease) {
            Err(e) if e.status == Some(409) || e.status == Some(412) => {
                reacquire_if_expired(c, blob, lease, secs).map_err(|_| e)
            }
            r => r,
        };
        match renewed {
            Ok(()) => {}
            Err(e) if e.status.is_some() && !e.recoverable => {
                tracing::warn!(blob, code = %e.code, "lost the lease on the blob");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::warn!(blob, error = %e.message, "lease renewal failed; retrying"),
        }
    }
}

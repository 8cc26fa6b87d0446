//! Failing disks (issue 16, finding 4): the local store on the durability model with syncs
//! that fail on demand ([`SimFs::fail_syncs`], which drops the pages a failed sync could not
//! write and lets the next sync succeed without them, as Linux does). After a failed
//! fdatasync nothing written since the last good sync may count as durable: the handle
//! refuses further progress with a recoverable error naming the failed sync, a reopened disk
//! resumes from the last good sync, the copy then completes, and the replica never commits a
//! wrong byte.

use std::path::Path;
use std::sync::Arc;

use vdrep::receiver::DiskSession;
use vdrep::resync::index::Index;
use vdrep::sink::fault::{Crash, SimFs};
use vdrep::sink::local::LocalStore;
use vdrep::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError};
use vdrep_proto::{Guid, RangeSet};

const SIZE: u64 = 64 << 10;
const CHUNK: u64 = 16 << 10;
const SRC: Guid = Guid([5; 16]);

fn key() -> DiskKey {
    DiskKey::new("vm", "d").unwrap()
}
fn open(fs: &SimFs) -> Arc<dyn ReplicaDisk> {
    LocalStore::open_with_fs(Path::new("/store"), Arc::new(fs.clone()))
        .unwrap()
        .open_disk(&key(), SIZE, SRC)
        .unwrap()
}
fn chunk(i: u64) -> Vec<u8> {
    (0..CHUNK)
        .map(|b| (i as u8 + 1) ^ (b / 512) as u8)
        .collect()
}
fn whole() -> Vec<u8> {
    (0..SIZE / CHUNK).flat_map(chunk).collect()
}
fn upto(n: u64) -> RangeSet {
    RangeSet::from_range(0, n * CHUNK)
}
fn point0() -> RecoveryPoint {
    RecoveryPoint {
        cycle: 0,
        created_unix: 1_700_000_000,
        bytes: SIZE,
        digest: [0; 32],
    }
}

fn assert_sync_lost(e: &SinkError) {
    assert!(
        matches!(e, SinkError::SyncLost { .. }) && e.is_transient(),
        "want a recoverable SyncLost, got {e}"
    );
    let m = e.to_string();
    assert!(
        m.contains("fdatasync") && m.contains("Input/output error"),
        "{m}"
    );
    assert!(m.contains("resumes from the last good sync"), "{m}");
}

#[test]
fn after_a_failed_fdatasync_nothing_later_counts_and_a_reopened_disk_resumes_from_the_last_good_sync(
) {
    let fs = SimFs::new();
    let d = open(&fs);
    d.write(0, &chunk(0)).unwrap();
    d.checkpoint(&upto(1)).unwrap();
    d.write(CHUNK, &chunk(1)).unwrap();
    fs.fail_syncs(1);
    let e = d.checkpoint(&upto(2)).unwrap_err();
    assert!(
        matches!(
            e,
            SinkError::Io {
                op: "fdatasync",
                ..
            }
        ) && e.is_transient(),
        "{e}"
    );
    // A retried sync now "succeeds" (the failed pages are simply gone): it must not count.
    assert_sync_lost(&d.checkpoint(&upto(2)).unwrap_err());
    assert_sync_lost(&d.write(2 * CHUNK, &chunk(2)).unwrap_err());
    assert_sync_lost(&d.commit_initial(&point0()).unwrap_err());
    assert_eq!(d.state().progress, upto(1));
    drop(d);

    // Reopened: the last good sync's progress; the copy resumes and completes.
    let d = open(&fs);
    assert_eq!(d.state().progress, upto(1));
    for i in 1..SIZE / CHUNK {
        d.write(i * CHUNK, &chunk(i)).unwrap();
    }
    d.checkpoint(&upto(SIZE / CHUNK)).unwrap();
    d.commit_initial(&point0()).unwrap();
    assert_eq!(d.read_committed(0, SIZE as usize).unwrap(), whole());
    drop(d);
    fs.crash(Crash::DropVolatile);
    assert_eq!(
        open(&fs).read_committed(0, SIZE as usize).unwrap(),
        whole(),
        "the committed replica survives a power cut byte for byte"
    );
}

fn session(r: Arc<dyn ReplicaDisk>) -> Arc<DiskSession> {
    let st = r.state();
    let fresh = st.initial_in_progress && st.progress.is_empty();
    let index = Index::open(r.resync_index(), SIZE, st.generation, fresh);
    Arc::new(DiskSession::new(r, st.generation, SIZE, st.progress, index))
}

#[tokio::test]
async fn a_receiver_session_ends_with_a_recoverable_error_and_the_next_resumes_from_the_last_good_sync(
) {
    let fs = SimFs::new();
    let s = session(open(&fs));
    s.apply_write(0, CHUNK, Some(&chunk(0))).unwrap();
    s.checkpoint(true).await.unwrap();
    s.apply_write(CHUNK, CHUNK, Some(&chunk(1))).unwrap();
    s.apply_write(2 * CHUNK, CHUNK, Some(&chunk(2))).unwrap();
    fs.fail_syncs(1);
    let e = s.checkpoint(false).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    // The periodic checkpoint tries again; later writes and the commit are refused too.
    assert_sync_lost(&s.checkpoint(false).await.unwrap_err());
    assert_sync_lost(
        &s.apply_write(3 * CHUNK, CHUNK, Some(&chunk(3)))
            .unwrap_err(),
    );
    assert_sync_lost(&s.commit_initial().await.unwrap_err());
    assert!(
        s.close().await.is_err(),
        "the session's last checkpoint is refused"
    );
    drop(s);

    // The sender's next attempt opens the disk again: it is told the last good sync's
    // progress and sends the rest.
    let r = open(&fs);
    assert_eq!(r.state().progress, upto(1));
    let s = session(r.clone());
    for i in 1..SIZE / CHUNK {
        s.apply_write(i * CHUNK, CHUNK, Some(&chunk(i))).unwrap();
    }
    s.commit_initial().await.unwrap();
    assert_eq!(r.read_committed(0, SIZE as usize).unwrap(), whole());
}

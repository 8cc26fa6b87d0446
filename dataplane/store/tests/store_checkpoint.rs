//! A checkpoint's fdatasync does not stop the disk's writes (issue 21): the local store
//! syncs the working image without its lock, and makes its new state record durable while
//! the writes go on (`sink/local/locks.rs`), holding off only other changes of the record.
//! The durability model ([`SimFs`]) holds a sync on demand, so each test writes while a
//! checkpoint is inside its fdatasync or its record's fsync and then checks what a crash
//! keeps.

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use vdrep_proto::{Guid, RangeSet};
use vdrep_store::sink::fault::{Crash, SimFs, SyncHold};
use vdrep_store::sink::local::LocalStore;
use vdrep_store::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore};

const SIZE: u64 = 1 << 20;
const PART: u64 = 64 << 10;
const SRC: Guid = Guid([3; 16]);
/// Generous: the machine running the tests may be loaded. A write that waits for the held
/// sync never finishes at all, so this bounds only a failing run.
const WAIT: Duration = Duration::from_secs(20);

fn key() -> DiskKey {
    DiskKey::new("vm", "d").unwrap()
}
fn store(fs: &SimFs) -> LocalStore {
    LocalStore::open_with_fs(Path::new("/store"), Arc::new(fs.clone())).expect("store opens")
}
fn open(fs: &SimFs) -> Arc<dyn ReplicaDisk> {
    store(fs).open_disk(&key(), SIZE, SRC).expect("disk opens")
}
fn bytes(v: u8) -> Vec<u8> {
    (0..PART as usize).map(|i| v ^ (i / 512) as u8).collect()
}
fn point(cycle: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: 1_700_000_000 + cycle,
        bytes: SIZE,
        digest: [0; 32],
    }
}

/// Closes `d`, cuts the power (what was not made durable is lost) and opens the disk again.
fn power_cut(fs: &SimFs, d: Arc<dyn ReplicaDisk>) -> Arc<dyn ReplicaDisk> {
    drop(d);
    fs.crash(Crash::DropVolatile);
    open(fs)
}

/// Starts `checkpoint(durable)` on a thread and waits until its sync is held.
fn checkpoint_held(
    d: &Arc<dyn ReplicaDisk>,
    hold: &SyncHold,
    durable: RangeSet,
) -> thread::JoinHandle<Result<(), vdrep_store::sink::SinkError>> {
    let d = d.clone();
    let h = thread::spawn(move || d.checkpoint(&durable));
    assert!(
        hold.wait_entered(WAIT),
        "the checkpoint never reached its fdatasync"
    );
    h
}

/// Releases `hold` and lets the checkpoint `cp` of `[0, PART)` finish: its claim is
/// published, and after a power cut the disk still claims it and holds `bytes(1)` there.
fn finish_then_power_cut(
    fs: &SimFs,
    d: Arc<dyn ReplicaDisk>,
    hold: SyncHold,
    cp: thread::JoinHandle<Result<(), vdrep_store::sink::SinkError>>,
) {
    hold.release();
    cp.join().unwrap().expect("the checkpoint succeeds");
    assert_eq!(d.state().progress, RangeSet::from_range(0, PART));
    let d = power_cut(fs, d);
    assert_eq!(d.state().progress, RangeSet::from_range(0, PART));
    assert_eq!(&d.read(0, PART as usize).unwrap()[..], &bytes(1)[..]);
}

/// Writes `data` at `off` on a thread; true if it finished while `hold` still held the
/// checkpoint's sync. The hold is released either way, so a failing run does not hang.
fn write_during(d: &Arc<dyn ReplicaDisk>, hold: &SyncHold, off: u64, data: Vec<u8>) -> bool {
    let (tx, rx) = mpsc::channel();
    let d = d.clone();
    thread::spawn(move || {
        let r = d.write(off, &data);
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(WAIT);
    let during = hold.is_waiting();
    if r.is_err() {
        hold.release();
        return false;
    }
    r.unwrap().expect("the write succeeds");
    during
}

#[test]
fn a_copy_write_proceeds_while_a_checkpoint_syncs_and_only_the_snapshot_is_claimed() {
    let fs = SimFs::new();
    let paths = store(&fs).paths(&key());
    let d = open(&fs);
    d.write(0, &bytes(1)).unwrap();
    let hold = fs.hold_next_sync(&paths.partial).unwrap();
    let cp = checkpoint_held(&d, &hold, RangeSet::from_range(0, PART));
    assert!(
        write_during(&d, &hold, PART, bytes(2)),
        "a write waited for the checkpoint's fdatasync"
    );
    // Reads go on as well.
    assert_eq!(&d.read(0, PART as usize).unwrap()[..], &bytes(1)[..]);
    assert!(
        !cp.is_finished(),
        "the checkpoint did not wait for its sync"
    );
    // A power cut after it keeps the claim and its bytes; the write made during the sync
    // was never claimed.
    finish_then_power_cut(&fs, d, hold, cp);
}

#[test]
fn a_copy_write_proceeds_while_a_checkpoint_makes_its_record_durable() {
    let fs = SimFs::new();
    let paths = store(&fs).paths(&key());
    let d = open(&fs);
    d.write(0, &bytes(1)).unwrap();
    let hold = fs.hold_next_file_sync(&paths.state_tmp);
    let cp = checkpoint_held(&d, &hold, RangeSet::from_range(0, PART));
    assert!(
        write_during(&d, &hold, PART, bytes(2)),
        "a write waited for the checkpoint's state record to become durable"
    );
    // The new progress is published only once its record is durable.
    assert_eq!(d.state().progress, RangeSet::new());
    finish_then_power_cut(&fs, d, hold, cp);
}

#[test]
fn a_commit_waits_for_a_checkpoint_persisting_its_record_and_is_not_undone_by_it() {
    let fs = SimFs::new();
    let paths = store(&fs).paths(&key());
    let d = open(&fs);
    d.write(0, &bytes(1)).unwrap();
    d.write(PART, &bytes(2)).unwrap();
    // The checkpoint that claims the whole disk, held at its record's fsync: the commit,
    // which needs that claim, must see it published, and the checkpoint must not publish
    // its (older) record over the commit's.
    let hold = fs.hold_next_file_sync(&paths.state_tmp);
    let cp = checkpoint_held(&d, &hold, RangeSet::from_range(0, SIZE));
    let commit = {
        let d = d.clone();
        thread::spawn(move || d.commit_initial(&point(0)))
    };
    thread::sleep(Duration::from_millis(200));
    assert!(
        !commit.is_finished(),
        "a commit ran while a checkpoint was persisting its record"
    );
    hold.release();
    cp.join().unwrap().expect("the checkpoint succeeds");
    commit.join().unwrap().expect("the commit succeeds");
    let st = d.state();
    assert!(!st.initial_in_progress, "the checkpoint undid the commit");
    let d = power_cut(&fs, d);
    assert!(!d.state().initial_in_progress);
    assert_eq!(
        &d.read_committed(0, 2 * PART as usize).unwrap()[..],
        &[bytes(1), bytes(2)].concat()[..]
    );
}

#[test]
fn a_power_cut_during_the_unlocked_sync_claims_nothing_and_keeps_the_copy_resumable() {
    let fs = SimFs::new();
    let paths = store(&fs).paths(&key());
    let d = open(&fs);
    d.write(0, &bytes(1)).unwrap();
    d.checkpoint(&RangeSet::from_range(0, PART)).unwrap();
    d.write(PART, &bytes(2)).unwrap();
    let hold = fs.hold_next_sync(&paths.partial).unwrap();
    let cp = checkpoint_held(&d, &hold, RangeSet::from_range(0, 2 * PART));
    assert!(write_during(&d, &hold, 2 * PART, bytes(3)));
    fs.crash(Crash::DropVolatile);
    hold.release();
    assert!(
        cp.join().unwrap().is_err(),
        "a sync cut by the crash must not record progress"
    );
    drop(d);
    let d = open(&fs);
    assert_eq!(d.state().progress, RangeSet::from_range(0, PART));
    assert_eq!(&d.read(0, PART as usize).unwrap()[..], &bytes(1)[..]);
}

#[test]
fn a_cycle_write_proceeds_while_a_checkpoint_syncs_the_replica_and_the_point_survives_a_crash() {
    let fs = SimFs::new();
    let paths = store(&fs).paths(&key());
    let d = open(&fs);
    d.write(0, &bytes(1)).unwrap();
    d.write(PART, &bytes(2)).unwrap();
    d.checkpoint(&RangeSet::from_range(0, SIZE)).unwrap();
    d.commit_initial(&point(0)).unwrap();
    assert_eq!(d.begin_cycle(1).unwrap(), RangeSet::new());
    d.write(0, &bytes(11)).unwrap();
    // The checkpoint syncs the undo log (not held), records its length, writes the buffer
    // into the replica and syncs the replica: that sync is held.
    let hold = fs.hold_next_sync(&paths.vhd).unwrap();
    let cp = checkpoint_held(&d, &hold, RangeSet::from_range(0, PART));
    // This write saves its pre-image into the undo log and is buffered meanwhile.
    assert!(
        write_during(&d, &hold, PART, bytes(12)),
        "a cycle write waited for the checkpoint's fdatasync"
    );
    assert_eq!(&d.read(PART, PART as usize).unwrap()[..], &bytes(12)[..]);
    fs.crash(Crash::DropVolatile);
    hold.release();
    assert!(cp.join().unwrap().is_err());
    drop(d);

    // Point 0 is exact whatever reached the replica; the cycle is open with nothing claimed.
    let d = open(&fs);
    assert_eq!(d.state().open_cycle, Some(1));
    assert_eq!(d.state().progress, RangeSet::new());
    assert_eq!(
        &d.read_point(0, 0, PART as usize).unwrap()[..],
        &bytes(1)[..]
    );
    assert_eq!(
        &d.read_point(0, PART, PART as usize).unwrap()[..],
        &bytes(2)[..]
    );
    // The sender resends what is not claimed, and the cycle commits.
    assert_eq!(d.begin_cycle(1).unwrap(), RangeSet::new());
    d.write(0, &bytes(11)).unwrap();
    d.write(PART, &bytes(12)).unwrap();
    d.checkpoint(&RangeSet::from_range(0, 2 * PART)).unwrap();
    d.commit_cycle(&point(1)).unwrap();
    assert_eq!(
        &d.read_committed(0, 2 * PART as usize).unwrap()[..],
        &[bytes(11), bytes(12)].concat()[..]
    );
    assert_eq!(
        &d.read_point(0, 0, 2 * PART as usize).unwrap()[..],
        &[bytes(1), bytes(2)].concat()[..]
    );
}

#[test]
fn a_held_cycle_checkpoint_records_its_progress_after_the_sync() {
    let fs = SimFs::new();
    let paths = store(&fs).paths(&key());
    let d = open(&fs);
    d.write(0, &bytes(1)).unwrap();
    d.checkpoint(&RangeSet::from_range(0, SIZE)).unwrap();
    d.commit_initial(&point(0)).unwrap();
    d.begin_cycle(1).unwrap();
    d.write(0, &bytes(11)).unwrap();
    let hold = fs.hold_next_sync(&paths.vhd).unwrap();
    let cp = checkpoint_held(&d, &hold, RangeSet::from_range(0, PART));
    assert!(write_during(&d, &hold, PART, bytes(12)));
    assert_eq!(
        d.state().progress,
        RangeSet::new(),
        "progress is recorded only after the sync"
    );
    hold.release();
    cp.join().unwrap().unwrap();
    assert_eq!(d.state().progress, RangeSet::from_range(0, PART));
    let d = power_cut(&fs, d);
    assert_eq!(d.state().progress, RangeSet::from_range(0, PART));
    assert_eq!(&d.read(0, PART as usize).unwrap()[..], &bytes(11)[..]);
    assert_eq!(
        &d.read_point(0, PART, PART as usize).unwrap()[..],
        &vec![0u8; PART as usize][..],
        "point 0 never held data there"
    );
}

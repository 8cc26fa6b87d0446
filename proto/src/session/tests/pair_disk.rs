//! A whole disk through the sender's per-disk session ([`SenderDisk`]) and the receiver
//! session, in memory: the initial copy interrupted and resumed from its progress, a delta
//! cycle, and a resync (the hash exchange down to pages, the data, the root) — every
//! request made by the disk session and every answer checked by it.

use super::model::toy_hash;
use super::pair::{source, Opened, Pair};
use crate::session::receiver::Report;
use crate::session::sender::{DiskEvent, DiskState, Resume, SenderDisk, SessionError};
use crate::wire::{Control, ErrorClass, RESYNC_FANOUT};
use crate::Guid;

const SIZE: u64 = 1 << 20;

/// Sends the disk session's request over the pair and feeds it the checked answer.
fn call(p: &mut Pair, d: &mut SenderDisk, msg: Control) -> Result<DiskEvent, SessionError> {
    let answer = p.call(msg)?;
    d.handle_answer(answer)
}

/// Opens the disk on the pair's current connection.
fn open(p: &mut Pair) -> (SenderDisk, Opened, Resume) {
    let version = p.tx.version().unwrap();
    let mut d = SenderDisk::new("vm1", "os.vhdx", SIZE, Guid([7; 16]), version);
    let req = p.tx.next_req();
    let msg = d.open(req, false).unwrap();
    let DiskEvent::Opened { disk, resume } = call(p, &mut d, msg).unwrap() else {
        panic!("not opened")
    };
    let o = Opened {
        handle: disk.handle,
        generation: disk.generation,
        initial_committed: disk.initial_committed,
        committed_cycle: disk.committed_cycle,
        known_empty: disk.known_empty,
        progress: resume.done.clone(),
    };
    (d, o, resume)
}

/// What of `[0, SIZE)` `resume` leaves to send.
fn remaining(resume: &Resume) -> Vec<(u64, u64)> {
    super::pair::rest(&resume.done, SIZE)
}

fn begin(p: &mut Pair, d: &mut SenderDisk, cycle: u64) -> Resume {
    let req = p.tx.next_req();
    let msg = d.begin_cycle(req, cycle).unwrap();
    match call(p, d, msg).unwrap() {
        DiskEvent::CycleOpened { cycle: c, resume } if c == cycle => resume,
        other => panic!("{other:?}"),
    }
}

fn commit(p: &mut Pair, d: &mut SenderDisk, cycle: u64) {
    let req = p.tx.next_req();
    let msg = d.commit_cycle(req, 1, [0; 32], 0).unwrap();
    assert_eq!(
        call(p, d, msg).unwrap(),
        DiskEvent::CycleCommitted { cycle }
    );
    assert_eq!(d.state(), DiskState::Ready);
}

fn hashes(p: &mut Pair, d: &mut SenderDisk, level: u8, parents: Vec<u64>) -> Vec<u64> {
    let req = p.tx.next_req();
    let msg = d.hash_request(req, level, parents, level == 0).unwrap();
    match call(p, d, msg).unwrap() {
        DiskEvent::Hashes(h) => h,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_whole_disk_copies_resumes_cycles_and_resyncs_through_the_sender_disk_session() {
    let mut p = Pair::new();
    let src = source(SIZE as usize, 6);

    // The initial copy, cut after half of it.
    let (d, o, resume) = open(&mut p);
    assert_eq!(d.state(), DiskState::Copying);
    assert_eq!(resume, Resume::default());
    p.send(&o, &src, &[(0, SIZE / 2)], false).unwrap();
    p.reconnect();

    // Resumed: the opened reply's progress is what is not sent again.
    let (mut d, o, resume) = open(&mut p);
    assert_eq!(d.state(), DiskState::Copying);
    assert!(
        resume.resumed > 0 && resume.resumed <= SIZE / 2,
        "{resume:?}"
    );
    assert!(p.reports.iter().any(
        |r| matches!(r, Report::DiskOpened { resumed_bytes, .. } if *resumed_bytes == resume.resumed)
    ));
    p.send(&o, &src, &remaining(&resume), false).unwrap();
    let req = p.tx.next_req();
    let msg = d.commit_initial(req).unwrap();
    assert_eq!(
        call(&mut p, &mut d, msg).unwrap(),
        DiskEvent::InitialCommitted
    );
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src);

    // Cycle 1: two changed chunks; zeros in a cycle are real writes.
    let mut src1 = src.clone();
    src1[4096..8192].fill(0xab);
    src1[(5 << 16)..(6 << 16)].fill(0);
    assert_eq!(begin(&mut p, &mut d, 1), Resume::default());
    let co = Opened {
        known_empty: false,
        ..o.clone()
    };
    p.send(&co, &src1, &[(0, 1 << 16), (5 << 16, 6 << 16)], false)
        .unwrap();
    commit(&mut p, &mut d, 1);
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src1);
    assert_eq!(d.opened().unwrap().committed_cycle, 1);

    // The disk is reopened as committed, and resynchronised as cycle 2: the tree is walked
    // from the top to the pages, every answer counted by the session, the differing pages
    // sent, the roots compared, the cycle committed.
    p.reconnect();
    let (mut d, o, _) = open(&mut p);
    assert_eq!(d.state(), DiskState::Ready);
    assert_eq!(o.committed_cycle, 1);
    let mut src2 = src1.clone();
    src2[(9 << 16)..(9 << 16) + 4096].fill(0x11);
    begin(&mut p, &mut d, 2);
    assert_eq!(hashes(&mut p, &mut d, 0, vec![]).len(), 1);
    assert_eq!(hashes(&mut p, &mut d, 1, vec![0]).len(), 1);
    assert_eq!(hashes(&mut p, &mut d, 2, vec![0]).len(), 4);
    assert_eq!(
        hashes(&mut p, &mut d, 3, vec![0, 1, 2, 3]).len() as u64,
        4 * RESYNC_FANOUT
    );
    p.send(&co, &src2, &[(9 << 16, (9 << 16) + 4096)], false)
        .unwrap();
    let req = p.tx.next_req();
    let msg = d.root_request(req).unwrap();
    assert_eq!(
        call(&mut p, &mut d, msg).unwrap(),
        DiskEvent::Root(toy_hash(&src2))
    );
    commit(&mut p, &mut d, 2);
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src2);
    assert_eq!(p.rx.disk(o.handle).unwrap().committed_cycle, 2);
}

#[test]
fn a_receiver_refusal_reaches_the_disk_session_with_its_class() {
    let mut p = Pair::new();
    // `host1` may not write `vm2`: the open is refused, permanently.
    let mut d = SenderDisk::new("vm2", "os.vhdx", SIZE, Guid([7; 16]), 3);
    let req = p.tx.next_req();
    let msg = d.open(req, false).unwrap();
    let e = p.call(msg).unwrap_err();
    let SessionError::Refused { class, message } = e.clone() else {
        panic!("{e:?}")
    };
    assert_eq!(class, ErrorClass::Unauthorized);
    let e2 = d
        .handle_answer(Control::Error {
            req,
            class,
            message,
        })
        .unwrap_err();
    assert_eq!(e, e2);
    assert!(!e2.is_transient());
    assert_eq!(d.state(), DiskState::Failed);
    assert!(d.open(p.tx.next_req(), false).is_err());
}

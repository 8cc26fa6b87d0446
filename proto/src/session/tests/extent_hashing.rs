//! Protocol version 6 changes what an extent's hash is a hash of (WIRE.md §5): each side
//! must pick the hashing from the version the disk's control stream negotiated, so a pair of
//! version-6 peers uses page hashes and a version-5 peer on either side keeps the whole-
//! extent hash.

use super::pair::Pair;
use crate::session::receiver::FirstStep;
use crate::session::{Authorizations, ReceiverSession, SenderControl};
use crate::wire::{
    decode_frame, BatchStart, Control, ExtentHashing, K_BATCH_START, MAX_CONTROL_BODY,
    PAGE_HASH_VERSION, PROTOCOL_VERSION,
};

/// The hashing the receiver's batches of `handle` verify with.
fn batch_hashing(p: &mut Pair, handle: u32, generation: u64) -> ExtentHashing {
    let start = BatchStart { handle, generation }.encode();
    let body = &start[5..];
    match p.rx.handle_first_frame(p.stream + 1, K_BATCH_START, body) {
        FirstStep::Batch(b) => {
            let h = b.hashing();
            p.rx.batch_ended(handle);
            h
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn version_6_peers_hash_extents_over_pages() {
    assert_eq!(PROTOCOL_VERSION, PAGE_HASH_VERSION);
    let mut p = Pair::new();
    assert_eq!(p.tx.version(), Some(6));
    let o = p.open("vm1", 1 << 20, false).unwrap();
    assert_eq!(p.rx.disk(o.handle).unwrap().version, 6);
    assert_eq!(
        batch_hashing(&mut p, o.handle, o.generation),
        ExtentHashing::Pages
    );
    assert_eq!(ExtentHashing::of_version(6), ExtentHashing::Pages);
}

#[test]
fn a_version_5_sender_keeps_the_whole_extent_hash_at_a_version_6_receiver() {
    let mut p = Pair::new();
    // A second control stream from a sender that offers at most version 5.
    p.tx = SenderControl::with_max_version(5);
    p.stream += 4;
    assert_eq!(p.hello().unwrap(), 5);
    assert_eq!(p.tx.version(), Some(5));
    let o = p.open("vm1", 1 << 20, false).unwrap();
    assert_eq!(p.rx.disk(o.handle).unwrap().version, 5);
    assert_eq!(
        batch_hashing(&mut p, o.handle, o.generation),
        ExtentHashing::Whole
    );
    // The whole copy still goes through at version 5.
    let src = super::pair::source(1 << 20, 3);
    p.send(&o, &src, &[], true).unwrap();
    p.commit_initial(&o).unwrap();
    assert_eq!(p.model.disks["vm1/os.vhdx"].data, src);
}

#[test]
fn a_version_6_sender_takes_version_5_from_an_older_receiver() {
    // An older receiver answers the hello with 5: the sender accepts it, and its extents
    // then carry whole-extent hashes.
    let mut tx = SenderControl::new();
    match tx.hello("test").unwrap() {
        Control::Hello { max_version, .. } => assert_eq!(max_version, 6),
        other => panic!("{other:?}"),
    }
    tx.handle_answer(Control::HelloAck { version: 5 }).unwrap();
    assert_eq!(tx.version(), Some(5));
    assert_eq!(ExtentHashing::of_version(5), ExtentHashing::Whole);
    // A receiver's own choice for a sender offering 1..=5 is 5.
    let allow = Authorizations::parse(&["host1=vm1".to_string()]).unwrap();
    let mut rx = ReceiverSession::new("host1", &allow);
    let hello = Control::Hello {
        min_version: 1,
        max_version: 5,
        software: "old".into(),
    };
    let frame = hello.encode();
    let (k, b, _) = decode_frame(&frame, MAX_CONTROL_BODY).unwrap().unwrap();
    match rx.handle_first_frame(0, k, b) {
        FirstStep::Control(crate::session::receiver::ControlStep::Answer { answer, .. }) => {
            assert_eq!(answer, Control::HelloAck { version: 5 })
        }
        other => panic!("{other:?}"),
    }
    // A sender pinned to 5 refuses a receiver that picks 6 (it never offered it).
    let mut old = SenderControl::with_max_version(5);
    old.hello("old").unwrap();
    assert!(old.handle_answer(Control::HelloAck { version: 6 }).is_err());
}

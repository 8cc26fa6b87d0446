//! The receiver session's limit on disks per connection (issue 16): one more distinct disk
//! than the limit is refused, non-recoverably, with the limit named; a disk opened again and
//! disks still being opened count once each.

use super::receiver_control::{answer, effect, opened, ready, refusal, S};
use crate::session::ReceiverSession;
use crate::wire::{Control, ErrorClass};
use crate::Guid;

fn open(disk: &str) -> Control {
    Control::OpenDisk {
        req: 7,
        vm: "vm1".into(),
        disk: disk.into(),
        virtual_size: 1 << 30,
        source_id: Guid([1; 16]),
        full_copy: false,
        vm_disks: Vec::new(),
    }
}

fn limited(n: usize) -> ReceiverSession {
    ready().with_max_disks(n)
}

#[test]
fn a_connection_may_hold_the_limit_of_disks_and_one_more_is_refused_naming_the_limit() {
    let mut s = limited(2);
    for d in ["d0", "d1"] {
        let _ = effect(s.handle_message(S, open(d)));
        let (a, _, _) = answer(s.handle_done(S, opened(true)));
        assert!(matches!(a, Control::DiskOpened { .. }), "{a:?}");
    }
    let (class, msg, _) = refusal(s.handle_message(S, open("d2")));
    assert_eq!(class, ErrorClass::InvalidState);
    assert!(!class.recovery().is_transient());
    assert!(msg.contains("--max-disks-per-connection 2"), "{msg}");
    assert!(msg.contains("vm1/d2"), "{msg}");
    // A disk already open may be opened again: it does not count twice.
    let _ = effect(s.handle_message(S, open("d1")));
}

#[test]
fn disks_still_being_opened_on_other_streams_count_against_the_limit() {
    let mut s = limited(1);
    let _ = s.handle_message(5, super::receiver_control::hello());
    let _ = effect(s.handle_message(S, open("d0")));
    let (class, msg, _) = refusal(s.handle_message(5, open("d1")));
    assert_eq!(class, ErrorClass::InvalidState);
    assert!(msg.contains("--max-disks-per-connection 1"), "{msg}");
}

//! The VM's disk set on `OpenDisk` (issue 17, item 6): a sender names every disk of the VM
//! from protocol 5 on, never to an older receiver; the receiver session checks the set
//! names the disk opened, once each, and hands it to the store's check with the open.

use super::receiver_control::{effect, ready, refusal, S};
use crate::session::receiver::Effect;
use crate::session::sender::SenderDisk;
use crate::wire::{Control, ErrorClass, DISK_SET_VERSION};
use crate::Guid;

fn set(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn sent_set(protocol: u16) -> Vec<String> {
    let mut d = SenderDisk::new("vm1", "os", 1 << 20, Guid([7; 16]), protocol)
        .with_vm_disks(set(&["os", "data"]));
    match d.open(1, false).unwrap() {
        Control::OpenDisk { vm_disks, .. } => vm_disks,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_sender_names_the_vms_disks_only_to_a_receiver_that_knows_them() {
    assert_eq!(sent_set(DISK_SET_VERSION), set(&["os", "data"]));
    assert_eq!(sent_set(DISK_SET_VERSION - 1), Vec::<String>::new());
    assert_eq!(sent_set(3), Vec::<String>::new());
}

fn open(disk: &str, vm_disks: &[&str]) -> Control {
    Control::OpenDisk {
        req: 1,
        vm: "vm1".into(),
        disk: disk.into(),
        virtual_size: 1 << 20,
        source_id: Guid([1; 16]),
        full_copy: false,
        vm_disks: set(vm_disks),
    }
}

#[test]
fn the_receiver_passes_the_set_to_the_store_and_refuses_one_without_the_disk_or_twice() {
    let mut s = ready();
    match effect(s.handle_message(S, open("os", &["data", "os"]))) {
        Effect::OpenReplica { vm_disks, .. } => assert_eq!(vm_disks, set(&["data", "os"])),
        other => panic!("{other:?}"),
    }
    let mut s = ready();
    match effect(s.handle_message(S, open("os", &[]))) {
        Effect::OpenReplica { vm_disks, .. } => assert!(vm_disks.is_empty(), "not said"),
        other => panic!("{other:?}"),
    }
    for (set, says) in [
        (&["data"][..], "leaves it out"),
        (&["os", "data", "os"][..], "names \"os\" twice"),
    ] {
        let mut s = ready();
        let (class, msg, close) = refusal(s.handle_message(S, open("os", set)));
        assert_eq!((class, close), (ErrorClass::InvalidState, false), "{msg}");
        assert!(msg.contains(says), "{msg}");
    }
}

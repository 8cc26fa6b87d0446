//! The receiver session's checkpoint timer (`receiver/timer.rs`), driven by time given as a
//! value: no clock, no sleeping, so each case is exact to the millisecond.

use std::time::Duration;

use super::receiver_control::{answer, effect, opened, ready, S};
use crate::session::receiver::{CheckpointRound, CHECKPOINT_INTERVAL};
use crate::session::ReceiverSession;
use crate::wire::Control;
use crate::Guid;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Opens `disk` of vm1 through the session, as a sender would; answers its handle.
fn open(s: &mut ReceiverSession, disk: &str) -> u32 {
    let _ = effect(s.handle_message(
        S,
        Control::OpenDisk {
            req: 7,
            vm: "vm1".into(),
            disk: disk.into(),
            virtual_size: 1 << 30,
            source_id: Guid([1; 16]),
            full_copy: false,
            vm_disks: Vec::new(),
        },
    ));
    match answer(s.handle_done(S, opened(true))).0 {
        Control::DiskOpened { handle, .. } => handle,
        a => panic!("{a:?}"),
    }
}

#[test]
fn the_first_round_is_due_one_interval_after_the_start_and_not_a_millisecond_before() {
    let mut s = ready();
    assert_eq!(CHECKPOINT_INTERVAL, ms(500));
    assert_eq!(s.poll_timeout(), Some(ms(500)));
    assert_eq!(s.handle_timeout(ms(0)), None);
    assert_eq!(s.handle_timeout(ms(499)), None);
    assert_eq!(s.poll_timeout(), Some(ms(500)));
    // No disk open yet: the round is empty, and still a round (the timer keeps its beat).
    assert_eq!(
        s.handle_timeout(ms(500)),
        Some(CheckpointRound { handles: vec![] })
    );
}

#[test]
fn a_round_names_every_open_disk_in_the_order_they_opened() {
    let mut s = ready();
    let a = open(&mut s, "d0");
    let b = open(&mut s, "d1");
    assert!(a < b);
    let round = s.handle_timeout(ms(510)).unwrap();
    assert_eq!(round.handles, vec![a, b]);
}

#[test]
fn no_round_is_handed_out_while_one_runs_and_the_next_is_due_an_interval_after_it_ends() {
    let mut s = ready();
    let h = open(&mut s, "d0");
    assert!(s.handle_timeout(ms(500)).is_some());
    // The store is slow: the round takes 1.2 s. Nothing is due meanwhile.
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(ms(1000)), None);
    assert_eq!(s.handle_timeout(ms(1700)), None);
    s.checkpoints_done(ms(1700));
    assert_eq!(s.poll_timeout(), Some(ms(2200)));
    assert_eq!(s.handle_timeout(ms(2199)), None);
    assert_eq!(s.handle_timeout(ms(2200)).unwrap().handles, vec![h]);
}

#[test]
fn an_hour_of_prompt_rounds_is_7200_rounds() {
    let mut s = ready();
    let _ = open(&mut s, "d0");
    let mut rounds = 0;
    let mut now = Duration::ZERO;
    while now < Duration::from_secs(3600) {
        now = s.poll_timeout().unwrap();
        if now > Duration::from_secs(3600) {
            break;
        }
        let _round = s.handle_timeout(now).unwrap();
        rounds += 1;
        s.checkpoints_done(now);
    }
    assert_eq!(rounds, 7200);
}

#[test]
fn a_late_timeout_hands_out_one_round_not_the_missed_ones() {
    let mut s = ready();
    // The driver was held up for 10 s: one round, then the beat resumes from its end.
    assert!(s.handle_timeout(ms(10_000)).is_some());
    assert_eq!(s.handle_timeout(ms(10_000)), None);
    s.checkpoints_done(ms(10_001));
    assert_eq!(s.poll_timeout(), Some(ms(10_501)));
}

//! Unit tests of the coalescer and its send queue.

use super::*;

const MIB: usize = 1 << 20;

fn shape(t: &[Taken]) -> Vec<(u64, usize)> {
    t.iter().map(|t| (t.start, t.data.len())).collect()
}

#[test]
fn adjacent_extents_become_one_4_mib_put_page() {
    let mut c = Coalescer::new(32 * MIB);
    for i in 0..3u64 {
        assert!(c.push(i * MIB as u64, &vec![i as u8; MIB]).is_empty());
    }
    let out = c.push(3 * MIB as u64, &[3; MIB]);
    assert_eq!(shape(&out), vec![(0, 4 * MIB)]);
    assert_eq!(out[0].data[2 * MIB], 2);
    assert_eq!(c.pending_bytes(), 0);
}

#[test]
fn a_write_crossing_the_4_mib_boundary_fills_the_run_and_starts_the_next() {
    let mut c = Coalescer::new(32 * MIB);
    assert!(c.push(0, &[1; 3 * MIB]).is_empty());
    let out = c.push(3 * MIB as u64, &[2; 2 * MIB]);
    assert_eq!(shape(&out), vec![(0, 4 * MIB)]);
    assert_eq!(shape(&c.take_all()), vec![(4 * MIB as u64, MIB)]);
}

#[test]
fn extents_arriving_out_of_order_are_joined() {
    let mut c = Coalescer::new(32 * MIB);
    assert!(c.push(MIB as u64, &[2; MIB]).is_empty());
    assert!(c.push(0, &[1; MIB]).is_empty());
    let all = c.take_all();
    assert_eq!(shape(&all), vec![(0, 2 * MIB)]);
    assert_eq!((all[0].data[0], all[0].data[MIB]), (1, 2));
}

#[test]
fn interleaved_streams_keep_separate_runs() {
    let mut c = Coalescer::new(32 * MIB);
    let (a, b) = (0u64, 100 * MIB as u64);
    for i in 0..3u64 {
        assert!(c.push(a + i * MIB as u64, &[1; MIB]).is_empty());
        assert!(c.push(b + i * MIB as u64, &[2; MIB]).is_empty());
    }
    assert_eq!(shape(&c.take_all()), vec![(a, 3 * MIB), (b, 3 * MIB)]);
}

#[test]
fn memory_stays_bounded_by_evicting_the_stalest_run() {
    let mut c = Coalescer::new(8 * MIB);
    let mut sent = 0;
    for i in 0..20u64 {
        // Gaps between extents: nothing joins.
        sent += c.push(i * 2 * MIB as u64, &[1; MIB]).len();
        assert!(c.pending_bytes() <= 8 * MIB);
    }
    assert_eq!(sent, 12);
    assert_eq!(c.take_all()[0].start, 12 * 2 * MIB as u64);
}

#[test]
fn an_overlapping_rewrite_sends_the_older_bytes_first_and_in_order() {
    let mut c = Coalescer::new(32 * MIB);
    c.push(0, &[1; 2 * MIB]);
    let out = c.push(MIB as u64, &[2; MIB]);
    assert_eq!(shape(&out), vec![(0, 2 * MIB)]);
    assert!(c.may_send(&out[0]));
    let newer = c.take_all();
    assert_eq!(shape(&newer), vec![(MIB as u64, MIB)]);
    assert!(!c.may_send(&newer[0]), "must wait for the older send");
    c.done(out[0].id);
    assert!(c.may_send(&newer[0]));
}

#[test]
fn a_failed_run_is_put_back_unless_newer_bytes_overlap() {
    let mut c = Coalescer::new(32 * MIB);
    c.push(0, &[1; MIB]);
    let t = c.take_all().pop().unwrap();
    c.done(t.id);
    assert!(c.put_back(t));
    assert_eq!(c.pending_bytes(), MIB);
    let t = c.take_all().pop().unwrap();
    c.push(512, &[2; 512]);
    c.done(t.id);
    assert!(!c.put_back(t));
}

#[test]
fn a_run_meeting_a_longer_one_is_filled_to_a_whole_page_from_its_head() {
    let mut c = Coalescer::new(32 * MIB);
    // [3, 5) MiB arrived first (another stream), then [0, 3): 5 MiB in all.
    assert!(c.push(3 * MIB as u64, &[2; 2 * MIB]).is_empty());
    let out = c.push(0, &[1; 3 * MIB]);
    assert_eq!(shape(&out), vec![(0, 4 * MIB)]);
    assert_eq!((out[0].data[3 * MIB - 1], out[0].data[3 * MIB]), (1, 2));
    let rest = c.take_all();
    assert_eq!(shape(&rest), vec![(4 * MIB as u64, MIB)]);
    assert!(rest[0].data.iter().all(|&b| b == 2));
}

#[test]
fn a_run_is_stale_once_many_writes_went_elsewhere() {
    let mut c = Coalescer::new(1 << 30);
    c.push(0, &[1; 4096]);
    // Writes elsewhere, each 8 KiB apart: none joins the first run.
    for i in 1..STALE_WRITES {
        c.push(i * 8192 + (1 << 20), &[2; 4096]);
    }
    assert!(
        c.take_stale().is_empty(),
        "{} writes only",
        STALE_WRITES - 1
    );
    c.push(1 << 30, &[3; 4096]);
    assert_eq!(shape(&c.take_stale()), vec![(0, 4096)]);
    assert_eq!(c.take_counts(), [0, 0, 1, 0]);
}

#[test]
fn a_run_is_stale_after_some_checkpoints_without_growing() {
    let mut c = Coalescer::new(32 * MIB);
    c.push(0, &[1; MIB]);
    c.push(10 * MIB as u64, &[2; MIB]);
    for _ in 1..STALE_TICKS {
        assert!(c.take_stale().is_empty());
    }
    c.push(MIB as u64, &[1; MIB]); // the first run grows
                                   // The STALE_TICKS-th call after a run last grew takes it.
    assert_eq!(shape(&c.take_stale()), vec![(10 * MIB as u64, MIB)]);
    for _ in 2..STALE_TICKS {
        assert!(c.take_stale().is_empty());
    }
    assert_eq!(shape(&c.take_stale()), vec![(0, 2 * MIB)]);
    assert_eq!(c.pending_bytes(), 0);
}

#[test]
fn queued_runs_go_out_oldest_first_and_an_overlapping_one_waits_for_the_older() {
    let mut c = Coalescer::new(32 * MIB);
    c.push(0, &[1; MIB]);
    let older = c.take_all();
    c.queue(older);
    c.push(512, &[2; 512]); // rewrite of queued bytes
    c.push(8 * MIB as u64, &[3; MIB]); // elsewhere
    let newer = c.take_all();
    c.queue(newer);
    assert_eq!(c.taken_bytes(), 2 * MIB + 512);
    let a = c.next_to_send().unwrap();
    assert_eq!(a.start, 0);
    // The rewrite must wait for the older run; the unrelated run may go.
    let b = c.next_to_send().unwrap();
    assert_eq!(b.start, 8 * MIB as u64);
    assert!(c.next_to_send().is_none());
    c.done(a.id);
    let r = c.next_to_send().unwrap();
    assert_eq!((r.start, r.data.len()), (512, 512));
    c.done(b.id);
    c.done(r.id);
    assert_eq!(c.taken_bytes(), 0);
    assert!(c.next_to_send().is_none());
}

#[test]
fn unacknowledged_bytes_are_those_pending_queued_or_in_flight() {
    let mut c = Coalescer::new(32 * MIB);
    c.push(0, &[1; MIB]);
    let t = c.take_all();
    c.queue(t);
    c.push(4 * MIB as u64, &[1; MIB]);
    let u = c.unacknowledged();
    assert_eq!(
        u.iter().collect::<Vec<_>>(),
        vec![0..MIB as u64, 4 * MIB as u64..5 * MIB as u64]
    );
    let s = c.next_to_send().unwrap();
    assert!(c.unacknowledged().contains(0), "still in flight");
    c.done(s.id);
    assert!(!c.unacknowledged().contains(0), "acknowledged");
    assert!(c.unacknowledged().contains(4 * MIB as u64));
}

#[test]
fn a_discarded_copy_drops_queued_runs_but_not_those_being_sent() {
    let mut c = Coalescer::new(32 * MIB);
    c.push(0, &[1; MIB]);
    c.push(2 * MIB as u64, &[1; MIB]);
    let t = c.take_all();
    c.queue(t);
    let sending = c.next_to_send().unwrap();
    c.push(8 * MIB as u64, &[1; 512]);
    assert_eq!(c.discard(), MIB + 512);
    assert!(c.next_to_send().is_none());
    assert_eq!(
        c.taken_bytes(),
        MIB,
        "the run being sent is still in flight"
    );
    assert!(c.busy_before(c.next_id(), &(0..u64::MAX)));
    c.done(sending.id);
    assert!(!c.busy_before(c.next_id(), &(0..u64::MAX)));
}

#[test]
fn room_is_kept_within_the_limit_but_one_write_always_goes_ahead() {
    let mut c = Coalescer::new(8 * MIB);
    let limit = 12 * MIB;
    // Nothing in flight: room for writes up to the limit, not past it.
    assert!(c.may_reserve(4 * MIB, limit));
    c.reserve(4 * MIB);
    assert!(c.may_reserve(8 * MIB, limit));
    assert!(!c.may_reserve(8 * MIB + 512, limit));
    // Runs taken out count against the same limit.
    let mut full = Vec::new();
    for i in 0..4u64 {
        full.extend(c.push(i * MIB as u64, &[1; MIB]));
    }
    assert!(c.push(4 * MIB as u64, &[1; 512]).is_empty()); // pending: not counted
    assert_eq!(shape(&full), vec![(0, 4 * MIB)]);
    c.queue(full);
    assert_eq!(c.taken_bytes(), 4 * MIB);
    assert!(c.may_reserve(4 * MIB, limit));
    assert!(!c.may_reserve(4 * MIB + 512, limit));
    // With no room kept, one write goes ahead however far the senders are behind.
    c.unreserve(4 * MIB);
    assert!(c.may_reserve(64 * MIB, limit));
    c.reserve(64 * MIB);
    assert!(!c.may_reserve(512, limit));
    c.unreserve(64 * MIB);
    // Done runs free their part of the limit.
    let t = c.next_to_send().unwrap();
    c.done(t.id);
    assert_eq!(c.taken_bytes(), 0);
    c.reserve(4 * MIB);
    assert!(c.may_reserve(8 * MIB, limit));
}

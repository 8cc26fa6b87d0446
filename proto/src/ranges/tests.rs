//! `RangeSet` against a bitmap model: every operation must agree with the same operation on a
//! plain array of booleans over a small universe, and stay canonical.

use super::*;
use proptest::prelude::*;

const U: u64 = 200;

fn model_of(set: &RangeSet) -> Vec<bool> {
    let mut m = vec![false; U as usize + 64];
    for r in set.iter() {
        for i in r {
            m[i as usize] = true;
        }
    }
    m
}

fn assert_canonical(set: &RangeSet) {
    let v: Vec<_> = set.iter().collect();
    for r in &v {
        assert!(r.start < r.end, "empty range in {set:?}");
    }
    for w in v.windows(2) {
        assert!(w[0].end < w[1].start, "not separated: {set:?}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, u64),
    Remove(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..U, 0..U).prop_map(|(a, b)| Op::Insert(a, b)),
        (0..U, 0..U).prop_map(|(a, b)| Op::Remove(a, b)),
    ]
}

fn build(ops: &[Op]) -> (RangeSet, Vec<bool>) {
    let mut set = RangeSet::new();
    let mut m = vec![false; U as usize + 64];
    for o in ops {
        match *o {
            Op::Insert(a, b) => {
                set.insert(a, b);
                for i in a..b.max(a) {
                    m[i as usize] = true;
                }
            }
            Op::Remove(a, b) => {
                set.remove(a, b);
                for i in a..b.max(a) {
                    m[i as usize] = false;
                }
            }
        }
    }
    (set, m)
}

proptest! {
    #[test]
    fn insert_and_remove_match_a_bitmap(ops in prop::collection::vec(op(), 0..40)) {
        let (set, m) = build(&ops);
        assert_canonical(&set);
        prop_assert_eq!(model_of(&set), m.clone());
        prop_assert_eq!(set.covered_len(), m.iter().filter(|b| **b).count() as u64);
    }

    #[test]
    fn queries_match_a_bitmap(ops in prop::collection::vec(op(), 0..40), a in 0..U, b in 0..U) {
        let (set, m) = build(&ops);
        let all = (a..b).all(|i| m[i as usize]);
        prop_assert_eq!(set.contains_range(a, b), all);
        let gaps = set.gaps_in(a, b);
        let mut gm = vec![false; m.len()];
        for g in &gaps {
            prop_assert!(g.start < g.end);
            for i in g.clone() { gm[i as usize] = true; }
        }
        for w in gaps.windows(2) { prop_assert!(w[0].end < w[1].start); }
        for i in 0..m.len() as u64 {
            let want = i >= a && i < b && !m[i as usize];
            prop_assert_eq!(gm[i as usize], want, "gap bit {}", i);
        }
    }

    #[test]
    fn intersect_matches_a_bitmap(x in prop::collection::vec(op(), 0..30), y in prop::collection::vec(op(), 0..30)) {
        let (sx, mx) = build(&x);
        let (sy, my) = build(&y);
        let si = sx.intersect(&sy);
        assert_canonical(&si);
        let want: Vec<bool> = mx.iter().zip(&my).map(|(a, b)| *a && *b).collect();
        prop_assert_eq!(model_of(&si), want);
        let mut su = sx.clone();
        su.union_with(&sy);
        let want: Vec<bool> = mx.iter().zip(&my).map(|(a, b)| *a || *b).collect();
        prop_assert_eq!(model_of(&su), want);
    }

    #[test]
    fn encoding_round_trips(ops in prop::collection::vec(op(), 0..40)) {
        let (set, _) = build(&ops);
        let bytes = set.encode();
        prop_assert_eq!(bytes.len(), set.encoded_len());
        prop_assert_eq!(RangeSet::decode(&bytes).unwrap(), set);
    }

    #[test]
    fn decoder_never_panics_and_accepts_only_canonical_sets(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        if let Ok(set) = RangeSet::decode(&bytes) {
            assert_canonical(&set);
            prop_assert_eq!(set.encode(), bytes);
        }
    }
}

fn enc(pairs: &[(u64, u64)]) -> Vec<u8> {
    let mut v = (pairs.len() as u32).to_le_bytes().to_vec();
    for (s, e) in pairs {
        v.extend_from_slice(&s.to_le_bytes());
        v.extend_from_slice(&e.to_le_bytes());
    }
    v
}

#[test]
fn decoder_refuses_unsorted_overlapping_adjacent_and_empty_ranges() {
    assert!(RangeSet::decode(&enc(&[(0, 10), (20, 30)])).is_ok());
    for bad in [
        &[(20, 30), (0, 10)][..],
        &[(0, 10), (5, 30)],
        &[(0, 10), (10, 30)],
        &[(5, 5)],
        &[(6, 5)],
    ] {
        let e = RangeSet::decode(&enc(bad)).unwrap_err();
        assert!(e.to_string().contains("range set"), "{e}");
    }
}

#[test]
fn decoder_refuses_huge_counts_without_allocating() {
    let e = RangeSet::decode(&u32::MAX.to_le_bytes()).unwrap_err();
    assert!(e.problem.contains("truncated"), "{e}");
    let mut trailing = enc(&[(0, 1)]);
    trailing.push(0);
    assert!(RangeSet::decode(&trailing)
        .unwrap_err()
        .problem
        .contains("trailing"));
}

#[test]
fn ranges_near_u64_max_work() {
    let mut s = RangeSet::new();
    s.insert(u64::MAX - 10, u64::MAX);
    s.insert(0, 1);
    assert_eq!(s.covered_len(), 11);
    assert!(s.contains_range(u64::MAX - 10, u64::MAX));
    assert!(!s.contains(u64::MAX));
    assert_eq!(s.gaps_in(0, u64::MAX), vec![1..u64::MAX - 10]);
}

proptest! {
    #[test]
    fn mutated_encodings_never_panic_and_what_decodes_round_trips(
        ops in prop::collection::vec(op(), 0..40), ms in crate::mutate::mutations(),
    ) {
        let (set, _) = build(&ops);
        let bytes = crate::mutate::mutated(&set.encode(), &ms);
        if let Ok(d) = RangeSet::decode(&bytes) {
            assert_canonical(&d);
            prop_assert_eq!(d.encode(), bytes.clone());
        }
        if let Ok((d, used)) = RangeSet::decode_prefix(&bytes) {
            assert_canonical(&d);
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(d.encode(), bytes[..used].to_vec());
        }
    }
}

#[test]
fn pages_follow_each_other_without_repeating_or_splitting_a_range() {
    let set: RangeSet = (0..10u64).map(|i| i * 10..i * 10 + 5).collect();
    let (first, more) = set.page(0, 4);
    assert_eq!(
        first.iter().collect::<Vec<_>>(),
        vec![0..5, 10..15, 20..25, 30..35]
    );
    assert!(more);
    // From the end of the last range received: the next range starts after it.
    let (second, more) = set.page(35, 4);
    assert_eq!(second.iter().next(), Some(40..45));
    assert!(more);
    // A range that starts before `at` is left out whole, never clipped.
    let (rest, more) = set.page(82, 4);
    assert_eq!(rest.iter().collect::<Vec<_>>(), vec![90..95]);
    assert!(!more);
    let (exact, more) = set.page(60, 4);
    assert_eq!(exact.range_count(), 4);
    assert!(!more, "the last four ranges: nothing follows");
    assert_eq!(set.page(200, 4), (RangeSet::new(), false));
    assert_eq!(set.page(0, 0), (RangeSet::new(), true));
}

proptest! {
    #[test]
    fn pages_of_any_size_put_together_are_the_set(
        ops in prop::collection::vec(op(), 0..40), max in 1usize..6,
    ) {
        let (set, _) = build(&ops);
        let mut whole = RangeSet::new();
        let mut at = 0;
        loop {
            let (page, more) = set.page(at, max);
            assert_canonical(&page);
            prop_assert!(page.range_count() <= max);
            whole.union_with(&page);
            at = page.bounds().map_or(at, |b| b.end);
            if !more {
                break;
            }
        }
        prop_assert_eq!(whole, set);
    }
}

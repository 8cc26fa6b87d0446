//! What a cycle gives back to qemu: whole blocks only, never a block a dirty extent touches.

use super::*;

const B: u64 = DISCARD_BLOCK;

#[test]
fn only_whole_blocks_are_discarded() {
    assert_eq!(whole_blocks(&(0..B)), Some(0..B));
    assert_eq!(whole_blocks(&(1..2 * B)), Some(B..2 * B));
    assert_eq!(whole_blocks(&(1..2 * B - 1)), None);
    assert_eq!(whole_blocks(&(B + 512..3 * B + 4096)), Some(2 * B..3 * B));
    assert_eq!(whole_blocks(&(5..5)), None);
}

#[test]
fn the_clean_blocks_are_those_no_dirty_extent_touches() {
    let size = 10 * B + 4096;
    // Dirty: block 1 whole, a sector inside block 4, blocks 6..8 and the short tail.
    let dirty = [
        B..2 * B,
        4 * B + 512..4 * B + 1024,
        6 * B..8 * B,
        10 * B..size,
    ];
    assert_eq!(
        clean_blocks(&dirty, size),
        vec![0..B, 2 * B..4 * B, 5 * B..6 * B, 8 * B..10 * B]
    );
    // Nothing dirty: every whole block; the short tail is never given back.
    assert_eq!(clean_blocks(&[], size), vec![0..10 * B]);
    // Everything dirty: nothing.
    let all = 0..size;
    assert!(clean_blocks(std::slice::from_ref(&all), size).is_empty());
    // Every clean block is outside every dirty extent, and every block outside them is
    // clean (a random layout).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let size = 64 * B;
    let mut dirty = Vec::new();
    let mut at = 0;
    while at < size {
        let start = at + next() % (3 * B);
        let end = (start + 1 + next() % (2 * B)).min(size);
        if start >= size {
            break;
        }
        dirty.push(start..end);
        at = end + 1;
    }
    let clean: RangeSet =
        clean_blocks(&dirty, size)
            .into_iter()
            .fold(RangeSet::new(), |mut s, r| {
                s.insert(r.start, r.end);
                s
            });
    for b in 0..size / B {
        let touched = dirty.iter().any(|d| d.start < (b + 1) * B && d.end > b * B);
        assert_eq!(
            clean.contains_range(b * B, (b + 1) * B),
            !touched,
            "block {b} of {dirty:?}"
        );
    }
}

#[test]
fn a_drain_gives_its_reads_back_in_runs_from_the_first_start_to_the_last_end() {
    let mut u = Untrimmed::default();
    assert_eq!(u.rest(), None, "nothing read, nothing to give back");
    // Scattered reads: one run spans them and the clean blocks between them.
    for k in 0..TRIM_READS as u64 - 1 {
        assert_eq!(u.read(10 * k * B..(10 * k + 1) * B), None);
    }
    let last = 10 * (TRIM_READS as u64 - 1) * B;
    assert_eq!(u.read(last..last + B), Some(0..last + B));
    assert_eq!(u.rest(), None, "given back once");
    // Large reads: due by bytes before the count.
    assert_eq!(u.read(0..TRIM_BYTES / 2), None);
    assert_eq!(u.read(TRIM_BYTES..2 * TRIM_BYTES), Some(0..2 * TRIM_BYTES));
    // What is left at the end of the drain.
    assert_eq!(u.read(3 * B..4 * B), None);
    assert_eq!(u.rest(), Some(3 * B..4 * B));
}

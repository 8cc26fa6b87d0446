use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};

use super::spaces::SentPacket;

/// A sparse map from packet number to [`SentPacket`], backed by a ring buffer.
///
/// Indexed by `packet number - offset`, giving O(1) insert and lookup without
/// the per-entry allocation of the `BTreeMap` it replaces (#2720).
#[derive(Default)]
pub(super) struct SentPackets {
    /// Packet number of `slots.front()` when non-empty.
    offset: u64,
    /// `slots[i]` holds packet number `offset + i`, or `None` if removed or skipped.
    slots: VecDeque<Option<SentPacket>>,
    /// Count of present entries with `size != 0`, for O(1) `has_in_flight`.
    in_flight: usize,
}

impl SentPackets {
    /// Insert `value` at `pn`, which must exceed every previously inserted packet number.
    pub(super) fn insert(&mut self, pn: u64, value: SentPacket) {
        if self.slots.is_empty() {
            self.offset = pn;
        } else {
            debug_assert!(
                pn >= self.offset + self.slots.len() as u64,
                "packet numbers must be inserted in increasing order"
            );
        }
        let index = (pn - self.offset) as usize;
        // Pad skipped packet numbers.
        self.slots.resize(index, None);
        if value.size != 0 {
            self.in_flight += 1;
        }
        self.slots.push_back(Some(value));
    }

    /// Remove and return the entry for `pn`.
    pub(super) fn remove(&mut self, pn: u64) -> Option<SentPacket> {
        let index = usize::try_from(pn.checked_sub(self.offset)?).ok()?;
        let value = self.slots.get_mut(index)?.take()?;
        if value.size != 0 {
            self.in_flight -= 1;
        }
        // Reclaim leading vacant slots so the buffer tracks the live window.
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.offset += 1;
        }
        Some(value)
    }

    /// Return the entry for `pn`.
    pub(super) fn get(&self, pn: u64) -> Option<&SentPacket> {
        let index = usize::try_from(pn.checked_sub(self.offset)?).ok()?;
        self.slots.get(index)?.as_ref()
    }

    /// Whether any present entry has `size != 0`.
    pub(super) fn has_in_flight(&self) -> bool {
        self.in_flight != 0
    }

    /// Iterate present entries in `range`, in increasing packet-number order.
    pub(super) fn range(
        &self,
        range: impl RangeBounds<u64>,
    ) -> impl Iterator<Item = (u64, &SentPacket)> + '_ {
        let end = self.offset + self.slots.len() as u64;
        let lo = Ord::max(
            match range.start_bound() {
                Bound::Included(&n) => n,
                Bound::Excluded(&n) => n.saturating_add(1),
                Bound::Unbounded => self.offset,
            },
            self.offset,
        );
        let hi = Ord::min(
            match range.end_bound() {
                Bound::Included(&n) => n.saturating_add(1),
                Bound::Excluded(&n) => n,
                Bound::Unbounded => end,
            },
            end,
        );
        let start = (lo - self.offset) as usize;
        let stop = Ord::max(hi.saturating_sub(self.offset) as usize, start);
        (start..stop)
            .filter_map(move |i| self.slots[i].as_ref().map(|v| (self.offset + i as u64, v)))
    }

    /// Mutably iterate present entries in increasing packet-number order.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut SentPacket> + '_ {
        self.slots.iter_mut().filter_map(Option::as_mut)
    }

    /// Consume the map, yielding present entries in increasing packet-number order.
    pub(super) fn into_values(self) -> impl Iterator<Item = SentPacket> {
        self.slots.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::RngExt;
    use rand_pcg::Pcg32;

    use super::*;
    use crate::Instant;

    #[test]
    fn insert_get_and_order() {
        let mut m = SentPackets::default();
        for pn in 3..=6 {
            m.insert(pn, packet(pn as u16 * 10));
        }
        assert_eq!(m.get(3).map(|p| p.size), Some(30));
        assert_eq!(m.get(6).map(|p| p.size), Some(60));
        assert!(m.get(2).is_none());
        assert!(m.get(7).is_none());
        assert_eq!(m.get(5).map(|p| p.size), Some(50));
        assert_eq!(
            m.range(..).map(|(_, p)| p.size).collect::<Vec<_>>(),
            vec![30, 40, 50, 60]
        );
    }

    #[test]
    fn skipped_numbers_leave_gaps() {
        let mut m = SentPackets::default();
        m.insert(0, packet(0));
        m.insert(1, packet(1));
        m.insert(4, packet(4)); // 2 and 3 skipped
        assert!(m.get(2).is_none());
        assert!(m.get(3).is_none());
        assert_eq!(m.get(4).map(|p| p.size), Some(4));
        assert_eq!(range_of(&m, ..), vec![(0, 0), (1, 1), (4, 4)]);
    }

    #[test]
    fn remove_middle_leaves_hole_front_unchanged() {
        let mut m = SentPackets::default();
        for pn in 0..5 {
            m.insert(pn, packet(pn as u16));
        }
        assert_eq!(m.remove(2).map(|p| p.size), Some(2));
        assert!(m.remove(2).is_none());
        assert!(m.get(2).is_none());
        // Front intact: offset unchanged, iteration skips the hole.
        assert_eq!(range_of(&m, ..), vec![(0, 0), (1, 1), (3, 3), (4, 4)]);
    }

    #[test]
    fn remove_front_reclaims_leading_holes() {
        let mut m = SentPackets::default();
        for pn in 0..5 {
            m.insert(pn, packet(pn as u16));
        }
        // Removing the front also reclaims the already-vacated 1 and 2.
        assert_eq!(m.remove(1).map(|p| p.size), Some(1));
        assert_eq!(m.remove(2).map(|p| p.size), Some(2));
        assert_eq!(m.remove(0).map(|p| p.size), Some(0));
        assert_eq!(range_of(&m, ..), vec![(3, 3), (4, 4)]);
        // A later insert still lands at the right packet number.
        m.insert(9, packet(9));
        assert_eq!(m.get(9).map(|p| p.size), Some(9));
        assert_eq!(range_of(&m, ..), vec![(3, 3), (4, 4), (9, 9)]);
    }

    #[test]
    fn range_bounds() {
        let mut m = SentPackets::default();
        for pn in 10..20 {
            m.insert(pn, packet(pn as u16));
        }
        assert_eq!(range_of(&m, 12..15), vec![(12, 12), (13, 13), (14, 14)]);
        assert_eq!(range_of(&m, 12..=14), vec![(12, 12), (13, 13), (14, 14)]);
        assert_eq!(
            range_of(&m, (Bound::Excluded(17), Bound::Unbounded)),
            vec![(18, 18), (19, 19)]
        );
        // "First entry after x", as used by `sent()`.
        assert_eq!(
            m.range((Bound::Excluded(15), Bound::Unbounded))
                .next()
                .map(|(pn, p)| (pn, p.size)),
            Some((16, 16))
        );
        // Out-of-window ranges are empty, not a panic.
        assert_eq!(range_of(&m, 0..5), vec![]);
        assert_eq!(range_of(&m, 100..200), vec![]);
    }

    #[test]
    fn values_mut_and_into_values() {
        let mut m = SentPackets::default();
        for pn in 0..4 {
            m.insert(pn, packet(pn as u16));
        }
        m.remove(1);
        for v in m.values_mut() {
            v.size += 100;
        }
        assert_eq!(m.get(0).map(|p| p.size), Some(100));
        assert_eq!(m.get(2).map(|p| p.size), Some(102));
        assert_eq!(
            m.into_values().map(|p| p.size).collect::<Vec<_>>(),
            vec![100, 102, 103]
        );
    }

    #[test]
    fn take_resets() {
        let mut m = SentPackets::default();
        for pn in 5..8 {
            m.insert(pn, packet(pn as u16));
        }
        let taken = std::mem::take(&mut m);
        assert_eq!(
            taken.into_values().map(|p| p.size).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert_eq!(range_of(&m, ..), vec![]);
        // Reusable after take.
        m.insert(100, packet(100));
        assert_eq!(m.get(100).map(|p| p.size), Some(100));
    }

    #[test]
    fn tracks_in_flight() {
        let mut m = SentPackets::default();
        assert!(!m.has_in_flight());
        m.insert(0, packet(0)); // size 0: not in flight
        assert!(!m.has_in_flight());
        m.insert(1, packet(1200));
        m.insert(2, packet(1200));
        assert!(m.has_in_flight());
        m.remove(1);
        assert!(m.has_in_flight()); // 2 still in flight
        m.remove(2);
        assert!(!m.has_in_flight()); // only size-0 remains
        m.remove(0);
        assert!(!m.has_in_flight());
    }

    // vdrep: the tests below check `SentPackets` against the `BTreeMap` it replaces, under the
    // sequences a connection produces (dataplane/vendor/quinn-proto/README.vdrep.md).

    /// Every observable answer of `m` equals that of the `BTreeMap` model `b`.
    fn assert_same(m: &SentPackets, b: &BTreeMap<u64, u16>) {
        let ours = range_of(m, ..);
        let model = b.iter().map(|(&pn, &size)| (pn, size)).collect::<Vec<_>>();
        assert_eq!(ours, model);
        assert_eq!(m.has_in_flight(), b.values().any(|&size| size != 0));
    }

    /// The model's answer for `range`, as `(pn, size)` pairs.
    fn model_range<R: RangeBounds<u64>>(b: &BTreeMap<u64, u16>, r: R) -> Vec<(u64, u16)> {
        b.range(r).map(|(&pn, &size)| (pn, size)).collect()
    }

    /// Random sends (with skipped numbers and non-congestion-controlled packets), ACKs of ranges
    /// (in order, reordered, duplicated, of numbers never sent or long gone), losses declared
    /// below the largest acknowledged, and range queries of every bound kind, compared after
    /// every step with a `BTreeMap` fed the same operations.
    #[test]
    fn behaves_like_btreemap() {
        let mut rng = Pcg32::new(0x5eed_0001, 0x0da7_a9a7);
        for round in 0..200 {
            let mut m = SentPackets::default();
            let mut b = BTreeMap::<u64, u16>::new();
            let mut next_pn = rng.random_range(0..4u64);
            let mut largest_acked = None::<u64>;
            for _ in 0..400 {
                match rng.random_range(0..100u32) {
                    // Send a packet; the packet-number filter sometimes skips one.
                    0..=44 => {
                        if rng.random_range(0..20u32) == 0 {
                            next_pn += rng.random_range(1..4u64);
                        }
                        let size = if rng.random_range(0..5u32) == 0 {
                            0
                        } else {
                            rng.random_range(1..1500u16)
                        };
                        m.insert(next_pn, packet(size));
                        b.insert(next_pn, size);
                        next_pn += 1;
                    }
                    // An ACK frame: a few ranges, largest first as on the wire, possibly
                    // covering numbers already acknowledged or never sent.
                    45..=79 => {
                        let mut hi = next_pn.saturating_sub(rng.random_range(0..8u64));
                        for _ in 0..rng.random_range(1..4u32) {
                            let lo = hi.saturating_sub(rng.random_range(0..12u64));
                            let acked = m.range(lo..hi).map(|(pn, _)| pn).collect::<Vec<_>>();
                            let expect = b.range(lo..hi).map(|(&pn, _)| pn).collect::<Vec<_>>();
                            assert_eq!(acked, expect);
                            for pn in acked {
                                assert_eq!(m.remove(pn).map(|p| p.size), b.remove(&pn));
                            }
                            if hi > lo {
                                largest_acked = largest_acked.max(Some(hi - 1));
                            }
                            hi = lo.saturating_sub(rng.random_range(1..6u64));
                        }
                    }
                    // Loss detection: declare old packets below the largest acknowledged lost.
                    80..=89 => {
                        if let Some(largest) = largest_acked {
                            let threshold = largest.saturating_sub(rng.random_range(0..4u64));
                            let lost = m.range(0..threshold).map(|(pn, _)| pn).collect::<Vec<_>>();
                            assert_eq!(
                                lost,
                                b.range(0..threshold).map(|(&pn, _)| pn).collect::<Vec<_>>()
                            );
                            for pn in lost {
                                assert_eq!(m.remove(pn).map(|p| p.size), b.remove(&pn));
                            }
                        }
                    }
                    // Spurious removals: a duplicate ACK, a number far below or above the window.
                    90..=94 => {
                        let pn = match rng.random_range(0..3u32) {
                            0 => rng.random_range(0..next_pn + 1),
                            1 => 0,
                            _ => next_pn + rng.random_range(0..1000u64),
                        };
                        assert_eq!(m.remove(pn).map(|p| p.size), b.remove(&pn));
                        assert!(m.get(pn).is_none());
                    }
                    // Queries with every kind of bound, inside and outside the window.
                    _ => {
                        let x = rng.random_range(0..next_pn + 3);
                        let y = rng.random_range(x..next_pn + 5);
                        assert_eq!(m.get(x).map(|p| p.size), b.get(&x).copied());
                        assert_eq!(range_of(&m, x..y), model_range(&b, x..y));
                        assert_eq!(range_of(&m, x..=y), model_range(&b, x..=y));
                        assert_eq!(range_of(&m, ..y), model_range(&b, ..y));
                        assert_eq!(range_of(&m, x..), model_range(&b, x..));
                        let excl = (Bound::Excluded(x), Bound::Unbounded);
                        assert_eq!(range_of(&m, excl), model_range(&b, excl));
                        let excl = (Bound::Excluded(x), Bound::Excluded(y));
                        if x < y {
                            assert_eq!(range_of(&m, excl), model_range(&b, excl));
                        }
                        assert_eq!(range_of(&m, u64::MAX..), vec![]);
                    }
                }
                assert_same(&m, &b);
            }
            // A space discarded at a key change or a 0-RTT rejection: everything left comes out
            // in packet-number order and the emptied map starts afresh.
            if round % 2 == 0 {
                let taken = std::mem::take(&mut m);
                let left = taken.into_values().map(|p| p.size).collect::<Vec<_>>();
                assert_eq!(left, b.values().copied().collect::<Vec<_>>());
                b.clear();
                assert_same(&m, &b);
                m.insert(next_pn, packet(7));
                assert_eq!(range_of(&m, ..), vec![(next_pn, 7)]);
            }
        }
    }

    /// A long transfer whose ACKs arrive in ranges with holes that are later declared lost: the
    /// ring holds the live window only, not every number ever sent.
    #[test]
    fn ring_tracks_the_live_window() {
        let mut m = SentPackets::default();
        let mut acked_up_to = 0;
        for pn in 0..200_000u64 {
            m.insert(pn, packet(1200));
            // Every 64 packets the peer acknowledges what was sent up to the middle of the last
            // flight but one hole (a reordered or lost packet), and the hole of the previous
            // ACK, the only packet left below it, is declared lost.
            if pn % 64 == 63 {
                let lost = m
                    .range(0..acked_up_to)
                    .map(|(pn, _)| pn)
                    .collect::<Vec<_>>();
                assert!(lost.len() <= 1, "{lost:?}");
                for pn in lost {
                    m.remove(pn).unwrap();
                }
                let flight = pn - 63;
                for pn in acked_up_to..flight + 32 {
                    if pn != flight + 5 {
                        m.remove(pn).unwrap();
                    }
                }
                acked_up_to = flight + 32;
            }
            assert!(m.slots.len() <= 200, "{} slots at {pn}", m.slots.len());
        }
        assert!(m.has_in_flight());
    }

    /// A `SentPacket` identified by its `size`.
    fn packet(size: u16) -> SentPacket {
        SentPacket {
            path_generation: 0,
            time_sent: Instant::now(),
            size,
            ack_eliciting: false,
            largest_acked: None,
            retransmits: Default::default(),
            stream_frames: Default::default(),
        }
    }

    /// `(pn, size)` pairs from `range`.
    fn range_of<R: RangeBounds<u64>>(m: &SentPackets, r: R) -> Vec<(u64, u16)> {
        m.range(r).map(|(pn, v)| (pn, v.size)).collect()
    }
}

//! Recovery-point times and retention that survive wall-clock jumps.
//!
//! Points are stamped with the receiver's wall clock, which can be stepped (an NTP
//! correction, an operator, the test-only offset of `crate::clock`). Two rules keep a jump
//! from doing harm:
//! - **Times never go back**: a new point is stamped no earlier than the newest one, so a
//!   clock stepped back keeps points ordered in time as they are in cycle number, and the
//!   prefix-only pruning of the stores stays correct.
//! - **Retention counts the store's own timeline**: a point's age is the sum of the gaps
//!   between it and the newest point, each gap counted as at most [`MAX_GAP_COUNTED`]. A
//!   clock stepped forward by days therefore ages the history by at most an hour instead of
//!   pruning all of it at the next commit. The price: after a real pause longer than an hour
//!   (receiver or sender down), points are kept longer than the retention, never shorter.

use super::RecoveryPoint;

/// The longest gap between two consecutive points that retention counts as elapsed time.
pub const MAX_GAP_COUNTED: u64 = 3600;

/// The time to stamp on a new point committed at `now_unix`, after `newest`.
pub fn stamp(now_unix: u64, newest: Option<&RecoveryPoint>) -> u64 {
    newest.map_or(now_unix, |p| now_unix.max(p.created_unix))
}

/// The cutoff for `ReplicaDisk::prune_points` that drops the points (oldest first, the
/// newest last) whose age on the store's timeline exceeds `retention_secs`: the stamp of
/// the oldest point to keep, or 0 when none is due.
pub fn prune_cutoff(points: &[RecoveryPoint], retention_secs: u64) -> u64 {
    let mut age = 0u64;
    let mut keep_from = 0;
    for (i, w) in points.windows(2).enumerate().rev() {
        let gap = w[1].created_unix.saturating_sub(w[0].created_unix);
        age = age.saturating_add(gap.min(MAX_GAP_COUNTED));
        if age > retention_secs {
            keep_from = i + 1;
            break;
        }
    }
    if keep_from == 0 {
        0
    } else {
        points[keep_from].created_unix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(times: &[u64]) -> Vec<RecoveryPoint> {
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| RecoveryPoint {
                cycle: i as u64,
                created_unix: t,
                bytes: 0,
                digest: [0; 32],
            })
            .collect()
    }

    #[test]
    fn a_point_is_stamped_no_earlier_than_the_newest() {
        let p = points(&[1000]);
        assert_eq!(stamp(900, p.last()), 1000);
        assert_eq!(stamp(1100, p.last()), 1100);
        assert_eq!(stamp(5, None), 5);
    }

    #[test]
    fn points_older_than_the_retention_are_due_and_the_others_kept() {
        let p = points(&[0, 10, 20, 30, 40]);
        // Ages 40, 30, 20, 10, 0: with 25 s retention the first two go.
        assert_eq!(prune_cutoff(&p, 25), 20);
        assert_eq!(prune_cutoff(&p, 40), 0);
        assert_eq!(prune_cutoff(&p, 0), 40);
        assert_eq!(prune_cutoff(&p[..1], 0), 0);
        assert_eq!(prune_cutoff(&[], 0), 0);
    }

    #[test]
    fn a_forward_jump_of_two_days_ages_the_history_by_at_most_an_hour() {
        let day = 86_400;
        // A point a minute for ten minutes, then the clock jumps two days ahead.
        let mut t: Vec<u64> = (0..10).map(|i| 1_000_000 + 60 * i).collect();
        t.push(1_000_000 + 540 + 2 * day);
        let p = points(&t);
        // 24 h retention: nothing is due although the newest is two days "later".
        assert_eq!(prune_cutoff(&p, day), 0);
        // 90 min retention: the jump counts 60 min, so points older than 30 min before it go.
        let cut = prune_cutoff(&p, 90 * 60);
        assert_eq!(cut, 0, "all ten pre-jump points are within 60 + 9 min");
        let cut = prune_cutoff(&p, 63 * 60);
        assert_eq!(cut, t[6], "points more than 3 min before the jump go");
    }

    #[test]
    fn a_backward_jump_stamps_keep_order_and_nothing_is_pruned_early() {
        let mut p = points(&[5000, 5010]);
        let s = stamp(1000, p.last());
        p.push(RecoveryPoint {
            cycle: 2,
            created_unix: s,
            bytes: 0,
            digest: [0; 32],
        });
        assert!(p.windows(2).all(|w| w[0].created_unix <= w[1].created_unix));
        assert_eq!(prune_cutoff(&p, 60), 0);
    }
}

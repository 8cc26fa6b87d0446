//! `qemu-latency`'s report in Markdown: every round, the protected runs' writes by the
//! views' windows, every view, and the verdict on the medians of the rounds' ratios. Apart
//! from the measurement (the parent module) so that what is measured and how it is shown
//! can be read, and changed, one without the other.

use super::{Args, Results, SLOW_FACTOR};
use crate::report;

/// The results as Markdown: every round, every view, the verdict on the medians.
pub(super) fn markdown(a: &Args, r: &Results) -> String {
    let pct = |x: f64| format!("{:.2} %", x * 100.0);
    let rows: Vec<Vec<String>> = r
        .rounds
        .iter()
        .map(|x| {
            let (b, p) = (&x.not_protected, &x.protected);
            vec![
                x.round.to_string(),
                format!("{} / {}", b.writes, p.writes),
                format!(
                    "{:.0} / {:.0} = {:.2}×",
                    b.median_us, p.median_us, x.ratio_median
                ),
                format!("{:.0} / {:.0} = {:.2}×", b.p99_us, p.p99_us, x.ratio_p99),
                format!("{:.0} / {:.0}", b.p999_us, p.p999_us),
                format!(
                    "{} / {}",
                    pct(x.share_slow_not_protected),
                    pct(x.share_slow_protected)
                ),
                format!(
                    "{} ({})",
                    x.switches_during_protected,
                    x.cycle_seconds
                        .iter()
                        .map(|c| format!("{c:.1}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                x.loadavg.split(' ').take(3).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    let rounds = report::table(
        &[
            "round",
            "writes",
            "median µs",
            "p99 µs",
            "p99.9 µs",
            "slow writes",
            "switches (cycle s)",
            "load",
        ],
        &rows,
    );
    let mut views = Vec::new();
    for x in &r.rounds {
        let w = &x.protected_writes;
        for v in &w.views {
            views.push(vec![
                x.round.to_string(),
                v.generation.to_string(),
                format!("{:.1}–{:.1}", v.from_s, v.to_s),
                v.writes.to_string(),
                v.first_to_block.to_string(),
                v.slow.to_string(),
                format!("{:.0}", v.excess_ms),
            ]);
        }
    }
    let views = report::table(
        &[
            "round",
            "view",
            "window s",
            "writes",
            "first to a 64 KiB block",
            "slow",
            "guest ms lost",
        ],
        &views,
    );
    let inside: Vec<Vec<String>> = r
        .rounds
        .iter()
        .map(|x| {
            let w = &x.protected_writes;
            vec![
                x.round.to_string(),
                format!("{:.0} / {:.0}", w.outside.median_us, w.outside.p99_us),
                format!("{:.0} / {:.0}", w.inside.median_us, w.inside.p99_us),
                format!(
                    "{:.0} / {:.0}",
                    w.first_to_block.median_us, w.first_to_block.p99_us
                ),
                format!("{} / {}", w.slow_inside, w.slow_outside),
            ]
        })
        .collect();
    let inside = report::table(
        &[
            "round",
            "outside views: median / p99 µs",
            "inside: median / p99 µs",
            "first to a block: median / p99 µs",
            "slow inside / outside",
        ],
        &inside,
    );
    let verdict = |x: f64, t: f64| if x <= t { "met" } else { "NOT met" };
    format!(
        "# Guest write latency of a protected qemu VM\n\n\
         4 KiB random writes at queue depth 1 (python3-libnbd through qemu-storage-daemon's NBD \
         export) over the first {} MiB of a {} MiB raw disk (`cache.direct=on`), {} s per run; \
         protected: `vdrep send --qmp` at a {} s interval after its initial copy (extra \
         arguments: `{}`); the receiver's store in `{}` and the receiver at `nice -n {}`, slice {} \
         ms, policy {} (a deployment's receiver is not on the host). {} round(s), each a run not \
         protected and a protected one (the protected first in even rounds; `vdrep unprotect` \
         after it); a write is slow above {}× its round's unprotected median.\n\n\
         Not protected / protected, per round:\n\n{}\n\
         The protected runs' writes by the views' windows (switch → views removed, from the \
         sender's log):\n\n{}\nEach view (\"first to a 64 KiB block\": the writes that waited for a \
         copy-before-write; \"guest ms lost\": the window's writes' time minus as many at the \
         median outside the views):\n\n{}\n\
         Ratio protected / not protected, median of {} rounds: median **{:.2}×** (range \
         {:.2}–{:.2}; target ≤ 1.1×: {}), p99 **{:.2}×** (range {:.2}–{:.2}; target ≤ 2×: {}). \
         Slow writes: {} not protected, {} protected (medians).\n\n{} · {}\n",
        a.region >> 20,
        a.disk >> 20,
        a.seconds,
        a.interval,
        a.vdrep_arg.join(" "),
        a.store.display(),
        a.receiver_nice,
        a.receiver_slice_ms,
        a.receiver_policy,
        r.rounds.len(),
        SLOW_FACTOR,
        rounds,
        inside,
        views,
        r.rounds.len(),
        r.ratio_median.median,
        r.ratio_median.min,
        r.ratio_median.max,
        verdict(r.ratio_median.median, r.target_ratio_median),
        r.ratio_p99.median,
        r.ratio_p99.min,
        r.ratio_p99.max,
        verdict(r.ratio_p99.median, r.target_ratio_p99),
        pct(r.share_slow_not_protected.median),
        pct(r.share_slow_protected.median),
        r.environment.date_utc,
        r.environment.git_commit,
    )
}

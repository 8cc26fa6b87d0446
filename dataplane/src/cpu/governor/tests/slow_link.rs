//! A sender on a slow link, simulated with the real [`AdaptiveLevel`] and [`Governor`] and
//! the costs of the bench's 1 GiB mix measured on this machine.

use std::collections::VecDeque;

use super::*;
use crate::pipeline::AdaptiveLevel;

/// The bench's 1 GiB mix on this machine, per ladder step (off, -3, -1, 1, 3, 6, 11):
/// payload MB per GiB of source (`bench/results/stages.md`), and the CPU workers' CPU-s per
/// GiB (read, zero detection, hashing, compression). Steps off to 3: the sender's CPU-s for
/// the GiB at each fixed level on the 100 Mbit/s veth link (session 11, two series: 3.12 and
/// 3.10, 3.97 and 3.74, 4.00 and 3.66, 3.57 and 3.52, 4.38 and 3.91) less [`QUIC_PER_GB`] ×
/// the payload: levels −3 and −1 cost *more* per source byte than level 1 (their zstd is
/// hardly cheaper on this mix — the zstd CLI at −1 and `--fast=3`: 2.71 and 2.61 CPU-s — and
/// their 10 % more wire bytes cost QUIC time). Steps 6 and 11: `stages.md` × 2.2 (session 9).
const PAYLOAD_MB: [f64; 7] = [811.0, 447.0, 434.0, 394.0, 377.0, 364.0, 356.0];
const PREP_S: [f64; 7] = [0.68, 2.52, 2.53, 2.37, 3.02, 8.3, 20.0];
/// QUIC, TLS, UDP and framing, CPU-s per GB of payload sent: the sender's tokio thread took
/// 38 % of its 3.56 CPU-s for 456 MB on the wire (`perf`, `--cpu-limit 0.10`, session 11).
const QUIC_PER_GB: f64 = 3.0;
const GIB: f64 = (1u64 << 30) as f64;

/// What a simulated run did.
#[derive(Debug)]
struct Run {
    /// Source bytes per second delivered.
    speed: f64,
    /// CPU (cores) used on average.
    cores: f64,
    /// Share of reads prepared at each ladder step.
    steps: [f64; 7],
}

/// A sender on a slow link, in 10 ms steps: two CPU workers prepare 1 MiB reads into a
/// 64 MiB queue at the level the real compression controller ([`AdaptiveLevel`]) picks,
/// paced by the governor (when `budget` is given) before each read; the link takes `link`
/// payload bytes a second from the queue; QUIC costs CPU per byte sent. The streams wait for
/// the link while the queue has bytes, for the CPU while it is empty; the controller ticks
/// every 250 ms: under a budget the governor chooses the level from the waits' verdict,
/// without one the controller moves by the waits.
fn slow_link(budget: Option<f64>, link: f64, secs: f64) -> Run {
    const QUEUE: f64 = 64.0 * MIB as f64;
    let dt = 0.01;
    let level = AdaptiveLevel::new(1, true);
    let mut gov = budget.map(|c| Governor::new(CpuLimit::new(c).unwrap(), level.ladder()));
    let (mut t, mut cpu, mut data, mut prepared, mut sent, mut done) =
        (0.0f64, 0.0f64, 0.0, 0.0, 0.0, 0.0);
    let mut queue: VecDeque<(f64, f64)> = VecDeque::new();
    let mut queued = 0.0;
    let mut workers = [Worker::default(); 2];
    let mut steps = [0u32; 7];
    let mut next_tick = 0.25;
    // The data's mix along the disk: each read's compression cost and payload vary by up to
    // ±15 % from read to read and ±8 % over seconds (the bench's windows of 1–3 s at
    // 0.10 cores moved by 5 %), the same for every level, so levels must be told apart by
    // what they cost over time, not in one window.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut mix = move |t: f64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let noise = (seed >> 11) as f64 / (1u64 << 53) as f64 * 0.3 - 0.15;
        1.0 + noise + 0.08 * (t * 0.9).sin()
    };
    let at = |t: f64, cpu: f64, d: f64, p: f64, s: f64| Sample {
        wall: Duration::from_secs_f64(t),
        cpu: Duration::from_secs_f64(cpu),
        data: d as u64,
        prepared: p as u64,
        sent: s as u64,
    };
    while t < secs {
        for w in workers.iter_mut() {
            if let Some((p, s)) = w.holding {
                if queued + p > QUEUE {
                    continue;
                }
                queue.push_back((p, s));
                queued += p;
                w.holding = None;
            }
            if w.busy.is_none() {
                if t < w.asleep {
                    continue;
                }
                if let Some(g) = gov.as_mut() {
                    let pace = g.observe(at(t, cpu, data, prepared, sent), level.step_in_use());
                    if !pace.is_zero() {
                        w.asleep = t + pace.as_secs_f64();
                        continue;
                    }
                }
                let s = level.step_in_use() as usize;
                steps[s] += 1;
                let (src, m) = (MIB as f64, mix(t));
                w.busy = Some((
                    PREP_S[s] * src / GIB * m,
                    PAYLOAD_MB[s] * 1e6 * src / GIB * m.sqrt(),
                    src,
                ));
            }
            if let Some((left, p, s)) = w.busy.as_mut() {
                let used = left.min(dt);
                *left -= used;
                cpu += used;
                if *left <= 1e-12 {
                    prepared += *p;
                    data += *s;
                    w.holding = Some((*p, *s));
                    w.busy = None;
                }
            }
        }
        let mut room = link * dt;
        while room > 0.0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            let take = room.min(front.0);
            front.0 -= take;
            room -= take;
            queued -= take;
            sent += take;
            cpu += take / 1e9 * QUIC_PER_GB;
            if front.0 <= 1e-9 {
                done += front.1;
                queue.pop_front();
            }
        }
        let idle = room / link;
        level.waited_for_link(Duration::from_secs_f64(dt - idle));
        level.waited_for_cpu(Duration::from_secs_f64(idle));
        t += dt;
        if t >= next_tick {
            next_tick += 0.25;
            match gov.as_mut() {
                Some(g) => {
                    g.observe(at(t, cpu, data, prepared, sent), level.step_in_use());
                    let bound = match level.bottleneck() {
                        1 => Bound::Link,
                        -1 => Bound::Cpu,
                        _ => Bound::Neither,
                    };
                    if let Some(s) = g.choose(bound) {
                        level.set_step(s);
                    }
                }
                None => {
                    level.tick();
                }
            }
        }
    }
    let n: u32 = steps.iter().sum();
    Run {
        speed: done / t,
        cores: cpu / t,
        steps: steps.map(|s| f64::from(s) / f64::from(n)),
    }
}

/// A simulated CPU worker thread.
#[derive(Debug, Default, Clone, Copy)]
struct Worker {
    /// The read in hand: CPU-s left, payload and source bytes.
    busy: Option<(f64, f64, f64)>,
    /// A prepared read waiting for room in the queue: payload and source bytes.
    holding: Option<(f64, f64)>,
    /// When a pacing wait ends.
    asleep: f64,
}

/// The fastest a sender could go at one fixed level within `budget` cores on `link`.
fn best_fixed(budget: f64, link: f64) -> f64 {
    (0..7)
        .map(|s| {
            let by_link = link * GIB / (PAYLOAD_MB[s] * 1e6);
            let cost = PREP_S[s] + QUIC_PER_GB * PAYLOAD_MB[s] / 1e3;
            by_link.min(budget / cost * GIB)
        })
        .fold(0.0, f64::max)
}

/// Issue 21's slow-link figure at the budgets the zstd pipe's sender used on the quiet machine
/// of session 11 (0.10–0.12 cores, 3.2–3.9 CPU-s for the GiB in 32.8 s): the budget binds at
/// every level, so what it buys is budget ÷ CPU per source byte, and the levels below 1 cost
/// as much per source byte as level 1 or more while putting more bytes on the wire. The level
/// must settle where the budget buys the most source bytes: at least 97 % of the best fixed
/// level (level 1 in this model), not at −3 or −1 (session 10's rule: 0.77× and 0.84× the pipe
/// on the bench; in this model 0.90, 0.85 and 0.91 of the best at 0.10, 0.11 and 0.115 cores
/// with 87–92 % of the reads at −3 or −1, but the best at 0.12, where its ratchet — down at
/// 95 % of the budget, up only under 80 % — is not set off here as on the bench).
#[test]
fn under_a_budget_that_binds_the_level_is_the_one_that_costs_least_per_source_byte() {
    let link = 12.2e6;
    for budget in [0.10, 0.11, 0.115, 0.12] {
        let r = slow_link(Some(budget), link, 90.0);
        let best = best_fixed(budget, link);
        eprintln!("budget {budget}: {r:?}, best fixed {:.1} MB/s", best / 1e6);
        assert!(r.cores <= budget * 1.03, "{budget}: {r:?}");
        assert!(r.speed >= 0.97 * best, "{budget}: {r:?}, best {best}");
    }
}

/// Issue 21's slow-link figure: 100 Mbit/s (12.2 MB/s of payload), the budget the zstd
/// pipe's sender used in session 9 (0.18 cores). The level must settle where the budget buys
/// the most source bytes — at least 97 % of the best fixed level — instead of
/// climbing to level 11 and falling back to "off" (session 9: 0.87× the pipe), without the
/// deep levels that cost three times as much for a few per cent; the budget holds on
/// average.
#[test]
fn on_a_slow_link_the_budget_buys_the_level_the_link_can_use() {
    let link = 12.2e6;
    for budget in [0.18, 0.3] {
        let r = slow_link(Some(budget), link, 90.0);
        let best = best_fixed(budget, link);
        eprintln!("budget {budget}: {r:?}, best fixed {:.1} MB/s", best / 1e6);
        assert!(r.cores <= budget * 1.03, "{budget}: {r:?}");
        assert!(r.speed >= 0.97 * best, "{budget}: {r:?}, best {best}");
        assert!(
            r.steps[5] + r.steps[6] < 0.02,
            "{budget}: the deep levels cost 3× for a few per cent: {r:?}"
        );
    }
    // A budget with room for three times level 3 buys the deep levels.
    let r = slow_link(Some(0.6), link, 90.0);
    eprintln!("budget 0.6: {r:?}");
    assert!(r.steps[5] + r.steps[6] > 0.5, "{r:?}");
    assert!(r.cores <= 0.6 * 1.03, "{r:?}");
    // Without a budget the controller climbs to the top of the ladder as before.
    let r = slow_link(None, link, 30.0);
    assert!(r.steps[6] > 0.8, "{r:?}");
}

//! The CPU workers' gate under a budget that binds all the time, as on the idle host of
//! session 11's failing runs (`--cpu-limit 0.10`, level 1 at 100 Mbit/s: 22 CPU-s per GiB,
//! 0.15× the zstd pipe): waking costs CPU, timers fire on time, and QUIC spends CPU while
//! the workers sleep.

use super::*;

/// What a worker's wake-up costs: timer, context switch, the sample's `getrusage` (the
/// reverted run's profile: 68,000 sleeps, `finish_task_switch` alone 0.6 CPU-s of them on a
/// loaded host; more where the CPU idles between them).
const WAKE: f64 = 30e-6;
/// One 1 MiB read prepared at level 1: ~4 CPU-ms (3.5–5 CPU-s per GiB).
const READ: f64 = 4e-3;
/// QUIC, TLS and UDP meanwhile: about a third of a 0.10-core budget.
const QUIC: f64 = 0.03;

/// What `secs` of two gated workers did.
#[derive(Debug)]
struct Gated {
    /// CPU seconds spent in reads.
    reads_cpu: f64,
    /// CPU seconds spent in all (reads, wake-ups, QUIC).
    cpu: f64,
    /// Times a worker asked the governor.
    wakes: u64,
}

/// Two CPU workers, each in a loop of `gate` (sample, wait as told, sample again) and a read
/// of [`READ`] CPU-s at full speed; QUIC spends [`QUIC`] cores throughout. Every sample
/// costs [`WAKE`] first; waits end exactly when asked (an idle host's timers).
fn gated(cores: f64, secs: f64) -> Gated {
    let mut g = gov(cores);
    // Per worker: when it next acts, and whether it is reading (the read's start) then.
    let mut next = [0.0f64; 2];
    let mut reading: [Option<f64>; 2] = [None; 2];
    let (mut charged, mut reads_cpu, mut wakes, mut reads) = (0.0f64, 0.0f64, 0u64, 0u64);
    loop {
        let w = if next[0] <= next[1] { 0 } else { 1 };
        let t = next[w];
        if t >= secs {
            break;
        }
        if reading[w].take().is_some() {
            charged += READ;
            reads_cpu += READ;
            reads += 1;
        }
        charged += WAKE;
        wakes += 1;
        // The other worker's read so far counts (getrusage sees the CPU as it is used).
        let partial: f64 = reading.iter().flatten().map(|s| (t - s).min(READ)).sum();
        let cpu = charged + QUIC * t + partial;
        let s = sample(t, cpu, reads * MIB, reads * MIB / 2, reads * MIB / 2);
        let pace = g.observe(s, 3).as_secs_f64();
        if pace == 0.0 {
            reading[w] = Some(t);
            next[w] = t + READ;
        } else {
            next[w] = t + pace;
        }
    }
    Gated {
        reads_cpu,
        cpu: charged + QUIC * secs,
        wakes,
    }
}

/// The budget goes to reads, not to waking up: at 0.10 and 0.12 cores (the pipe's sender on
/// the quiet machine) and at 0.05 (the least limit), the reads get at least 85 % of what
/// QUIC leaves, a worker waits at least [`PACE_SLACK`] at a time, and the limit holds. The reverted
/// governor paid each debt back exactly: each worker woke into the debt of its own wake-up
/// and QUIC's meanwhile, and in this model never read at all.
#[test]
fn a_budget_that_binds_all_the_time_goes_to_reads_not_to_waking_up() {
    let secs = 30.0;
    for cores in [0.05, 0.10, 0.12, 0.5] {
        let r = gated(cores, secs);
        let for_reads = (cores - QUIC) * secs;
        eprintln!("{cores}: {r:?}, {:.2} CPU-s for reads", for_reads);
        assert!(r.reads_cpu >= 0.85 * for_reads, "{cores}: {r:?}");
        // Each worker asks once after a read and at most once per PACE_SLACK while it waits.
        let waits = 2.0 * secs / PACE_SLACK.as_secs_f64();
        assert!(
            r.wakes as f64 <= r.reads_cpu / READ + waits,
            "{cores}: {r:?}"
        );
        let credit = cores * START_CREDIT.as_secs_f64() + 2.0 * (READ + WAKE);
        assert!(r.cpu <= cores * secs + credit, "{cores}: {r:?}");
    }
}

/// The failing trace's state: the bucket a few tens of CPU-µs overdrawn (its `tokens` read
/// −2e-5 to −5e-3 at every tick). The wait pays the debt back with [`PACE_SLACK`] to spare,
/// so that the worker's own wake-up does not put it in debt again.
#[test]
fn a_worker_wakes_from_a_wait_with_budget_in_hand() {
    let mut g = gov(0.10);
    // Start credit 0.025 CPU-s, spent at once with 30 µs more: 30 µs overdrawn.
    g.observe(sample(0.0, 0.0, 0, 0, 0), 3);
    let pace = g.observe(sample(0.0, 0.02503, 0, 0, 0), 3);
    assert!(pace >= PACE_SLACK, "{pace:?}");
    // Woken after exactly that wait, having spent 30 µs on waking: go on.
    let t = pace.as_secs_f64();
    assert_eq!(
        g.observe(sample(t, 0.02506, 0, 0, 0), 3),
        Duration::ZERO,
        "tokens {}",
        g.tokens()
    );
}

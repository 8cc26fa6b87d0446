//! Clock jumps during continuous protection, through the test-only clock offset (never the
//! host clock): `vdrep send --interval 1s` and `vdrep receive` both read their wall clock
//! through `VDREP_TEST_CLOCK_OFFSET_FILE`, a file the test rewrites while they run (the
//! processes re-read it every 100 ms). One host, one clock: both processes share the file.
//!
//! The wall clock goes 20:00 (off hours) → the next day's 10:00 (a 14 h jump forward, into
//! work hours) → 06:00 of the first day (a 28 h jump back, off hours). Cycles are driven by
//! monotonic time and must keep committing through both jumps; recovery points must stay in
//! cycle order with times that never go back; the forward jump must not make retention
//! prune the history; and the bandwidth schedule must switch its limit with each jump.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::{civil, tz::TimeZone};
use vdrep_tests::cycles::{changes, failover_local, same_bytes, Pattern, TrackedDisk};
use vdrep_tests::images::{seeded_raw, Kind};
use vdrep_tests::jump_clock_to;
use vdrep_tests::procs::{certs, read_log, Receiver, Send};
use vdrep_tests::vdrep_ok;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Waits until `log` holds `n` more lines with `needle` than it had (`before`); returns how
/// long that took.
fn wait_more(log: &Path, needle: &str, before: usize, n: usize, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if count(&read_log(log), needle) >= before + n {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "fewer than {n} new `{needle}` lines within {timeout:?}; log:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `vdrep points --json` of vm1's only disk: (cycle, unix time) oldest first. Read while the
/// receiver runs (the command takes no lock).
fn points(store: &Path) -> Vec<(u64, u64)> {
    let out = vdrep_ok(&[
        "points",
        "--store",
        store.to_str().unwrap(),
        "--vm",
        "vm1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["disks"][0]["points"]
        .as_array()
        .unwrap_or_else(|| panic!("no points in {v}"))
        .iter()
        .map(|p| (p["cycle"].as_u64().unwrap(), p["unix"].as_u64().unwrap()))
        .collect()
}

/// Cycle numbers go up by one and times never go back.
fn assert_ordered(pts: &[(u64, u64)], what: &str) {
    for w in pts.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0 + 1,
            "{what}: cycles not consecutive: {pts:?}"
        );
        assert!(
            w[1].1 >= w[0].1,
            "{what}: a point's time went back: {pts:?}"
        );
    }
}

/// A receiver and a tracked raw disk (seeded with `seed`) whose processes read the clock
/// through the test offset file, which says `now` to begin with.
struct Rig {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tls: PathBuf,
    store: PathBuf,
    offset: PathBuf,
    off_env: String,
    rx: Receiver,
    disk: TrackedDisk,
}

impl Rig {
    fn start(seed: u64, now: jiff::Timestamp) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let tls = certs(&dir.join("tls"), &["hv01"]);
        let store = dir.join("store");
        let offset = dir.join("clock.offset");
        jump_clock_to(&offset, now);
        let off_env = offset.to_str().unwrap().to_string();
        let env = [("VDREP_TEST_CLOCK_OFFSET_FILE", off_env.as_str())];
        let rx = Receiver::start_env(&store, &tls, &["hv01=vm1"], &env);
        let path = seeded_raw(&dir.join("disk.raw"), SIZE, seed, MIB as usize, 3);
        let disk = TrackedDisk::new(&path, Kind::Raw, SIZE, &dir.join("scratch"));
        Rig {
            _tmp: tmp,
            dir,
            tls,
            store,
            offset,
            off_env,
            rx,
            disk,
        }
    }

    /// `vdrep send --interval 1s --give-up-after 120s` of the disk to the receiver, on the
    /// same test clock.
    fn send(&self, log: &Path) -> Send {
        Send::new(
            &self.rx.to(),
            &self.tls,
            "hv01",
            "vm1",
            &[&self.disk.path],
            log,
        )
        .env("VDREP_TEST_CLOCK_OFFSET_FILE", &self.off_env)
        .arg("--interval")
        .arg("1s")
        .arg("--give-up-after")
        .arg("120s")
    }
}

/// `h:m` UTC on `day`.
fn utc(day: civil::Date, h: i8, m: i8) -> jiff::Timestamp {
    day.at(h, m, 0, 0)
        .to_zoned(TimeZone::UTC)
        .unwrap()
        .timestamp()
}

#[test]
fn clock_jumps_forward_and_back_keep_cycles_committing_points_ordered_history_kept_and_switch_the_bandwidth_window(
) {
    // Day one, 20:00 UTC: off hours.
    let day = civil::date(2031, 3, 12);
    let at = |d: civil::Date, h: i8| utc(d, h, 0);
    let r = Rig::start(71, at(day, 20));
    let send_log = r.dir.join("send.log");
    let state = r.dir.join("state");
    let send = r
        .send(&send_log)
        .arg("--retention")
        .arg("2h")
        .arg("--rpo-threshold")
        .arg("30s")
        .arg("--state")
        .arg(state.to_str().unwrap())
        .arg("--work-days")
        .arg("all")
        .arg("--work-hours")
        .arg("09:00-18:00")
        .arg("--tz")
        .arg("UTC")
        .arg("--work-bandwidth")
        .arg("8Mbit")
        .arg("--off-bandwidth")
        .arg("400Mbit");
    let mut child = send.spawn();
    let committed = "cycle committed as a recovery point";
    let rx_log = r.rx.log.clone();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(72);
    let mut write = |r: &Rig| {
        r.disk.write(&changes(
            Pattern::Scattered {
                n: 8,
                max: 256 << 10,
            },
            SIZE,
            &mut rng,
        ))
    };

    // Off hours: the initial copy, then three cycles with writes.
    wait_more(&rx_log, committed, 0, 1, Duration::from_secs(60));
    assert!(
        read_log(&send_log).contains("bandwidth limit now 400000 kbit/s"),
        "no off-hours limit at 20:00:\n{}",
        read_log(&send_log)
    );
    for _ in 0..3 {
        write(&r);
        let n = count(&read_log(&rx_log), committed);
        wait_more(&rx_log, committed, n, 1, Duration::from_secs(20));
    }
    let before_jump = points(&r.store);
    assert_ordered(&before_jump, "before the jumps");
    let t_evening = before_jump.last().unwrap().1;

    // 14 h forward, into work hours: the limit drops within a second, cycles go on, and a
    // retention of 2 h does not prune the points of "14 h ago".
    let work = count(&read_log(&send_log), "bandwidth limit now 8000 kbit/s");
    let n = count(&read_log(&rx_log), committed);
    jump_clock_to(&r.offset, at(day.tomorrow().unwrap(), 10));
    let switched = wait_more(
        &send_log,
        "bandwidth limit now 8000 kbit/s",
        work,
        1,
        Duration::from_secs(5),
    );
    assert!(
        switched < Duration::from_millis(1500),
        "work-hour limit only {switched:?} after the jump"
    );
    for _ in 0..3 {
        write(&r);
        let m = count(&read_log(&rx_log), committed);
        wait_more(&rx_log, committed, m, 1, Duration::from_secs(20));
    }
    assert!(count(&read_log(&rx_log), committed) >= n + 3);
    let after_forward = points(&r.store);
    assert_ordered(&after_forward, "after the forward jump");
    assert_eq!(
        after_forward.first().map(|p| p.0),
        Some(0),
        "the forward jump pruned history: {after_forward:?}"
    );
    let t_morning = after_forward.last().unwrap().1;
    assert!(
        t_morning >= t_evening + 13 * 3600,
        "points after the jump are not stamped with the jumped clock: {after_forward:?}"
    );

    // 28 h back, to 06:00 of day one (before every point so far): off hours again, cycles go
    // on, and no point is stamped earlier than the one before it.
    let off = count(&read_log(&send_log), "bandwidth limit now 400000 kbit/s");
    jump_clock_to(&r.offset, at(day, 6));
    let switched = wait_more(
        &send_log,
        "bandwidth limit now 400000 kbit/s",
        off,
        1,
        Duration::from_secs(5),
    );
    assert!(
        switched < Duration::from_millis(1500),
        "off-hours limit only {switched:?} after the jump back"
    );
    for _ in 0..3 {
        write(&r);
        let m = count(&read_log(&rx_log), committed);
        wait_more(&rx_log, committed, m, 1, Duration::from_secs(20));
    }
    // Two quiet cycles, so the newest point holds every write.
    let m = count(&read_log(&rx_log), committed);
    wait_more(&rx_log, committed, m, 2, Duration::from_secs(20));
    let after_back = points(&r.store);
    assert_ordered(&after_back, "after the backward jump");
    assert_eq!(after_back.first().map(|p| p.0), Some(0), "{after_back:?}");
    assert!(
        after_back.len() >= after_forward.len() + 5,
        "cycles stopped after the jump back: {after_back:?}"
    );
    assert!(after_back.last().unwrap().1 >= t_morning, "{after_back:?}");
    let health: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("health.json")).unwrap()).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let log = read_log(&send_log);
    assert_eq!(
        health["vms"][0]["state"], "Normal",
        "health after the jumps: {health:#}\nsender log:\n{log}"
    );
    assert!(
        !log.contains("giving up") && !log.contains("recoverable error"),
        "the jumps caused errors:\n{log}"
    );

    // The newest point is the source as it is now.
    let mut rx = r.rx;
    rx.kill9();
    let out = r.dir.join("newest.raw");
    let c = failover_local(&r.store, "vm1", "disk", &r.disk.path, SIZE, None, &out);
    assert!(c >= after_back.last().unwrap().0, "newest point {c}");
    assert!(
        same_bytes(&r.disk.path, &out),
        "newest point {c} differs from the source"
    );
}

/// KB3056159 / issue 7: an automatic resync (here: the active change log lost, so the next
/// switch marks the disk) waits for the next non-work period instead of reading the whole
/// disk during work hours; delta replication for the disk stays stopped meanwhile; once the
/// clock leaves work hours the resync runs and the replica equals the source again.
#[test]
fn an_automatic_resync_waits_for_non_work_hours_then_runs_and_the_replica_follows_the_source() {
    let day = civil::date(2031, 3, 12);
    let at = |h: i8| utc(day, h, 0);
    // 10:00: work hours.
    let mut r = Rig::start(81, at(10));
    let send_log = r.dir.join("send.log");
    let mut child = r
        .send(&send_log)
        .arg("--state")
        .arg(r.dir.join("state").to_str().unwrap())
        .arg("--work-days")
        .arg("all")
        .arg("--work-hours")
        .arg("09:00-18:00")
        .arg("--tz")
        .arg("UTC")
        .arg("--work-bandwidth")
        .arg("100Mbit")
        .arg("--off-bandwidth")
        .arg("400Mbit")
        .spawn();
    let committed = "cycle committed as a recovery point";
    let rx_log = r.rx.log.clone();
    wait_more(&rx_log, committed, 0, 2, Duration::from_secs(60));

    // Tracked writes, then their log is lost before the switch that would close it.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(82);
    r.disk.write(&changes(
        Pattern::Scattered {
            n: 16,
            max: 256 << 10,
        },
        SIZE,
        &mut rng,
    ));
    {
        // Under the tracking lock, so no switch is half-way.
        let _l = r.disk.tracker().lock().unwrap();
        std::fs::remove_file(&r.disk.tracker().paths().active).unwrap();
    }
    wait_more(
        &send_log,
        "it waits for the next non-work period",
        0,
        1,
        Duration::from_secs(20),
    );
    // Work hours go on: no resync, no cycle for the disk.
    let n = count(&read_log(&rx_log), committed);
    std::thread::sleep(Duration::from_secs(4));
    let log = read_log(&send_log);
    assert!(
        !log.contains("resync started"),
        "the resync started during work hours:\n{log}"
    );
    assert_eq!(
        count(&read_log(&rx_log), committed),
        n,
        "cycles were committed across the lost log"
    );
    assert!(r.disk.tracker().resync_reason().is_some(), "no resync mark");

    // 19:00: off hours. The resync runs at the next cycle's turn.
    jump_clock_to(&r.offset, at(19));
    let took = wait_more(&send_log, "resync committed", 0, 1, Duration::from_secs(30));
    assert!(
        took < Duration::from_secs(10),
        "the resync began {took:?} after work hours ended"
    );
    let _ = child.kill();
    let _ = child.wait();
    r.rx.kill9();
    let out = r.dir.join("newest.raw");
    failover_local(&r.store, "vm1", "disk", &r.disk.path, SIZE, None, &out);
    assert!(
        same_bytes(&r.disk.path, &out),
        "after the resync the newest point differs from the source"
    );
}

/// `send --interval 1s --initial-at 22:00`: change tracking starts at once, the initial copy
/// waits for the start time on the sender's clock (nothing reaches the replica before it),
/// and starts when the clock gets there — here by a jump of the test-only offset; writes
/// made while it waited are in the replica's first cycles.
#[test]
fn an_initial_replication_scheduled_for_later_waits_for_its_start_time_with_tracking_on() {
    let day = civil::date(2031, 3, 12);
    let at = |h: i8, m: i8| utc(day, h, m);
    let mut r = Rig::start(91, at(18, 0));
    let send_log = r.dir.join("send.log");
    let mut child = r
        .send(&send_log)
        .arg("--initial-at")
        .arg("22:00")
        .arg("--tz")
        .arg("UTC")
        .spawn();
    wait_more(
        &send_log,
        "initial replication scheduled",
        0,
        1,
        Duration::from_secs(30),
    );
    // Tracked while it waits.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(92);
    r.disk.write(&changes(
        Pattern::Scattered { n: 8, max: MIB },
        SIZE,
        &mut rng,
    ));
    std::thread::sleep(Duration::from_secs(3));
    let log = read_log(&send_log);
    assert_eq!(
        count(&log, "initial replication (writes are tracked"),
        0,
        "the copy started before its time:\n{log}"
    );
    assert!(
        !r.store.join("vm1").join("disk.vhd").exists(),
        "a replica was committed before the start time"
    );
    assert!(
        log.contains("2031-03-12T22:00:00Z"),
        "the log does not say when the copy starts:\n{log}"
    );
    // 21:59:58: two seconds before the start.
    jump_clock_to(&r.offset, at(21, 59) + jiff::SignedDuration::from_secs(58));
    let waited = wait_more(
        &send_log,
        "initial replication (writes are tracked",
        0,
        1,
        Duration::from_secs(30),
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "the copy started {waited:?} after 21:59:58, before 22:00"
    );
    let committed = "cycle committed as a recovery point";
    wait_more(&r.rx.log.clone(), committed, 0, 2, Duration::from_secs(60));
    let frozen = r.dir.join("frozen.raw");
    r.disk.freeze(&frozen);
    let _ = child.kill();
    let _ = child.wait();
    r.rx.kill9();
    let out = r.dir.join("point.raw");
    failover_local(&r.store, "vm1", "disk", &r.disk.path, SIZE, None, &out);
    assert!(
        same_bytes(&out, &frozen),
        "the newest point differs from the source (writes made while the copy waited lost?)"
    );
}

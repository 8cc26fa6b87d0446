//! The set switch: one instant for all disks, and a crash anywhere completed for all of
//! them before the next tracked write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use vdrep_proto::Guid;

use super::*;
use crate::hrl::{scan_valid_prefix, HrlLog, ReadOptions};

const SIZE: u64 = 4 << 20;

/// Disks with tracking started, `names` as `folder/file`.
fn disks(root: &Path, names: &[&str]) -> Vec<Tracker> {
    names
        .iter()
        .map(|n| {
            let disk = root.join(n);
            std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
            std::fs::write(&disk, vec![0u8; SIZE as usize]).unwrap();
            let t = Tracker::new(&disk, SIZE);
            t.lock()
                .unwrap()
                .start(Guid::NIL, crate::clock::system_time())
                .unwrap();
            t
        })
        .collect()
}

/// A tracked write of one sector holding `tag`, as a writer makes it.
fn write(t: &Tracker, tag: u8) {
    t.lock_for_write(crate::clock::system_time())
        .unwrap()
        .append(
            &[(tag as u64 * 512, Bytes::from(vec![tag; 512]))],
            crate::clock::system_time(),
        )
        .unwrap();
}

/// The tags a log holds.
fn tags(path: &Path) -> Vec<u8> {
    let log = scan_valid_prefix(path, &ReadOptions::default())
        .unwrap()
        .log;
    log.entries()
        .iter()
        .map(|e| log.read_data(e).unwrap()[0])
        .collect()
}

fn active_id(t: &Tracker) -> Guid {
    crate::hrl::read_log_header(&t.paths().active)
        .unwrap()
        .unique_id
}

fn set<'a>(ts: &'a [Tracker], cycles: &[u64]) -> Vec<SwitchDisk<'a>> {
    ts.iter()
        .zip(cycles)
        .enumerate()
        .map(|(i, (t, &cycle))| SwitchDisk {
            vm: if i < 2 { "vm1" } else { "vm2" },
            tracker: t,
            cycle,
        })
        .collect()
}

/// Every disk switched into its cycle: the closed log is closed (shippable) and holds the
/// writes before, the new active log is chained to it and takes the writes after, and no
/// prepared log or intent is left.
fn assert_switched(ts: &[Tracker], cycles: &[u64], before: &[(u64, Guid, Vec<u8>)]) {
    for ((t, &c), (_, id, want)) in ts.iter().zip(cycles).zip(before) {
        let p = t.paths();
        let closed = HrlLog::open(&p.closed(c), &ReadOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.closed(c).display()));
        assert_eq!(closed.header().unique_id, *id);
        assert_eq!(&tags(&p.closed(c)), want, "{}", p.disk.display());
        let active = scan_valid_prefix(&p.active, &ReadOptions::default())
            .unwrap()
            .log;
        assert_eq!(active.header().previous_unique_id, *id, "chained");
        assert!(p.find_next().unwrap().is_none(), "no prepared log left");
        assert!(!p.switch.exists(), "no intent left");
    }
}

#[test]
fn a_set_switch_closes_every_disks_log_into_its_own_cycle_at_one_instant() {
    let dir = tempfile::tempdir().unwrap();
    let ts = disks(dir.path(), &["a/os.raw", "a/data.raw", "b/web.raw"]);
    for (i, t) in ts.iter().enumerate() {
        write(t, i as u8 + 1);
    }
    let before: Vec<_> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| (0, active_id(t), vec![i as u8 + 1]))
        .collect();
    let cycles = [4, 3, 9];
    let sw = switch_set(&set(&ts, &cycles), crate::clock::system_time()).unwrap();
    assert_switched(&ts, &cycles, &before);
    assert_eq!(
        sw.vms,
        vec![
            IntentVm {
                vm: "vm1".into(),
                cycle: 4
            },
            IntentVm {
                vm: "vm2".into(),
                cycle: 9
            }
        ],
        "a VM's cycle is the highest of its disks'"
    );
    assert_eq!(sw.disks[2].closed, ts[2].paths().closed(9));
    assert!(sw.released_at >= sw.locked_at);
    // Writes after the switch go to the new logs.
    write(&ts[0], 7);
    assert_eq!(tags(&ts[0].paths().active), vec![7]);
}

#[test]
fn a_set_switch_refuses_a_disk_named_twice_or_without_an_active_log() {
    let dir = tempfile::tempdir().unwrap();
    let ts = disks(dir.path(), &["os.raw", "data.raw"]);
    let twice = [ts[0].clone(), ts[0].clone()];
    let e = switch_set(&set(&twice, &[1, 1]), crate::clock::system_time()).unwrap_err();
    assert!(e.to_string().contains("named twice"), "{e}");
    std::fs::remove_file(&ts[1].paths().active).unwrap();
    let e = switch_set(&set(&ts, &[1, 1]), crate::clock::system_time()).unwrap_err();
    assert!(e.needs_resync(), "{e}");
    // Refused before any intent: nothing was renamed (a prepared log left behind is
    // dropped by the next switch or start).
    assert!(!ts[0].paths().switch.exists());
    assert!(!ts[0].paths().closed(1).exists());
}

/// How far a killed switch got.
#[derive(Debug, Clone, Copy)]
enum Killed {
    /// Next logs prepared, no intent.
    Prepared,
    /// Intents written (and, with `renamed`, that many disks switched; with `torn`, the
    /// next disk half renamed).
    Intents { renamed: usize, torn: bool },
    /// Everything renamed, old logs not closed, intents left.
    Renamed,
}

/// Replays a set switch's steps by hand up to `k`, as a kill -9 would leave them (the
/// intents' locks are released, as a dead process's are).
fn kill_at(ts: &[Tracker], cycles: &[u64], k: Killed) {
    let now = crate::clock::system_time();
    let mut intent = SwitchIntent {
        vms: vec![IntentVm {
            vm: "vm1".into(),
            cycle: *cycles.iter().max().unwrap(),
        }],
        disks: Vec::new(),
    };
    for (t, &c) in ts.iter().zip(cycles) {
        let id = active_id(t);
        HrlWriter::create(
            &t.paths().next(c),
            &WriterOptions::new(crate::layout::random_guid(), id, SIZE, now),
        )
        .unwrap();
        intent.disks.push(IntentDisk {
            vm: "vm1".into(),
            disk: std::path::absolute(&t.paths().disk)
                .unwrap()
                .to_str()
                .unwrap()
                .into(),
            cycle: c,
            size: SIZE,
        });
    }
    if let Killed::Prepared = k {
        return;
    }
    for t in ts {
        drop(intent::write(&t.paths().switch, &intent).unwrap());
    }
    let (renamed, torn) = match k {
        Killed::Intents { renamed, torn } => (renamed, torn),
        _ => (ts.len(), false),
    };
    for (i, (t, &c)) in ts.iter().zip(cycles).enumerate() {
        let p = t.paths();
        if i < renamed || (i == renamed && torn) {
            std::fs::rename(&p.active, p.closed(c)).unwrap();
        }
        if i < renamed {
            std::fs::rename(p.next(c), &p.active).unwrap();
        }
    }
}

#[test]
fn a_set_switch_killed_at_any_step_is_completed_for_every_disk_before_the_next_write() {
    let cases = [
        Killed::Intents {
            renamed: 0,
            torn: false,
        },
        Killed::Intents {
            renamed: 0,
            torn: true,
        },
        Killed::Intents {
            renamed: 1,
            torn: false,
        },
        Killed::Intents {
            renamed: 1,
            torn: true,
        },
        Killed::Intents {
            renamed: 2,
            torn: false,
        },
        Killed::Renamed,
    ];
    for k in cases {
        // The next write on any disk of the set completes the switch for all of them.
        for writer in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let ts = disks(dir.path(), &["a/os.raw", "a/data.raw", "b/log.raw"]);
            for (i, t) in ts.iter().enumerate() {
                write(t, i as u8 + 1);
            }
            let before: Vec<_> = ts
                .iter()
                .enumerate()
                .map(|(i, t)| (0, active_id(t), vec![i as u8 + 1]))
                .collect();
            let cycles = [5, 5, 2];
            kill_at(&ts, &cycles, k);
            write(&ts[writer], 9);
            assert_switched(&ts, &cycles, &before);
            assert_eq!(
                tags(&ts[writer].paths().active),
                vec![9],
                "{k:?} writer {writer}"
            );
        }
    }
}

#[test]
fn a_sender_start_completes_a_killed_set_switch_and_drops_an_unstarted_one() {
    let dir = tempfile::tempdir().unwrap();
    let ts = disks(dir.path(), &["os.raw", "data.raw"]);
    write(&ts[0], 1);
    write(&ts[1], 2);
    let before = vec![
        (0, active_id(&ts[0]), vec![1]),
        (0, active_id(&ts[1]), vec![2]),
    ];
    kill_at(
        &ts,
        &[3, 3],
        Killed::Intents {
            renamed: 1,
            torn: false,
        },
    );
    // The start (sender/protect.rs): complete, then the single-disk recovery finds nothing.
    let done = complete_interrupted(&ts[1], crate::clock::system_time())
        .unwrap()
        .unwrap();
    assert_eq!(done.disks.len(), 2);
    assert_switched(&ts, &[3, 3], &before);
    assert!(complete_interrupted(&ts[0], crate::clock::system_time())
        .unwrap()
        .is_none());
    for t in &ts {
        assert_eq!(
            t.lock()
                .unwrap()
                .finish_switch(crate::clock::system_time())
                .unwrap(),
            None
        );
    }

    // Killed before any intent: nothing was switched; the prepared logs go and the writes
    // stay in the active logs, on every disk.
    write(&ts[0], 4);
    kill_at(&ts, &[4, 4], Killed::Prepared);
    write(&ts[1], 5);
    for t in &ts {
        assert!(complete_interrupted(t, crate::clock::system_time())
            .unwrap()
            .is_none());
        assert_eq!(
            t.lock()
                .unwrap()
                .finish_switch(crate::clock::system_time())
                .unwrap(),
            None
        );
        assert!(t.paths().find_next().unwrap().is_none());
        assert!(!t.paths().closed(4).exists());
    }
    assert_eq!(tags(&ts[0].paths().active), vec![4]);
    assert_eq!(tags(&ts[1].paths().active), vec![5]);
}

#[test]
fn a_writer_does_not_wait_for_a_live_switch_that_has_not_renamed_yet() {
    let dir = tempfile::tempdir().unwrap();
    let ts = disks(dir.path(), &["os.raw", "data.raw"]);
    let now = crate::clock::system_time();
    // A live switch between its intents and its locks: the intent is held.
    let mut intent = SwitchIntent {
        vms: vec![IntentVm {
            vm: "vm1".into(),
            cycle: 1,
        }],
        disks: Vec::new(),
    };
    for t in &ts {
        HrlWriter::create(
            &t.paths().next(1),
            &WriterOptions::new(crate::layout::random_guid(), active_id(t), SIZE, now),
        )
        .unwrap();
        intent.disks.push(IntentDisk {
            vm: "vm1".into(),
            disk: std::path::absolute(&t.paths().disk)
                .unwrap()
                .to_str()
                .unwrap()
                .into(),
            cycle: 1,
            size: SIZE,
        });
    }
    let held: Vec<_> = ts
        .iter()
        .map(|t| intent::write(&t.paths().switch, &intent).unwrap())
        .collect();
    // The write goes to the current log (wholly before the switch) without waiting.
    write(&ts[0], 1);
    assert_eq!(tags(&ts[0].paths().active), vec![1]);
    assert!(
        ts[0].paths().next(1).exists(),
        "the writer did not switch for the live sender"
    );

    // Half renamed while held (a completer that has not finished): the writer waits for
    // the holder, then completes it itself once the holder is gone.
    let p = ts[0].paths();
    std::fs::rename(&p.active, p.closed(1)).unwrap();
    std::fs::rename(p.next(1), &p.active).unwrap();
    std::thread::scope(|sc| {
        let h = sc.spawn(|| write(&ts[1], 2));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !h.is_finished(),
            "the writer must not write into a half-switched set"
        );
        drop(held);
        h.join().unwrap();
    });
    assert_eq!(tags(&ts[1].paths().closed(1)), Vec::<u8>::new());
    assert_eq!(tags(&ts[1].paths().active), vec![2]);
    assert!(!ts[1].paths().switch.exists() && !ts[0].paths().switch.exists());
}

#[test]
fn a_corrupt_intent_stops_writes_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ts = disks(dir.path(), &["os.raw"]);
    std::fs::write(&ts[0].paths().switch, b"vdrep-switch-intent 1\n{\"vms\":[").unwrap();
    let e = ts[0]
        .lock_for_write(crate::clock::system_time())
        .err()
        .unwrap()
        .to_string();
    let name: PathBuf = ts[0].paths().switch.clone();
    assert!(e.contains(name.to_str().unwrap()), "{e}");
    assert!(e.contains("torn or corrupt"), "{e}");
}

#[test]
fn what_runs_inside_a_set_switch_sees_every_lock_held_and_no_log_renamed_yet() {
    let dir = tempfile::tempdir().unwrap();
    let ts = disks(dir.path(), &["a/os.raw", "a/data.raw", "b/web.raw"]);
    let mut seen = Vec::new();
    switch_set_with(
        &set(&ts, &[1, 1, 1]),
        crate::clock::system_time(),
        &mut || {
            for t in &ts {
                // Another open file of the lock, as a writer's: flock refuses it while held.
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&t.paths().lock)
                    .unwrap();
                let free = super::LockGuard::try_on_file(f).unwrap().is_some();
                seen.push((free, t.paths().closed(1).exists()));
            }
        },
    )
    .unwrap();
    assert_eq!(
        seen,
        vec![(false, false); 3],
        "inside: every lock held, nothing renamed"
    );
    for t in &ts {
        assert!(t.paths().closed(1).is_file(), "switched after it");
    }
    // A switch refused before the hold does not run it.
    std::fs::remove_file(&ts[2].paths().active).unwrap();
    let mut ran = false;
    assert!(switch_set_with(
        &set(&ts, &[2, 2, 2]),
        crate::clock::system_time(),
        &mut || { ran = true }
    )
    .is_err());
    assert!(!ran, "ran although the switch failed before the hold");
}

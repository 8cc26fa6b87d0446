//! `vdrep unprotect` (issue 17, item 6): `--disk PATH[=NAME]` removes only the disks named —
//! replica, recovery points, change-tracking files beside PATH — and the VM's other disks,
//! points and jobs stay; the store's name defaults to PATH's stem and must be given for a
//! disk `send` named `STEM-2`; naming the VM's last disk removes the VM with its jobs. It
//! asks on a terminal (a real pseudo-terminal here) and refuses without `--yes` when stdin
//! is not one, removing nothing.
//!
//! Before the fix, `unprotect --vm vm1 --disk os.vhdx` removed every disk of the VM, its
//! jobs and its folder, and never asked.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use vdrep_tests::images::seeded_raw;
use vdrep_tests::procs::{certs, finish, Receiver, Send};
use vdrep_tests::{vdrep, vdrep_command, vdrep_ok};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `vdrep points --store STORE --vm VM --json`, parsed.
fn points(store: &Path, vm: &str) -> serde_json::Value {
    let out = vdrep_ok(&["points", "--store", s(store), "--vm", vm, "--json"]);
    serde_json::from_slice(&out.stdout).expect("points --json prints JSON")
}

/// Disk name → number of recovery points, from `points --json`.
fn disk_points(store: &Path, vm: &str) -> Vec<(String, usize)> {
    points(store, vm)["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["disk"].as_str().unwrap().to_string(),
                d["points"].as_array().unwrap().len(),
            )
        })
        .collect()
}

/// The change-tracking files beside `disk` (names starting with its file name and a dot).
fn tracking(disk: &Path) -> Vec<String> {
    let name = format!("{}.", disk.file_name().unwrap().to_str().unwrap());
    let mut v: Vec<String> = std::fs::read_dir(disk.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&name))
        .collect();
    v.sort();
    v
}

/// Every file under `dir`, relative, sorted: a snapshot to show nothing changed.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Runs `vdrep ARGS` with stdin and stderr on a new pseudo-terminal, typing `answer`;
/// returns the exit code, stdout and what the terminal showed.
fn on_terminal(args: &[&str], answer: &str) -> (Option<i32>, String, String) {
    let (mut master, slave) = {
        let (mut m, mut sl) = (0, 0);
        // SAFETY: openpty writes two new descriptors we then own; no name, termios or size.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut sl,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors are open and owned by nobody else.
        unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(sl)) }
    };
    let mut c = vdrep_command();
    c.args(args)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .stdout(Stdio::piped());
    let mut child = c.spawn().expect("cannot start vdrep");
    drop(c); // our copies of the terminal's slave side
    master.write_all(answer.as_bytes()).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let shown = std::thread::spawn(move || {
        // Ends with EIO once the child, the last holder of the slave side, exits.
        let mut v = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&v).into_owned()
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("vdrep {args:?} still waits on the terminal after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), out.join().unwrap(), shown.join().unwrap())
}

/// A VM of three raw disks — `a/os.raw`, `b/os.raw` and `a/data.raw`, which `send` names
/// `os`, `os-2` and `data` — protected with `--interval 1s` until each has committed a
/// cycle, so change tracking lies beside every disk; then sender and receiver are stopped.
struct Protected {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    os: PathBuf,
    os2: PathBuf,
    data: PathBuf,
}

fn protected() -> Protected {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let store = d.join("store");
    for sub in ["a", "b"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let os = seeded_raw(&d.join("a/os.raw"), 2 * MIB, 1, 64 << 10, 0);
    let os2 = seeded_raw(&d.join("b/os.raw"), 2 * MIB, 2, 64 << 10, 0);
    let data = seeded_raw(&d.join("a/data.raw"), 3 * MIB, 3, 64 << 10, 0);
    let rx = Receiver::start(&store, &tls, &["hv01=vm1"]);
    let send = Send::new(
        &rx.to(),
        &tls,
        "hv01",
        "vm1",
        &[&os, &os2, &data],
        &d.join("send.log"),
    )
    .arg("--interval")
    .arg("1s");
    let t0 = Instant::now();
    let mut child = send.spawn();
    let deadline = t0 + Duration::from_secs(90);
    loop {
        let out = vdrep(&["points", "--store", s(&store), "--vm", "vm1", "--json"]);
        let enough = out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|doc| {
                    let disks = doc["disks"].as_array()?.clone();
                    Some(
                        disks.len() == 3
                            && disks
                                .iter()
                                .all(|d| d["points"].as_array().is_some_and(|p| p.len() >= 2)),
                    )
                })
                .unwrap_or(false);
        if enough {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "send ended ({st}):\n{}",
                vdrep_tests::procs::read_log(&d.join("send.log"))
            );
        }
        assert!(Instant::now() < deadline, "no cycle of every disk in 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM drains; the receiver, stopped after, releases the disks.
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = finish(child, t0, Duration::from_secs(120), &d.join("send.log"));
    drop(rx);
    for disk in [&os, &os2, &data] {
        assert!(
            tracking(disk).iter().any(|n| n.ends_with(".hrl")),
            "no change log beside {}: {:?}",
            disk.display(),
            tracking(disk)
        );
    }
    Protected {
        _tmp: tmp,
        store,
        os,
        os2,
        data,
    }
}

#[test]
fn unprotect_disk_removes_only_the_disks_named_and_asks_first() {
    let p = protected();
    let st = s(&p.store);
    assert_eq!(
        disk_points(&p.store, "vm1")
            .iter()
            .map(|(d, _)| d.as_str())
            .collect::<Vec<_>>(),
        ["data", "os", "os-2"]
    );
    let os2_arg = format!("{}=os-2", s(&p.os2));
    let before = (tree(&p.store), tracking(&p.os), tracking(&p.os2));

    // A script without --yes: refused as a usage error, nothing removed, no hang.
    let out = vdrep(&[
        "unprotect",
        "--store",
        st,
        "--vm",
        "vm1",
        "--disk",
        &os2_arg,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a terminal") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!((tree(&p.store), tracking(&p.os), tracking(&p.os2)), before);

    // On a terminal it lists what goes and what stays; "n" keeps everything.
    let args = [
        "unprotect",
        "--store",
        st,
        "--vm",
        "vm1",
        "--disk",
        &os2_arg,
    ];
    let (code, _, shown) = on_terminal(&args, "n\n");
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("replica vm1/os-2 and its "), "{shown}");
    assert!(shown.contains("change tracking of "), "{shown}");
    assert!(shown.contains("staying: disks data, os"), "{shown}");
    assert!(shown.contains("Remove them? [y/N]"), "{shown}");
    assert!(shown.contains("cancelled: nothing removed"), "{shown}");
    assert_eq!((tree(&p.store), tracking(&p.os), tracking(&p.os2)), before);

    // "y": only os-2 goes (replica and the logs beside b/os.raw), named by its store name.
    let (code, stdout, shown) = on_terminal(&args, "y\n");
    assert_eq!(code, Some(0), "{shown}\n{stdout}");
    assert!(stdout.contains("removed replica vm1/os-2"), "{stdout}");
    assert!(tracking(&p.os2).is_empty(), "{:?}", tracking(&p.os2));
    assert_eq!(tracking(&p.os), before.1, "the other os disk's logs stay");
    let left = disk_points(&p.store, "vm1");
    assert_eq!(
        left.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
        ["data", "os"]
    );
    assert!(left.iter().all(|(_, n)| *n >= 2), "{left:?}");
    assert!(
        !tree(&p.store).iter().any(|f| f.contains("os-2")),
        "{:?}",
        tree(&p.store)
    );
    let jobs = vdrep_ok(&["jobs", "--store", st, "--vm", "vm1", "--json"]);
    assert!(
        String::from_utf8_lossy(&jobs.stdout).contains("initial-replication"),
        "the VM's jobs stay while it has disks"
    );
    // What remains still fails over.
    let fo = p.store.parent().unwrap().join("fo");
    vdrep_ok(&[
        "failover",
        "--test",
        "--store",
        st,
        "--vm",
        "vm1",
        "--point",
        "latest",
        "--out",
        s(&fo),
    ]);
    assert!(fo.join("os.vhd").is_file() && fo.join("data.vhd").is_file());
    assert!(!fo.join("os-2.vhd").exists());

    // A name the store does not hold, with no logs beside the path: refused, nothing goes.
    let before = tree(&p.store);
    let out = vdrep(&[
        "unprotect",
        "--store",
        st,
        "--vm",
        "vm1",
        "--disk",
        "/nowhere/db.raw",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"db\"") && err.contains("data, os"), "{err}");
    assert_eq!(tree(&p.store), before);

    // --yes; the name defaults to the stem: a/os.raw is `os`.
    let out = vdrep_ok(&[
        "unprotect",
        "--store",
        st,
        "--vm",
        "vm1",
        "--disk",
        s(&p.os),
        "--yes",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed replica vm1/os "));
    assert!(tracking(&p.os).is_empty());
    assert!(!tracking(&p.data).is_empty());
    assert_eq!(disk_points(&p.store, "vm1")[0].0, "data");

    // The VM's last disk: the VM goes, with its jobs and folder.
    vdrep_ok(&[
        "unprotect",
        "--store",
        st,
        "--vm",
        "vm1",
        "--disk",
        s(&p.data),
        "--yes",
    ]);
    assert!(tracking(&p.data).is_empty());
    assert!(!p.store.join("vm1").exists(), "{:?}", tree(&p.store));
    for disk in [&p.os, &p.os2, &p.data] {
        assert!(disk.is_file(), "the source disks themselves stay");
    }
}

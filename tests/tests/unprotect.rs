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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vdrep::sink::local::LocalStore;
use vdrep::sink::{vm_points, ReplicaStore};
use vdrep_tests::images::seeded_raw;
use vdrep_tests::procs::{certs, finish, read_log, Send};
use vdrep_tests::site::Site;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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

/// Runs `c` with stdin and stderr on a new pseudo-terminal, typing `answer`; returns the
/// exit code, stdout and what the terminal showed.
fn on_terminal(mut c: Command, answer: &str) -> (Option<i32>, String, String) {
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
    c.stdin(Stdio::from(slave.try_clone().unwrap()))
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
            panic!("vdrep still waits on the terminal after 30 s");
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
    dir: PathBuf,
    site: Site,
    os: PathBuf,
    os2: PathBuf,
    data: PathBuf,
}

fn protected(azure: bool) -> Protected {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let tls = certs(&d.join("tls"), &["hv01"]);
    for sub in ["a", "b"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let os = seeded_raw(&d.join("a/os.raw"), 2 * MIB, 1, 64 << 10, 0);
    let os2 = seeded_raw(&d.join("b/os.raw"), 2 * MIB, 2, 64 << 10, 0);
    let data = seeded_raw(&d.join("a/data.raw"), 3 * MIB, 3, 64 << 10, 0);
    let site = Site::new(azure, &d);
    let mut rx = site.receiver(&tls, &["hv01=vm1"], &d.join("receiver.log"));
    let log = d.join("send.log");
    let send = Send::new(&rx.to(), &tls, "hv01", "vm1", &[&os, &os2, &data], &log)
        .arg("--interval")
        .arg("1s");
    let t0 = Instant::now();
    let mut child = send.spawn();
    let deadline = t0 + Duration::from_secs(90);
    loop {
        let out = site.vdrep(&["points", "--vm", "vm1", "--json"]);
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
            panic!("send ended ({st}):\n{}", read_log(&log));
        }
        assert!(Instant::now() < deadline, "no cycle of every disk in 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM drains; the receiver, stopped after, releases the disks (lock or lease).
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = finish(child, t0, Duration::from_secs(120), &log);
    rx.stop();
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
        dir: d,
        site,
        os,
        os2,
        data,
    }
}

/// Makes sure the VM has a recovery-point manifest (`STORE/vm1/points`), written through
/// the store's API from the disks' common points when the receiver did not write one;
/// returns how many points it holds.
fn ensure_vm_points(store: &Path) -> usize {
    let st = LocalStore::open(store).unwrap();
    if st.vm_points("vm1").unwrap().is_none() {
        let points = vm_points::legacy_points(&vm_points::disk_points(&st, "vm1").unwrap());
        st.update_vm_points("vm1", &mut |m, _| {
            m.points = points.clone();
            Ok(true)
        })
        .unwrap();
    }
    let v = vm_point_disks(store);
    assert!(v.len() >= 2, "{v:?}");
    assert!(v.iter().all(|p| p == &["data", "os", "os-2"]), "{v:?}");
    v.len()
}

/// The disks of each of the VM's points, oldest first.
fn vm_point_disks(store: &Path) -> Vec<Vec<String>> {
    let st = LocalStore::open(store).unwrap();
    let m = st.vm_points("vm1").unwrap().expect("the VM's points");
    m.points
        .iter()
        .map(|p| p.disks.iter().map(|d| d.disk.clone()).collect())
        .collect()
}

fn names(v: &[(String, usize)]) -> Vec<&str> {
    v.iter().map(|(d, _)| d.as_str()).collect()
}

/// The first half of both tests: scripts need `--yes`; on a terminal "n" keeps everything
/// and "y" removes `os-2` (named by its store name) and only it.
fn unprotect_os2(p: &Protected) {
    let site = &p.site;
    assert_eq!(names(&site.disk_points("vm1")), ["data", "os", "os-2"]);
    let os2_arg = format!("{}=os-2", s(&p.os2));
    let args = ["unprotect", "--vm", "vm1", "--disk", &os2_arg];
    let before = (site.tree("vm1"), tracking(&p.os), tracking(&p.os2));
    assert!(
        before.0.iter().any(|f| f.contains("os-2")),
        "{:?}",
        before.0
    );

    // A script without --yes: refused as a usage error, nothing removed, no hang.
    let out = site.vdrep(&args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a terminal") && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(
        (site.tree("vm1"), tracking(&p.os), tracking(&p.os2)),
        before
    );

    // On a terminal it lists what goes and what stays; "n" keeps everything.
    let (code, _, shown) = on_terminal(site.command(&args), "n\n");
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("replica vm1/os-2 and its "), "{shown}");
    assert!(shown.contains("change tracking of "), "{shown}");
    assert!(shown.contains("staying: disks data, os"), "{shown}");
    assert!(shown.contains("Remove them? [y/N]"), "{shown}");
    assert!(shown.contains("cancelled: nothing removed"), "{shown}");
    assert_eq!(
        (site.tree("vm1"), tracking(&p.os), tracking(&p.os2)),
        before
    );

    // "y": only os-2 goes (replica, points, the logs beside b/os.raw).
    let (code, stdout, shown) = on_terminal(site.command(&args), "y\n");
    assert_eq!(code, Some(0), "{shown}\n{stdout}");
    assert!(stdout.contains("removed replica vm1/os-2"), "{stdout}");
    assert!(tracking(&p.os2).is_empty(), "{:?}", tracking(&p.os2));
    assert_eq!(tracking(&p.os), before.1, "the other os disk's logs stay");
    let left = site.disk_points("vm1");
    assert_eq!(names(&left), ["data", "os"]);
    // Every VM point keeps its other disks and loses os-2 (`points --json`, top level).
    let vm_points = site.points("vm1")["points"].clone();
    let parts: Vec<Vec<&str>> = vm_points
        .as_array()
        .expect("top-level points")
        .iter()
        .map(|p| {
            p["disks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["disk"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert!(parts.len() >= 2, "{vm_points:#}");
    assert!(parts.iter().all(|p| p == &["data", "os"]), "{vm_points:#}");
    assert!(left.iter().all(|(_, n)| *n >= 2), "{left:?}");
    let kept: Vec<String> = before
        .0
        .into_iter()
        .filter(|f| !f.contains("os-2"))
        .collect();
    assert_eq!(site.tree("vm1"), kept, "exactly os-2's files went");
    let jobs = site.vdrep_ok(&["jobs", "--vm", "vm1", "--json"]);
    assert!(
        String::from_utf8_lossy(&jobs.stdout).contains("initial-replication"),
        "the VM's jobs stay while it has disks"
    );
    // What remains still fails over.
    let fo = p.dir.join("fo");
    site.vdrep_ok(&[
        "failover",
        "--test",
        "--vm",
        "vm1",
        "--point",
        "latest",
        "--out",
        s(&fo),
    ]);
    assert!(fo.join("os.vhd").is_file() && fo.join("data.vhd").is_file());
    assert!(!fo.join("os-2.vhd").exists());
}

#[test]
fn unprotect_disk_removes_only_the_disks_named_and_asks_first() {
    let p = protected(false);
    let Site::Local(store) = &p.site else {
        unreachable!()
    };
    let n = ensure_vm_points(store);
    unprotect_os2(&p);
    let site = &p.site;
    // The VM's points keep every point, without os-2's parts.
    assert_eq!(vm_point_disks(store), vec![vec!["data", "os"]; n]);

    // A name the store does not hold, with no logs beside the path: refused, nothing goes.
    let before = site.tree("vm1");
    let out = site.vdrep(&[
        "unprotect",
        "--vm",
        "vm1",
        "--disk",
        "/nowhere/db.raw",
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"db\"") && err.contains("data, os"), "{err}");
    assert_eq!(site.tree("vm1"), before);

    // --yes; the name defaults to the stem: a/os.raw is `os`.
    let out = site.vdrep_ok(&["unprotect", "--vm", "vm1", "--disk", s(&p.os), "--yes"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed replica vm1/os "));
    assert!(tracking(&p.os).is_empty());
    assert!(!tracking(&p.data).is_empty());
    assert_eq!(names(&site.disk_points("vm1")), ["data"]);
    assert_eq!(vm_point_disks(store), vec![vec!["data"]; n]);

    // The VM's last disk: the VM goes, with its jobs and folder.
    site.vdrep_ok(&["unprotect", "--vm", "vm1", "--disk", s(&p.data), "--yes"]);
    assert!(tracking(&p.data).is_empty());
    assert!(site.tree("vm1").is_empty(), "{:?}", site.tree("vm1"));
    assert!(!store.join("vm1").exists());
    for disk in [&p.os, &p.os2, &p.data] {
        assert!(disk.is_file(), "the source disks themselves stay");
    }
}

#[test]
fn on_azure_unprotect_disk_removes_only_that_disks_blobs_and_snapshots() {
    let p = protected(true);
    unprotect_os2(&p);
    // Without --disk: the whole VM, every blob, snapshot, index and the jobs blob.
    let out = p.site.vdrep_ok(&["unprotect", "--vm", "vm1", "--yes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("removed replica vm1/os ") && text.contains("removed replica vm1/data "),
        "{text}"
    );
    assert!(p.site.tree("vm1").is_empty(), "{:?}", p.site.tree("vm1"));
    // Without --disk nothing beside the sources is touched.
    assert!(!tracking(&p.os).is_empty() && !tracking(&p.data).is_empty());
}

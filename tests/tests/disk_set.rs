//! The VM's disk set is one (issue 17, item 6), tried as the README has a new user do it: a
//! VM replicated once with `os.vhdx data.vhdx`, then protected with `--interval` naming only
//! `os.vhdx`. Before the fix that was accepted, `data` kept its old point while `os` moved
//! on, and a failover of the VM's latest point wrote `os` at point 0 next to `data`. Now the
//! receiver refuses the open (class `disk_set_changed`, permanent): the sender exits 1 with
//! the VM Critical, naming the store's disks, the sender's, and the `unprotect` command;
//! nothing is written. Once `data` is unprotected, the same command protects `os` alone. A
//! disk the store does not hold yet (added to the command line) is copied as before. Through
//! the sidecar's API the enable-protection job fails with the same reason, and the sender's
//! other VMs go on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vdrep_tests::images::{make_image, Kind, QWrite};
use vdrep_tests::procs::{assert_replica_identical, certs, finish, read_log, Send};
use vdrep_tests::require_qemu;
use vdrep_tests::site::Site;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Vm {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tls: PathBuf,
    os: PathBuf,
    data: PathBuf,
}

fn vm() -> Vm {
    require_qemu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let tls = certs(&dir.join("tls"), &["host1"]);
    let w = |pattern| QWrite {
        pattern,
        offset: MIB,
        len: MIB,
    };
    let os = make_image(&dir, "os", Kind::Vhdx, 16 * MIB, &[w(0x11)]);
    let data = make_image(&dir, "data", Kind::Vhdx, 8 * MIB, &[w(0x22)]);
    Vm {
        _tmp: tmp,
        dir,
        tls,
        os,
        data,
    }
}

/// `vdrep send` of `disks` as host1's vm1, its state in `DIR/state`.
fn send(v: &Vm, to: &str, disks: &[&Path], log: &str) -> Send {
    Send::new(to, &v.tls, "host1", "vm1", disks, &v.dir.join(log))
        .arg("--state")
        .arg(s(&v.dir.join("state")))
        .arg("--give-up-after")
        .arg("5s")
}

/// Asserts the run was refused for the disk set, with the store's and the sender's disks
/// and the command to run.
fn assert_refused(code: Option<i32>, log: &str) {
    assert_eq!(code, Some(1), "{log}");
    for says in [
        "disk_set_changed",
        "holds disks data, os but the sender protects disk os",
        "`vdrep unprotect --vm vm1 --disk PATH=data`",
    ] {
        assert!(log.contains(says), "{says:?} not in:\n{log}");
    }
}

fn run_disk_set(azure: bool) {
    let v = vm();
    let site = Site::new(azure, &v.dir);
    let mut rx = site.receiver(&v.tls, &["host1=vm1"], &v.dir.join("receiver.log"));
    send(&v, &rx.to(), &[&v.os, &v.data], "first.log")
        .run(Duration::from_secs(120))
        .ok();
    let before = site.tree("vm1");
    assert_eq!(
        site.disk_points("vm1"),
        [("data".into(), 1), ("os".into(), 1)]
    );

    // A one-shot send of os alone: refused before anything is written.
    let r = send(&v, &rx.to(), &[&v.os], "oneshot.log").run(Duration::from_secs(60));
    assert_refused(r.code(), &r.log);
    assert_eq!(site.tree("vm1"), before, "nothing written");

    // Protection of os alone: the sender stops (no retries) with the VM Critical.
    let t0 = Instant::now();
    let r = send(&v, &rx.to(), &[&v.os], "protect.log")
        .arg("--interval")
        .arg("1s")
        .run(Duration::from_secs(60));
    assert_refused(r.code(), &r.log);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let health: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v.dir.join("state/health.json")).unwrap()).unwrap();
    let vm = &health["vms"][0];
    assert_eq!(vm["state"], "Critical", "{health:#}");
    assert_eq!(vm["last_error"]["class"], "disk_set_changed", "{health:#}");
    assert_eq!(vm["last_error"]["recoverable"], false, "{health:#}");
    assert_eq!(site.tree("vm1"), before, "nothing written");
    assert_eq!(
        site.disk_points("vm1"),
        [("data".into(), 1), ("os".into(), 1)]
    );

    // The fix the message names: unprotect data, then protect os alone.
    let out = site.vdrep_ok(&["unprotect", "--vm", "vm1", "--disk", s(&v.data), "--yes"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed replica vm1/data"),
        "{out:?}"
    );
    let log = v.dir.join("protect2.log");
    let p = send(&v, &rx.to(), &[&v.os], "protect2.log")
        .arg("--interval")
        .arg("1s");
    let t0 = Instant::now();
    let mut child = p.spawn();
    loop {
        if site
            .disk_points("vm1")
            .first()
            .is_some_and(|(_, n)| *n >= 3)
        {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("send ended ({st}):\n{}", read_log(&log));
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "{}", read_log(&log));
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = finish(child, t0, Duration::from_secs(60), &log);
    let pts = site.disk_points("vm1");
    assert_eq!(pts.len(), 1, "{pts:?}");
    assert_eq!(pts[0].0, "os");
    let fo = v.dir.join("fo");
    let out = site.vdrep_ok(&[
        "failover",
        "--test",
        "--vm",
        "vm1",
        "--point",
        "latest",
        "--out",
        s(&fo),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!fo.join("data.vhd").exists(), "{text}");
    assert_replica_identical(&v.os, "vhdx", &fo.join("os.vhd"));

    // A disk the store does not hold is a disk added: accepted and copied.
    rx.stop();
    let mut rx = site.receiver(&v.tls, &["host1=vm1"], &v.dir.join("receiver.log"));
    send(&v, &rx.to(), &[&v.os, &v.data], "added.log")
        .run(Duration::from_secs(120))
        .ok();
    let pts = site.disk_points("vm1");
    assert_eq!(
        pts.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
        ["data", "os"]
    );
    rx.stop();
}

#[test]
fn a_vm_sent_with_fewer_disks_than_the_store_holds_is_refused_until_they_are_unprotected() {
    run_disk_set(false);
}

#[test]
fn on_azure_a_vm_sent_with_fewer_disks_than_the_container_holds_is_refused() {
    run_disk_set(true);
}

/// Through the sidecar's API (enable protection of a VM the sender does not list yet, with
/// its disks): the store's disks are checked the same way, and the job fails saying why.
#[test]
fn enabling_protection_through_the_api_with_fewer_disks_than_the_store_holds_fails_the_job() {
    use serde_json::json;
    use vdrep_tests::images::seeded_raw;
    use vdrep_tests::roles::{eventually, Role};
    use vdrep_tests::sidecar::{Stack, TOKEN};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let web = seeded_raw(&d.join("web.raw"), 4 * MIB, 5, 1 << 20, 3);
    let db_os = seeded_raw(&d.join("dbos.raw"), 4 * MIB, 6, 1 << 20, 3);
    let db_data = seeded_raw(&d.join("dbdata.raw"), 4 * MIB, 7, 1 << 20, 3);
    vdrep_tests::sidecar::write_token(d);
    let rx = Role::receiver(d, &tls, "hv01=web,db", false);
    // db was replicated once with both disks.
    Send::new(
        &rx.addr("listening on "),
        &tls,
        "hv01",
        "db",
        &[&db_os, &db_data],
        &d.join("first.log"),
    )
    .run(Duration::from_secs(60))
    .ok();
    let mut tx = Stack::sender(d, &tls, &web, &rx);
    let sc = Stack::sidecar(d);
    let api = sc.addr("sidecar on ");
    let r = vdrep_tests::http::request(
        &api,
        "POST",
        "/v1/vms/db/protection",
        Some(TOKEN),
        Some(&json!({"interval_seconds": 1, "disks": [s(&db_os)]}).to_string()),
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(60), || {
        let j = vdrep_tests::http::get(&api, &format!("/v1/jobs/{id}")).json();
        (j["state"] == "succeeded" || j["state"] == "failed").then_some(j)
    })
    .unwrap_or_else(|| panic!("the job did not end; sender log:\n{}", tx.log_text()));
    assert_eq!(done["state"], "failed", "{done:#}");
    let text = done.to_string();
    assert!(
        text.contains("holds disks dbdata, dbos but the sender protects disk dbos"),
        "{done:#}"
    );
    assert!(
        text.contains("vdrep unprotect --vm db --disk PATH=dbdata"),
        "{done:#}"
    );
    let site = Site::Local(d.join("store"));
    assert_eq!(
        site.disk_points("db"),
        [("dbdata".into(), 1), ("dbos".into(), 1)],
        "nothing written"
    );
    // db is Critical for the operator; web, on the same sender, goes on cycling.
    let db = vdrep_tests::http::get(&api, "/v1/vms/db").json();
    assert_eq!(db["health"], "critical", "{db:#}");
    let cycle = |v: &serde_json::Value| v["disks"][0]["last_cycle"].as_u64().unwrap_or(0);
    let now = cycle(&vdrep_tests::http::get(&api, "/v1/vms/web").json());
    let later = eventually(Duration::from_secs(30), || {
        let v = vdrep_tests::http::get(&api, "/v1/vms/web").json();
        (cycle(&v) >= now + 2).then_some(v)
    });
    assert!(later.is_some(), "web stopped cycling:\n{}", tx.log_text());
    assert!(
        tx.try_wait().is_none(),
        "the sender ended:\n{}",
        tx.log_text()
    );
}

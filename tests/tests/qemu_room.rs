//! The room check of the qemu source (issue 18 item 2): a view's copy-before-write target
//! (a scratch qcow2 in the sender's state folder) fails the guest's writes if it fills up,
//! so before each switch its filesystem must have room for the disks' full size; without
//! it no view is taken and the cycle waits with a Warning. Here the state folder is a 4 MiB
//! tmpfs (this test mounts one: it needs root) for two 8 MiB disks: the guest keeps writing
//! without an error and nothing ships; once the tmpfs grows, protection starts and the
//! newest point equals the disks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vdrep_tests::procs::{finish, read_log};
use vdrep_tests::qemu_rig::{compare, wait_until, Rig, VM_POINT};

const SIZE: u64 = 8 << 20;

/// A tmpfs mounted at a folder for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount")
            .success();
        assert!(
            ok,
            "mount -t tmpfs at {} failed: this test needs root",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "remount of {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

#[test]
fn without_room_for_the_views_the_cycle_waits_with_a_warning_and_the_guest_sees_no_error() {
    let rig = Rig::new(SIZE);
    let fs = Tmpfs::mount(&rig.dir.join("state"), "4m");
    let send = rig.send_every("send.log", "300ms");
    let t0 = Instant::now();
    let mut child = send.spawn();
    wait_until("the warning", &send.log, Duration::from_secs(60), || {
        rig.vm_health("vm1")
            .is_some_and(|(s, e)| s == "Warning" && e.contains("bytes free"))
    });
    // The guest writes meanwhile, every write acknowledged (`Qsd::write` fails the test
    // on an I/O error).
    for i in 0..64u64 {
        rig.qsd.write((i % 2) as usize, i * 65536, &[0x5a; 65536]);
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = read_log(&send.log);
    assert!(
        log.matches("no room for the fleecing views: the cycle waits")
            .count()
            >= 2,
        "the cycle does not wait and retry: {log}"
    );
    assert!(!log.contains(VM_POINT), "a point without views: {log}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the sender ended: {log}"
    );
    let (objs, _) = rig.qsd.vdrep_objects();
    assert!(
        objs.iter()
            .all(|o| !o.starts_with("job") && !o.contains("-tf-")),
        "a view was taken without room: {objs:?}"
    );

    // Room again: protection starts on the next round and catches up.
    fs.resize("64m");
    wait_until("VM points", &send.log, Duration::from_secs(60), || {
        read_log(&send.log).matches(VM_POINT).count() >= 2
    });
    for i in 0..16u64 {
        rig.qsd.write(1, i * 131072, &[0xa5; 4096]);
    }
    let n = read_log(&send.log).matches(VM_POINT).count();
    wait_until(
        "two more points",
        &send.log,
        Duration::from_secs(60),
        || read_log(&send.log).matches(VM_POINT).count() >= n + 2,
    );
    assert_eq!(rig.vm_health("vm1").map(|h| h.0).as_deref(), Some("Normal"));
    // SIGTERM: a clean stop (views gone), then the newest point is the disks.
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let res = finish(child, Instant::now(), Duration::from_secs(30), &send.log);
    assert!(res.status.success(), "{}\n{}", res.status, res.log);
    let last = *rig.points().last().unwrap();
    let out = rig.failover(last);
    let q = rig.dir.join("qsd");
    compare(&q.join("os.raw"), "raw", &out.join("os.vhd")).unwrap();
    compare(&q.join("data.qcow2"), "qcow2", &out.join("data.vhd")).unwrap();
    drop(fs);
    eprintln!("room test: {:.1} s", t0.elapsed().as_secs_f64());
}

//! A real `qemu-storage-daemon` playing a qemu VM for the qemu change source's tests: its
//! disks (raw and qcow2 images), a QMP monitor on a unix socket, and per disk a writable
//! FUSE export that plays the guest (a file written with `pwrite` and `O_DSYNC`, so every
//! write has reached the disk's node when the call returns). The daemon dies with the test
//! process (PDEATHSIG) and is killed on drop.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vdrep_qemu::qmp::Qmp;

/// One disk of the daemon.
#[derive(Debug, Clone)]
pub struct QsdDisk {
    /// The image.
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// The format node's name.
    pub node: String,
}

/// A running daemon.
pub struct Qsd {
    /// Its folder (sockets, guest mount points).
    pub dir: PathBuf,
    /// Its disks.
    pub disks: Vec<QsdDisk>,
    child: Option<Child>,
}

/// Makes an image of `size` bytes in `format` (zeros, or `fill` everywhere when non-zero).
pub fn make_disk(dir: &Path, node: &str, format: &str, size: u64, fill: u8) -> QsdDisk {
    crate::require_qemu();
    let path = dir.join(format!("{node}.{format}"));
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(&path)
        .arg(size.to_string())
        .status()
        .expect("qemu-img")
        .success();
    assert!(ok, "qemu-img create {}", path.display());
    if fill != 0 {
        let ok = Command::new("qemu-io")
            .args(["-f", format, "-c", &format!("write -q -P {fill} 0 {size}")])
            .arg(&path)
            .status()
            .expect("qemu-io")
            .success();
        assert!(ok, "qemu-io fill {}", path.display());
    }
    QsdDisk {
        path,
        format: format.into(),
        node: node.into(),
    }
}

impl Qsd {
    /// Starts a daemon in `dir` over `disks`, each with a guest FUSE export.
    pub fn start(dir: &Path, disks: Vec<QsdDisk>) -> Qsd {
        crate::require_tool(
            "qemu-storage-daemon",
            "apt-get install -y qemu-utils (qemu >= 10, bookworm-backports) or bash ops/setup.sh",
        );
        let mut q = Qsd {
            dir: dir.to_path_buf(),
            disks,
            child: None,
        };
        q.spawn();
        q
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The guest's view of disk `i` (a FUSE-exported file).
    pub fn guest(&self, i: usize) -> PathBuf {
        self.dir.join(format!("guest-{}", self.disks[i].node))
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.qmp_socket());
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--chardev").arg(format!(
            "socket,id=mon,path={},server=on,wait=off",
            self.qmp_socket().display()
        ));
        cmd.args(["--monitor", "chardev=mon"]);
        // A second monitor for the test itself: a QMP socket serves one client at a time,
        // and the sender holds the first.
        let _ = std::fs::remove_file(self.test_qmp_socket());
        cmd.arg("--chardev").arg(format!(
            "socket,id=test,path={},server=on,wait=off",
            self.test_qmp_socket().display()
        ));
        cmd.args(["--monitor", "chardev=test"]);
        for (i, d) in self.disks.iter().enumerate() {
            let mount = self.guest(i);
            std::fs::write(&mount, b"")
                .unwrap_or_else(|e| panic!("guest mount point {}: {e}", mount.display()));
            cmd.arg("--blockdev").arg(format!(
                "driver=file,filename={},node-name=file{i}",
                d.path.display()
            ));
            cmd.arg("--blockdev").arg(format!(
                "driver={},file=file{i},node-name={}",
                d.format, d.node
            ));
            cmd.arg("--export").arg(format!(
                "type=fuse,id=guest{i},node-name={},mountpoint={},writable=on",
                d.node,
                mount.display()
            ));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("start qemu-storage-daemon"));
        for _ in 0..500 {
            let mounted = (0..self.disks.len()).all(|i| {
                std::fs::metadata(self.guest(i))
                    .map(|m| m.len() > 0)
                    .unwrap_or(false)
            });
            if self.qmp_socket().exists() && self.test_qmp_socket().exists() && mounted {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("qemu-storage-daemon exited at start: {st}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("qemu-storage-daemon did not come up within 10 s");
    }

    /// The test's own QMP socket (a second monitor: the sender holds the first).
    pub fn test_qmp_socket(&self) -> PathBuf {
        self.dir.join("test-qmp.sock")
    }

    /// A QMP session of the test's own, also while a sender holds the VM's monitor.
    pub fn qmp(&self) -> Qmp {
        Qmp::connect(self.test_qmp_socket(), Duration::from_secs(20)).expect("QMP connect")
    }

    /// Writes `data` at `offset` of disk `i` as the guest (`O_DSYNC`: on the node when
    /// this returns).
    pub fn write(&self, i: usize, offset: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(self.guest(i))
            .unwrap_or_else(|e| panic!("guest disk {i}: {e}"));
        f.write_all_at(data, offset)
            .unwrap_or_else(|e| panic!("guest write to disk {i} at {offset}: {e}"));
    }

    /// What vdrep left in qemu: its nodes, exports and jobs (`vdrep-` names), and its
    /// bitmaps per node.
    pub fn vdrep_objects(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut q = self.qmp();
        let mut objs = Vec::new();
        let mut bitmaps = Vec::new();
        for n in q.named_block_nodes().unwrap() {
            let name = n.node_name.clone().unwrap_or_default();
            if name.starts_with("vdrep-") {
                objs.push(format!("node {name}"));
            }
            for b in &n.dirty_bitmaps {
                if let Some(bn) = b.name.as_ref().filter(|x| x.starts_with("vdrep-")) {
                    bitmaps.push((name.clone(), bn.clone()));
                }
            }
        }
        for e in q.block_exports().unwrap() {
            if e.id.starts_with("vdrep-") {
                objs.push(format!("export {}", e.id));
            }
        }
        for j in q.jobs().unwrap() {
            if j.id.starts_with("vdrep-") {
                objs.push(format!("job {}", j.id));
            }
        }
        (objs, bitmaps)
    }

    /// Kills the daemon with `signal` (SIGTERM: persistent bitmaps are saved; SIGKILL: a
    /// crash) and starts it again over the same images.
    pub fn restart(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
            let _ = c.wait();
        }
        self.unmount();
        self.spawn();
    }

    /// Kills the daemon (SIGKILL) without starting it again: the VM's QMP socket is gone.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.unmount();
    }

    /// Starts a crashed daemon again.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon still runs");
        self.spawn();
    }

    fn unmount(&self) {
        for i in 0..self.disks.len() {
            // A FUSE mount a killed daemon left behind (lazily: it may be dead).
            if let Ok(c) = std::ffi::CString::new(self.guest(i).to_string_lossy().as_bytes()) {
                // SAFETY: a valid NUL-terminated path; failure (not mounted) is ignored.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }

    /// Stops the daemon (SIGTERM: persistent bitmaps are saved) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            for _ in 0..500 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.unmount();
    }
}

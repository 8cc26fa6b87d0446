//! The README's "Using it" section is executable truth: its shell blocks marked
//! `<!-- readme-test: ROLE -->` run as written, the receiver's in one network namespace and
//! host1's in another that reaches it by the name `receiver.example` (`/etc/netns/NS/hosts`,
//! which `ip netns exec` mounts over `/etc/hosts`). Each block runs under `bash -e -o
//! pipefail` with `vdrep` on PATH, in one working folder, with a private `/srv` and `/tmp`
//! (bind mounts inside the namespace's own mount namespace) and its own HOME, so nothing
//! outside the test's folder is touched. Needs root (`ip netns`).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vdrep_tests::{qemu_img_create, qemu_io_write, require_qemu, require_tool, run};

/// A marked block: its role (`receiver`, `sender`), whether it runs in the background (a
/// role that serves until stopped), and its text.
#[derive(Debug)]
struct Block {
    role: String,
    background: bool,
    script: String,
}

/// The marked `sh` blocks of the README's "Using it" section, in order.
fn using_it_blocks() -> Vec<Block> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("\n## Using it\n")
        .expect("a \"Using it\" section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map(|i| i + 3)
        .unwrap_or(section.len())];
    let mut out = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        let Some(marker) = l
            .strip_prefix("<!-- readme-test: ")
            .and_then(|m| m.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next(),
            Some("```sh"),
            "a marked block is a ```sh block"
        );
        let script: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let mut parts = marker.split(", ");
        out.push(Block {
            role: parts.next().unwrap().to_string(),
            background: parts.next() == Some("background"),
            script: script.join("\n") + "\n",
        });
    }
    out
}

/// Two network namespaces joined by a veth pair: the receiver at .1, host1 at .2, which
/// resolves `receiver.example` to the receiver. Removed on drop.
struct Net {
    rx: String,
    tx: String,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let (rx, tx) = (format!("vdrx{id}"), format!("vdtx{id}"));
        let subnet = format!("10.203.{}", id % 250);
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        let net = Net {
            rx: rx.clone(),
            tx: tx.clone(),
        };
        ip(&["netns", "add", &rx]);
        ip(&["netns", "add", &tx]);
        ip(&["link", "add", &rx, "type", "veth", "peer", "name", &tx]);
        for (ns, addr) in [(&rx, "1"), (&tx, "2")] {
            ip(&["link", "set", ns, "netns", ns]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{subnet}.{addr}/30"),
                "dev",
                ns,
            ]);
            ip(&["-n", ns, "link", "set", ns, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let etc = net.etc(&tx);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("hosts"),
            format!("127.0.0.1 localhost\n{subnet}.1 receiver.example\n"),
        )
        .unwrap();
        net
    }

    fn etc(&self, ns: &str) -> PathBuf {
        Path::new("/etc/netns").join(ns)
    }

    fn ns(&self, role: &str) -> &str {
        match role {
            "receiver" => &self.rx,
            "sender" => &self.tx,
            r => panic!("unknown role {r} in a README block marker"),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.rx, &self.tx] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(self.etc(ns));
        }
        // Shared with other users of ip netns: removed only when empty.
        let _ = std::fs::remove_dir(Path::new("/etc/netns"));
    }
}

/// The folder a block runs in and the private mounts it gets.
struct Site {
    work: PathBuf,
    srv: PathBuf,
    tmp: PathBuf,
    home: PathBuf,
    bin: PathBuf,
}

impl Site {
    fn command(&self, ns: &str, script: &str) -> Command {
        let prelude = format!(
            "mount --bind {srv} /srv && mount --bind {tmp} /tmp && cd {work}\n",
            srv = self.srv.display(),
            tmp = self.tmp.display(),
            work = self.work.display()
        );
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "bash", "-e", "-o", "pipefail", "-c"])
            .arg(prelude + script)
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    self.bin.display()
                ),
            )
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8");
        c
    }
}

/// Stops a background block (its whole process group) when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the child's process group; no memory is involved.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_using_it_blocks_run_as_written_across_two_network_namespaces() {
    require_tool("ip", "apt-get install iproute2");
    require_tool("xxd", "apt-get install xxd");
    require_qemu();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the README test needs root (ip netns, mount)"
    );
    let blocks = using_it_blocks();
    assert!(
        blocks.len() >= 3 && blocks.iter().any(|b| b.background),
        "{blocks:?}"
    );
    for b in &blocks {
        assert!(
            !b.script.contains("7443"),
            "port 4433 everywhere: {}",
            b.script
        );
    }

    // Not under /tmp: each block gets a private /tmp mounted over it.
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let site = Site {
        work: t.path().join("work"),
        srv: t.path().join("srv"),
        tmp: t.path().join("tmp"),
        home: t.path().join("home"),
        bin: t.path().join("bin"),
    };
    for d in [&site.work, &site.srv, &site.tmp, &site.home, &site.bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::symlink(vdrep_tests::vdrep_bin(), site.bin.join("vdrep")).unwrap();
    // host1's disks: two small VHDX with data.
    for (name, pattern) in [("os.vhdx", 0x5a), ("data.vhdx", 0xa5)] {
        let p = site.work.join(name);
        qemu_img_create(&p, "vhdx", "", "64M");
        qemu_io_write(&p, "vhdx", pattern, 1 << 20, 3 << 20);
    }
    // The mount points of the private folders (Debian has /srv; a minimal image may not).
    std::fs::create_dir_all("/srv").unwrap();
    let net = Net::new();

    let mut background = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let log = t.path().join(format!("block{i}-{}.log", b.role));
        let mut c = site.command(net.ns(&b.role), &b.script);
        if b.background {
            // Serves until the test ends; ready when it says so.
            let mut child = c
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .process_group(0)
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let guard = Background(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut ready = false;
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap_or_default();
                if line.starts_with("listening on ") {
                    ready = true;
                    break;
                }
                assert!(Instant::now() < deadline, "block {i} not ready");
            }
            assert!(
                ready,
                "block {i} ({}) stopped:\n{}\n{}",
                b.role,
                b.script,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            background.push(guard);
        } else {
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "block {i} ({}) failed ({}):\n{}\nstdout:\n{}\nstderr:\n{}",
                b.role,
                out.status,
                b.script,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&log, &out.stdout).unwrap();
        }
    }
    // What the blocks did, in the private folders: the failover's disks in /tmp, the
    // converted disk beside the source; `unprotect --disk os.vhdx` removed that disk's
    // replica from /srv and only that one.
    assert!(site.tmp.join("vm1/os.vhd").is_file(), "no failover output");
    assert!(site.work.join("azure-ready.vhd").is_file());
    assert!(
        !site.srv.join("vdrep/vm1/os.vhd").exists(),
        "unprotect left the replica"
    );
    assert!(
        site.srv.join("vdrep/vm1/data.vhd").is_file(),
        "unprotect --disk os.vhdx removed the VM's other disk"
    );
    drop(background);
    drop(net);
}

//! Helpers shared by the end-to-end tests: locating the `vdrep` binary, requiring external
//! tools with an install hint, making images with qemu-img and writing them with qemu-io.
//!
//! Tests fail (never skip) when a tool is missing: the message says how to install it.

pub mod azurite;
pub mod bytes;
pub mod cycles;
pub mod delta_rig;
pub mod fixtures;
pub mod hostile;
pub mod http;
pub mod images;
pub mod numbered;
pub mod procs;
pub mod prom;
pub mod qemu_rig;
pub mod qsd;
pub mod relay;
pub mod roles;
pub mod sidecar;
pub mod site;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// The `vdrep` binary built from this workspace (`cargo build --bins` puts it next to the
/// test executables' `deps` folder).
pub fn vdrep_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VDREP_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let bin = dir.join("vdrep");
    assert!(
        bin.is_file(),
        "{} not found: build it first with `cargo build --bins` (the README's test command does)",
        bin.display()
    );
    bin
}

/// `vdrep` as every test runs it: with the state folder of this test process
/// ([`isolated_state_home`] as `XDG_STATE_HOME`), so no test reads or writes the invoking
/// user's `~/.local/state/vdrep`, where a pending job or a `bandwidth.json` would change
/// later runs.
pub fn vdrep_command() -> Command {
    let mut c = Command::new(vdrep_bin());
    c.env("XDG_STATE_HOME", isolated_state_home());
    c
}

/// `target/tmp/state-PID`, emptied when first used by this process (a PID seen before
/// starts clean).
pub fn isolated_state_home() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/tmp")
            .join(format!("state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("test state folder");
        d
    })
}

/// Fails the test with an install hint if `tool` is not on PATH.
pub fn require_tool(tool: &str, install_hint: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "required tool `{tool}` is not installed: {install_hint} (or run `bash ops/setup.sh`)"
    );
}

/// qemu-img and qemu-io, from Debian's qemu-utils.
pub fn require_qemu() {
    require_tool("qemu-img", "apt-get install qemu-utils");
    require_tool("qemu-io", "apt-get install qemu-utils");
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `vdrep ARGS`, returning its output whatever the exit status.
pub fn vdrep(args: &[&str]) -> Output {
    vdrep_command()
        .args(args)
        .output()
        .expect("cannot start vdrep")
}

/// One request on a sender's control socket (`send --control SOCK`), waiting up to 30 s
/// for the socket to appear (the sender makes it at start) and for the answer.
pub fn control_request(sock: &Path, req: &serde_json::Value) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    use std::time::{Duration, Instant};
    let end = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < end, "no control socket: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    writeln!(c, "{req}").unwrap();
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// The VM points of `vm` in `store` that belong to consistency group `group` (`vdrep points
/// --json`): group cycle → (VM point id, switch time in Unix seconds); empty while the store
/// has none.
pub fn group_points(
    store: &Path,
    vm: &str,
    group: &str,
) -> std::collections::BTreeMap<u64, (u64, u64)> {
    let store = store.to_str().expect("store path is UTF-8");
    let out = vdrep(&["points", "--store", store, "--vm", vm, "--json"]);
    if !out.status.success() {
        return Default::default();
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["points"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["group"] == group)
                .map(|p| {
                    (
                        p["group_cycle"].as_u64().unwrap(),
                        (p["id"].as_u64().unwrap(), p["unix"].as_u64().unwrap()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `vdrep ARGS` and requires success.
pub fn vdrep_ok(args: &[&str]) -> Output {
    run(vdrep_command().args(args))
}

/// `vdrep inspect PATH --json`, parsed.
pub fn inspect_json(path: &Path) -> serde_json::Value {
    let out = vdrep_ok(&["inspect", path.to_str().unwrap(), "--json"]);
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

/// `qemu-img create -f FMT [-o OPTS] PATH SIZE`.
pub fn qemu_img_create(path: &Path, fmt: &str, opts: &str, size: &str) {
    require_qemu();
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", fmt]);
    if !opts.is_empty() {
        c.args(["-o", opts]);
    }
    run(c.arg(path).arg(size));
}

/// qemu-io driver name for vdrep's notion of a format (qemu calls VHD `vpc`).
pub fn qemu_fmt(fmt: &str) -> &str {
    match fmt {
        "vhd" => "vpc",
        f => f,
    }
}

/// Writes `len` bytes of the byte `pattern` at `offset` through qemu-io.
pub fn qemu_io_write(path: &Path, fmt: &str, pattern: u8, offset: u64, len: u64) {
    require_qemu();
    run(Command::new("qemu-io").args([
        "-f",
        qemu_fmt(fmt),
        "-c",
        &format!("write -P {pattern} {offset} {len}"),
        path.to_str().unwrap(),
    ]));
}

/// Writes zeros at `offset` through qemu-io (`write -z`, which may deallocate or mark zero).
pub fn qemu_io_write_zeroes(path: &Path, fmt: &str, offset: u64, len: u64) {
    run(Command::new("qemu-io").args([
        "-f",
        qemu_fmt(fmt),
        "-c",
        &format!("write -z {offset} {len}"),
        path.to_str().unwrap(),
    ]));
}

/// The whole virtual disk as qemu sees it (`qemu-img convert -O raw`), written to `out`.
pub fn qemu_to_raw(src: &Path, fmt: &str, out: &Path) {
    require_qemu();
    run(Command::new("qemu-img").args([
        "convert",
        "-f",
        qemu_fmt(fmt),
        "-O",
        "raw",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The folder of the test images made by other tools (`tests/data`, in the repository so a
/// clone alone runs every test; their origin and licence are in `tests/data/README.md`).
pub fn testdata_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    assert!(
        d.join("hyperv").is_dir(),
        "test images not found at {}: they are part of the repository (tests/data/hyperv)",
        d.display()
    );
    d
}

/// Decompresses `hyperv/NAME.bz2` from the test images (`tests/data`) into `dir` and returns the
/// path; the originals are never touched.
pub fn testdata_image(name: &str, dir: &Path) -> PathBuf {
    require_tool("bunzip2", "apt-get install bzip2");
    let src = testdata_dir().join("hyperv").join(format!("{name}.bz2"));
    let dst = dir.join(name);
    let out = run(Command::new("bunzip2").arg("-c").arg(&src));
    std::fs::write(&dst, out.stdout).unwrap();
    dst
}

/// Compares `vdrep cat` of an image with qemu's raw conversion, byte for byte.
pub fn assert_reads_like_qemu(img: &Path, fmt: &str, work: &Path) {
    let qraw = work.join("qemu.raw");
    let vraw = work.join("vdrep.raw");
    qemu_to_raw(img, fmt, &qraw);
    vdrep_ok(&[
        "cat",
        img.to_str().unwrap(),
        "--out",
        vraw.to_str().unwrap(),
    ]);
    let q = std::fs::read(&qraw).unwrap();
    let v = std::fs::read(&vraw).unwrap();
    assert_eq!(
        q.len(),
        v.len(),
        "virtual size differs from qemu's for {}",
        img.display()
    );
    if let Some(i) = q.iter().zip(&v).position(|(a, b)| a != b) {
        panic!(
            "{}: vdrep reads differ from qemu at offset {i} (qemu {:#04x}, vdrep {:#04x})",
            img.display(),
            q[i],
            v[i]
        );
    }
}

/// Writes the test-only clock offset file (`VDREP_TEST_CLOCK_OFFSET_FILE`) so that the wall
/// clock of the processes reading it says `target` now (atomically: a rename, so a reader
/// never sees half a file).
pub fn jump_clock_to(file: &Path, target: jiff::Timestamp) {
    let off = target.duration_since(jiff::Timestamp::now());
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{}ms", off.as_millis())).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// `vdrep log-write DISK --offset OFFSET` of `data` (put in the file `scratch` first): a
/// write tracked in the disk's active change log, as the guest's writes are.
pub fn log_write(disk: &Path, offset: u64, data: &[u8], scratch: &Path) {
    std::fs::write(scratch, data).unwrap();
    vdrep_ok(&[
        "log-write",
        disk.to_str().unwrap(),
        "--offset",
        &offset.to_string(),
        "--file",
        scratch.to_str().unwrap(),
    ]);
}

/// `vdrep log-write` of 12 KiB at 5 MiB into the raw disk `img` (tracked in its active change
/// log), then that log is deleted before anything shipped it: the "lost log" case of the
/// resync tests. `dir` holds the data file.
pub fn tracked_write_then_lose_the_log(img: &Path, dir: &Path) {
    log_write(img, 5 << 20, &[0x42u8; 3 * 4096], &dir.join("w.bin"));
    let mut active = img.as_os_str().to_owned();
    active.push(".hrl");
    let active = PathBuf::from(active);
    std::fs::remove_file(&active).unwrap_or_else(|e| panic!("{}: {e}", active.display()));
}

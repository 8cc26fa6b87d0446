//! The local page-blob store on the real filesystem, where it is the store's own: the
//! in-progress copy and the committed replica as files (a fixed VHD that qemu-img reads),
//! versioning, corrupt state, injected and real disk-full errors. The contract every
//! backend shares (range checks, progress across a takeover, locking, commits, cycles) is
//! the conformance suite's (`store_conformance.rs`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vdrep_proto::{Guid, RangeSet};
use vdrep_store::layout::{replica_file_size, replica_virtual_size};
use vdrep_store::sink::fault::{FaultPlan, FaultStore, Op};
use vdrep_store::sink::local::LocalStore;
use vdrep_store::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError};

const SRC: Guid = Guid([9; 16]);

fn point(cycle: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: 1_700_000_000 + cycle,
        bytes: 0,
        digest: [0; 32],
    }
}
fn point0() -> RecoveryPoint {
    point(0)
}

fn key(d: &str) -> DiskKey {
    DiskKey::new("vm-1", d).unwrap()
}

fn require_tool(tool: &str, hint: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "required tool `{tool}` is not installed: {hint} (or run `bash ops/setup.sh`)"
    );
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8) ^ (i as u8))
        .collect()
}

#[test]
fn an_initial_copy_is_a_partial_file_of_the_replica_size_that_refused_writes_leave_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let size = (3 << 20) + 7 * 512;
    let d = store.open_disk(&key("d0"), size, SRC).unwrap();
    let file = dir.path().join("vm-1/d0.vhd.partial");
    assert_eq!(d.path_hint(), file.display().to_string());
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        replica_file_size(size)
    );
    for (off, len) in [(1, 512), (size, 512), (u64::MAX - 511, 512)] {
        let e = d.write(off, &vec![0xAA; len]).unwrap_err();
        assert!(e.to_string().contains("d0.vhd.partial"), "{e}");
    }
    assert!(d.clear(size - 512, 1024).is_err());
    // Nothing landed: the whole file, padding and footer area included, is still zero.
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.iter().all(|b| *b == 0));
    d.write(size - 512, &pattern(2, 512)).unwrap();
    d.checkpoint(&RangeSet::new()).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(
        &bytes[(size - 512) as usize..size as usize],
        &pattern(2, 512)[..]
    );
}

#[test]
fn disk_sizes_that_wrap_or_exceed_a_page_blob_are_refused_non_recoverably_creating_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    // [2^64 − 2^20 + 1, 2^64 − 1] wrapped to a 512-byte replica when rounded up to 1 MiB;
    // 8 TiB − 1 MiB + 1 is the first size whose replica no longer fits a page blob.
    for size in [
        u64::MAX - (1 << 20) + 2,
        u64::MAX - 4096,
        u64::MAX,
        (8 << 40) - (1 << 20) + 1,
        0,
    ] {
        let e = store.open_disk(&key("big"), size, SRC).err().unwrap();
        assert!(
            matches!(e, SinkError::Unsupported { .. }) && !e.is_transient(),
            "{size}: {e}"
        );
        assert!(
            e.to_string().contains(&format!("disk size {size} bytes")),
            "{e}"
        );
        assert!(e.to_string().contains("8 TiB"), "{e}");
    }
    assert!(!store.paths(&key("big")).state.exists());
    assert!(!store.paths(&key("big")).partial.exists());
    // The largest disk a page blob holds opens (a sparse file: nothing is allocated).
    let d = store
        .open_local(&key("max"), (8 << 40) - (1 << 20), SRC)
        .unwrap();
    assert_eq!(d.state().virtual_size, (8 << 40) - (1 << 20));
}

#[test]
fn a_disk_named_jobs_does_not_share_the_vms_job_file_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    // The disk holds its lock (`jobs.lock`) for as long as it is open.
    let held = store.open_disk(&key("jobs"), 1 << 20, SRC).unwrap();
    let job = <vdrep_store::jobs::Job as vdrep_store::jobs::JobNow>::start(
        vdrep_proto::wire::JobKind::TestFailover,
        "vm-1",
    );
    store
        .record_job(&job)
        .expect("the job file has a lock of its own");
    assert_eq!(store.jobs(Some("vm-1")).unwrap().len(), 1);
    // Removing the VM's jobs leaves the disk's lock alone: a second opener is still refused.
    store.remove_jobs("vm-1").ok();
    assert!(store.paths(&key("jobs")).lock.exists());
    let e = LocalStore::open(dir.path())
        .unwrap()
        .open_disk(&key("jobs"), 1 << 20, SRC)
        .err()
        .unwrap();
    assert!(matches!(e, SinkError::Locked { .. }), "{e}");
    drop(held);
}

#[test]
fn bad_names_are_refused() {
    for (vm, d) in [
        ("", "a"),
        ("a", ".hidden"),
        ("a/b", "c"),
        ("a", ".."),
        ("a", &"x".repeat(65)),
    ] {
        let e = DiskKey::new(vm, d).unwrap_err();
        assert!(
            matches!(e, SinkError::InvalidName { .. }) && !e.is_transient(),
            "{e}"
        );
    }
    assert!(DiskKey::new("VM_01.prod-a", "disk-0.data").is_ok());
}

#[test]
fn a_store_of_another_version_or_a_foreign_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FORMAT"), "vdrep-store 99\n").unwrap();
    let e = LocalStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(e, SinkError::StoreVersion { .. }) && !e.is_transient(),
        "{e}"
    );
    assert!(
        e.to_string().contains("vdrep-store 99") && e.to_string().contains("FORMAT"),
        "{e}"
    );
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "x").unwrap();
    assert!(matches!(
        LocalStore::open(foreign.path()).unwrap_err(),
        SinkError::StoreVersion { .. }
    ));
    let fresh = tempfile::tempdir().unwrap();
    LocalStore::open(&fresh.path().join("new/store")).unwrap();
    assert_eq!(
        std::fs::read_to_string(fresh.path().join("new/store/FORMAT")).unwrap(),
        format!("{}\n", vdrep_store::sink::local::STORE_FORMAT)
    );
}

#[test]
fn a_corrupt_state_file_is_detected_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    drop(store.open_disk(&key("d0"), 1 << 20, SRC).unwrap());
    let state = dir.path().join("vm-1/d0.state");
    let mut b = std::fs::read(&state).unwrap();
    b[20] ^= 0x40;
    std::fs::write(&state, &b).unwrap();
    let e = store.open_disk(&key("d0"), 1 << 20, SRC).err().unwrap();
    assert!(
        matches!(e, SinkError::CorruptState { .. }) && !e.is_transient(),
        "{e}"
    );
    assert!(
        e.to_string().contains("d0.state") && e.to_string().contains("checksum"),
        "{e}"
    );
}

/// Writes `src` (a raw image) through the store API as a sender would, commits, and returns
/// the replica's path.
fn replicate_raw(store: &LocalStore, src: &[u8], k: &DiskKey) -> Arc<dyn ReplicaDisk> {
    let d = store.open_disk(k, src.len() as u64, SRC).unwrap();
    let chunk = 256 << 10;
    let mut done = RangeSet::new();
    for (i, c) in src.chunks(chunk).enumerate() {
        let off = (i * chunk) as u64;
        if c.iter().all(|b| *b == 0) {
            d.clear(off, c.len() as u64).unwrap();
        } else {
            d.write(off, c).unwrap();
        }
        done.insert(off, off + c.len() as u64);
        if i % 3 == 0 {
            d.checkpoint(&done).unwrap();
        }
    }
    d.checkpoint(&done).unwrap();
    d.commit_initial(&point0()).unwrap();
    d
}

fn qemu_compare(vhd: &Path, raw: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(vhd)
        .arg(raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("identical"));
}

#[test]
fn a_committed_replica_is_a_fixed_vhd_identical_to_its_raw_source() {
    require_tool("qemu-img", "apt-get install qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let size = (3 << 20) + 7 * 512; // not a MiB multiple: the replica rounds up to 4 MiB
    let mut src = vec![0u8; size];
    src[..1 << 20].copy_from_slice(&pattern(7, 1 << 20));
    let tail = size - 512;
    src[tail..].copy_from_slice(&pattern(8, 512));
    let raw = dir.path().join("source.raw");
    std::fs::write(&raw, &src).unwrap();
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    let d = replicate_raw(&store, &src, &key("d0"));
    let st = d.state();
    assert!(st.initial_committed && !st.initial_in_progress && st.committed_cycle == 0);
    let vhd = dir.path().join("store/vm-1/d0.vhd");
    assert_eq!(d.path_hint(), vhd.display().to_string());
    assert!(!dir.path().join("store/vm-1/d0.vhd.partial").exists());
    assert_eq!(
        std::fs::metadata(&vhd).unwrap().len(),
        replica_file_size(size as u64)
    );
    qemu_compare(&vhd, &raw);
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "vpc"])
        .arg(&vhd)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        info["virtual-size"].as_u64(),
        Some(replica_virtual_size(size as u64))
    );
    assert_eq!(info["virtual-size"].as_u64(), Some(4 << 20));
    // Reopening finds the committed replica and its footer.
    drop(d);
    let d = store.open_disk(&key("d0"), size as u64, SRC).unwrap();
    assert_eq!(
        &d.read_committed(tail as u64, 512).unwrap()[..],
        &src[tail..]
    );
}

#[test]
fn a_new_full_copy_leaves_the_committed_replica_intact_until_it_commits() {
    require_tool("qemu-img", "apt-get install qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let size = 2 << 20;
    let v1 = pattern(1, size);
    let store = LocalStore::open(&dir.path().join("store")).unwrap();
    let d = replicate_raw(&store, &v1, &key("d0"));
    let id1 = d.state().replica_id;
    d.begin_initial().unwrap();
    let st = d.state();
    assert!(
        st.initial_in_progress
            && st.initial_committed
            && st.generation == 2
            && st.progress.is_empty()
    );
    d.write(0, &pattern(2, 65536)).unwrap();
    d.checkpoint(&RangeSet::from_range(0, 65536)).unwrap();
    let raw1 = dir.path().join("v1.raw");
    std::fs::write(&raw1, &v1).unwrap();
    let vhd = dir.path().join("store/vm-1/d0.vhd");
    qemu_compare(&vhd, &raw1);
    assert_eq!(&d.read_committed(0, 512).unwrap()[..], &v1[..512]);
    drop(d);
    let d = store.open_disk(&key("d0"), size as u64, SRC).unwrap();
    assert_eq!(d.state().progress, RangeSet::from_range(0, 65536));
    let mut v2 = v1.clone();
    v2[..65536].copy_from_slice(&pattern(2, 65536));
    d.write(65536, &v2[65536..]).unwrap();
    d.checkpoint(&RangeSet::from_range(0, size as u64)).unwrap();
    d.commit_initial(&point0()).unwrap();
    assert_ne!(d.state().replica_id, id1);
    let raw2 = dir.path().join("v2.raw");
    std::fs::write(&raw2, &v2).unwrap();
    qemu_compare(&vhd, &raw2);
    assert_eq!(d.begin_cycle(1).unwrap(), RangeSet::new());
    d.commit_cycle(&point(1)).unwrap();
    d.commit_cycle(&point(1)).unwrap(); // a resent commit is idempotent
    assert!(matches!(
        d.commit_cycle(&point(0)).unwrap_err(),
        SinkError::InvalidState { .. }
    ));
    assert_eq!(d.state().committed_cycle, 1);
}

#[test]
fn injected_disk_full_is_recoverable_and_retries_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.fail_first(Op::Write, 2, libc::ENOSPC);
    let store = FaultStore::new(
        Arc::new(LocalStore::open(dir.path()).unwrap()),
        plan.clone(),
    );
    let d = store.open_disk(&key("d0"), 1 << 20, SRC).unwrap();
    for _ in 0..2 {
        let e = d.write(0, &pattern(1, 4096)).unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(
            e.to_string().contains("d0.vhd.partial") && e.to_string().contains("full"),
            "{e}"
        );
    }
    d.write(0, &pattern(1, 4096)).unwrap();
    assert_eq!(plan.calls(Op::Write), 3);
    assert_eq!(&d.read(0, 4096).unwrap()[..], &pattern(1, 4096)[..]);
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);
impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs root (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_filesystem_is_a_recoverable_error_naming_the_file() {
    let fs = Tmpfs::mount("2m");
    let store = LocalStore::open(fs.0.path()).unwrap();
    // A 16 MiB sparse disk on a 2 MiB filesystem: the writes run out of space.
    let d = store.open_disk(&key("big"), 16 << 20, SRC).unwrap();
    let chunk = pattern(6, 256 << 10);
    let mut err = None;
    for i in 0..64u64 {
        if let Err(e) = d.write(i * chunk.len() as u64, &chunk) {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("a 2 MiB tmpfs cannot hold 16 MiB");
    assert!(e.is_transient(), "{e}");
    assert!(
        matches!(&e, SinkError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("big.vhd.partial") && msg.contains("offset"),
        "{msg}"
    );
    // Freeing space (clearing punches holes) lets the retry through.
    d.clear(0, 1 << 20).unwrap();
    d.write(0, &chunk).unwrap();
}

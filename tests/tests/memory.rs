//! The memory bound of DESIGN.md §5 and issue 3: at most 256 MiB RSS per process whatever
//! the disk size and link. The receiver into Azurite is the process with the most buffers
//! (QUIC windows, extents being decompressed, the Azure sink's coalesced runs and Put
//! Pages in flight) and Azurite is slower than the sender, so they all fill. Its peak
//! (VmHWM) is read at the end of a 512 MiB send with 16 streams: 328–356 MiB before the
//! allocator settings of `dataplane/src/memory.rs` and the 32 MiB QUIC connection window,
//! 166–175 MiB after (debug and release builds alike).
//!
//! The sender's buffers multiply with the VMs it copies at once (each disk pass has its
//! queue and CPU threads): eight VMs held 377 MiB on a 100 Mbit/s link before compression
//! contexts were pooled per process and prepared extents shared one budget.

use std::path::PathBuf;
use std::time::Duration;

use vdrep_tests::azurite::Azurite;
use vdrep_tests::images::seeded_raw;
use vdrep_tests::procs::{certs, Receiver, Send};

const MIB: u64 = 1 << 20;

/// VmHWM of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}

/// Peak RSS, in MiB, of the largest child process this test has waited for.
fn waited_children_peak_mib() -> u64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a pointer to a live rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    ru.ru_maxrss as u64 / 1024
}

#[test]
fn a_sender_copying_8_vms_at_once_over_a_limited_link_stays_under_256_mib_rss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tls = certs(&dir.join("tls"), &["hv01"]);
    // Incompressible disks at a fixed high level: reads are joined to 4 MiB extents that
    // travel raw, and a link slower than the CPU keeps every queue full.
    let vms: Vec<String> = (1..=8).map(|i| format!("vm{i}")).collect();
    let mut toml = String::new();
    for (i, vm) in vms.iter().enumerate() {
        let disk: PathBuf = seeded_raw(
            &dir.join(format!("{vm}.raw")),
            48 * MIB,
            100 + i as u64,
            1 << 20,
            0,
        );
        toml += &format!(
            "[[vm]]\nname = \"{vm}\"\ndisks = [{:?}]\n",
            disk.display().to_string()
        );
    }
    let config = dir.join("sender.toml");
    std::fs::write(&config, toml).unwrap();
    let allow = format!("hv01={}", vms.join(","));
    let rx = Receiver::start(&dir.join("store"), &tls, &[&allow]);
    let mut send = Send::new(&rx.to(), &tls, "hv01", "-", &[], &dir.join("send.log"));
    send.vm = None;
    let res = send
        .arg("--config")
        .arg(&config.display().to_string())
        .arg("--compression-level")
        .arg("11")
        .arg("--fixed-compression")
        .arg("--bandwidth")
        .arg("200Mbit")
        .run(Duration::from_secs(180));
    assert_eq!(res.code(), Some(0), "send failed:\n{}", res.log);
    for vm in &vms {
        assert!(
            dir.join("store")
                .join(vm)
                .join(format!("{vm}.vhd"))
                .is_file(),
            "{vm} has no replica"
        );
    }
    let peak = waited_children_peak_mib();
    eprintln!("sender peak RSS: {peak} MiB");
    assert!(
        peak < 256,
        "sender peak RSS {peak} MiB with 8 VMs at once, the bound is 256 MiB"
    );
}

#[test]
fn receiver_into_azurite_stays_under_256_mib_rss_while_azurite_is_the_bottleneck() {
    let az = Azurite::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tls = certs(&dir.join("tls"), &["hv01"]);
    // Incompressible data in 1 MiB runs, every 8th left zero: every byte but the holes
    // becomes Put Pages, so the sink's queues stay full for the whole send.
    let disk = seeded_raw(&dir.join("disk0.raw"), 512 * MIB, 7, 1 << 20, 8);
    let rx = Receiver::start_azure(
        &az.url(),
        "replicas",
        &format!("?{}", az.sas()),
        &tls,
        &["hv01=vm1"],
        &dir.join("receiver.log"),
    );
    // More streams than the default 4: more extents in flight at the receiver.
    let res = Send::new(
        &rx.to(),
        &tls,
        "hv01",
        "vm1",
        &[&disk],
        &dir.join("send.log"),
    )
    .arg("--threads")
    .arg("16")
    .run(Duration::from_secs(180));
    assert_eq!(res.code(), Some(0), "send failed:\n{}", res.log);
    let peak = peak_rss_mib(rx.pid().expect("receiver running"));
    eprintln!("receiver peak RSS: {peak} MiB");
    assert!(
        peak < 256,
        "receiver peak RSS {peak} MiB, the bound is 256 MiB"
    );
}

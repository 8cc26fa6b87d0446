//! Issue 16: the receiver's frame budget must never deadlock QUIC's flow control.
//!
//! The receiver reads a frame's header, then waits for frame-budget permits before it reads
//! the body; the body waits in QUIC meanwhile. Bytes QUIC holds for a stream nobody reads
//! still count against the connection's receive window, so when many streams each send a
//! whole 4 MiB extent at once, the streams waiting for permits can fill the connection's
//! window, and the few streams holding permits never receive the rest of their bodies:
//! nothing moves again (`a_sender_copying_8_vms…` in `memory.rs` hung this way). The
//! receiver's transport bounds the streams a connection may have open (QUIC stream credit)
//! so that all of them together can never fill the window (`receiver::limits`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vdrep_proto::wire::{BatchResult, ExtentOp, K_BATCH_RESULT, MAX_CONTROL_BODY, MAX_EXTENT_LEN};
use vdrep_tests::hostile::{batch_start, extent, page_hash, Peer, Target};
use vdrep_tests::images::seeded_raw;
use vdrep_tests::procs::{certs, Receiver, Send, SendResult};

/// Streams that each send one whole extent at the same time: eight times the 16 MiB a
/// connection may hold in frames, four times its largest receive window.
const STREAMS: usize = 32;
/// Well above the time the transfer takes (under a second; the receiver without the
/// stream bound answered 7 to 11 of the 32 and then nothing), well below a hang.
const BOUND: Duration = Duration::from_secs(30);

const MIB: u64 = 1 << 20;

#[test]
fn many_streams_sending_whole_extents_at_once_all_get_their_results() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let Target {
        rt,
        rx: _rx,
        to,
        tls,
    } = Target::start(d, &["hv01"], &["hv01=vm1"], &[], 2);
    let len = MAX_EXTENT_LEN as usize;
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    // Protocol version 6's extent hash (the peer negotiates the newest): every extent starts
    // on a 4 KiB boundary, so one digest serves them all.
    let digest = page_hash(0, &payload);
    let t0 = Instant::now();
    let results = rt.block_on(async {
        let mut p = Peer::connect(to, &tls, "hv01").await.unwrap();
        let mut ctl = p.control().await;
        let size = (STREAMS * len) as u64;
        let (h, g) = p.open(&mut ctl, "vm1", "d1", size).await;
        let mut set = tokio::task::JoinSet::new();
        for k in 0..STREAMS {
            let conn = p.conn.clone();
            let mut frame = batch_start(h, g);
            frame.extend(extent(
                (k * len) as u64,
                MAX_EXTENT_LEN,
                ExtentOp::Write,
                digest,
                &payload,
            ));
            // Each stream writes its whole frame at once, as a sender with many VMs and
            // threads does: QUIC interleaves them on the wire.
            set.spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                send.write_all(&frame).await.map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                let (kind, body) = vdrep::transport::read_frame(&mut recv, MAX_CONTROL_BODY)
                    .await
                    .map_err(|e| e.to_string())?;
                assert_eq!(kind, K_BATCH_RESULT);
                BatchResult::decode(&body).map_err(|e| e.to_string())
            });
        }
        let mut results = Vec::new();
        let waited = tokio::time::timeout(BOUND, async {
            while let Some(r) = set.join_next().await {
                results.push(r.unwrap());
            }
        })
        .await;
        let st = p.conn.stats();
        assert!(
            waited.is_ok(),
            "deadlock: {} of {STREAMS} batches answered in {BOUND:?}; the peer was blocked \
             by the connection's window {} times (DATA_BLOCKED sent), by stream windows {} \
             times (STREAM_DATA_BLOCKED)",
            results.len(),
            st.frame_tx.data_blocked,
            st.frame_tx.stream_data_blocked,
        );
        results
    });
    eprintln!(
        "{STREAMS} streams × {} MiB answered in {:.1} s",
        len >> 20,
        t0.elapsed().as_secs_f64()
    );
    for r in results {
        let r = r.unwrap();
        assert_eq!((r.written, r.error), (1, None), "{:?}", r.rejected);
    }
}

/// Sends `vms` (each one disk, `disk(folder, vm, index)` makes it) with one
/// `vdrep send --config` and `extra` flags to a receiver that allows them all, killed after
/// `limit`; returns the result and how long it took.
fn send_vms(
    d: &Path,
    vms: &[String],
    disk: impl Fn(&Path, &str, usize) -> PathBuf,
    extra: &[&str],
    limit: Duration,
) -> (SendResult, Duration) {
    let tls = certs(&d.join("tls"), &["hv01"]);
    let mut toml = String::new();
    for (i, vm) in vms.iter().enumerate() {
        toml += &format!(
            "[[vm]]\nname = \"{vm}\"\ndisks = [{:?}]\n",
            disk(d, vm, i).display().to_string()
        );
    }
    let config = d.join("sender.toml");
    std::fs::write(&config, toml).unwrap();
    let allow = format!("hv01={}", vms.join(","));
    let rx = Receiver::start(&d.join("store"), &tls, &[&allow]);
    let mut send = Send::new(&rx.to(), &tls, "hv01", "-", &[], &d.join("send.log"))
        .arg("--config")
        .arg(&config.display().to_string());
    send.vm = None;
    for a in extra {
        send = send.arg(a);
    }
    let t0 = Instant::now();
    let res = send.run(limit);
    (res, t0.elapsed())
}

/// VMs one sender copies over its one connection: more than the stream credit of a
/// connection of a default receiver before control streams had credit of their own (64).
const MANY_VMS: usize = 70;

#[test]
fn a_sender_copying_70_vms_over_one_connection_completes_them_all() {
    // Each VM holds a control stream for its whole copy. When they counted against the
    // connection's stream credit, 64 control streams took all of it: the data streams of
    // every VM waited in `open_bi` for credit that never came, and the send hung. Control
    // streams now get credit of their own (`receiver/windows.rs`, "Streams").
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let vms: Vec<String> = (1..=MANY_VMS).map(|i| format!("vm{i}")).collect();
    let disk = |d: &Path, vm: &str, i: usize| {
        seeded_raw(&d.join(format!("{vm}.raw")), MIB, i as u64, 64 << 10, 0)
    };
    let (res, took) = send_vms(d, &vms, disk, &[], Duration::from_secs(120));
    assert_eq!(
        res.code(),
        Some(0),
        "the send of {MANY_VMS} VMs did not end in {took:?}:\n{}",
        res.log
    );
    for vm in &vms {
        let replica = d.join("store").join(vm).join(format!("{vm}.vhd"));
        assert!(replica.is_file(), "{vm} has no replica");
    }
    eprintln!("{MANY_VMS} VMs in {:.1} s", took.as_secs_f64());
}

/// Batch streams 3 VMs on 32 threads each keep busy: three times the data streams a lone
/// connection gets (32).
const BUSY_VMS: usize = 3;
const BUSY_THREADS: &str = "32";

#[test]
fn three_vms_on_32_threads_each_complete_though_their_streams_outnumber_the_credit() {
    // 96 stream workers, 32 data credits. Each worker takes an extent (and its share of the
    // prepared budget) before it waits for credit; streams with credit used to wait for
    // their batch's next extent while the waiting workers held the whole budget, so nothing
    // more was prepared and the copy sent nothing at all (`sender/credit.rs`). Random data,
    // so that extents travel whole and the budget holds few of them.
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let vms: Vec<String> = (0..BUSY_VMS).map(|i| format!("vm{i}")).collect();
    let disk = |d: &Path, vm: &str, i: usize| {
        seeded_raw(
            &d.join(format!("{vm}.raw")),
            96 * MIB,
            100 + i as u64,
            1 << 20,
            0,
        )
    };
    let (res, took) = send_vms(
        d,
        &vms,
        disk,
        &["--threads", BUSY_THREADS],
        Duration::from_secs(60),
    );
    assert_eq!(
        res.code(),
        Some(0),
        "the send of {BUSY_VMS} VMs on {BUSY_THREADS} threads did not end in {took:?}:\n{}",
        res.log
    );
    for vm in &vms {
        let replica = d.join("store").join(vm).join(format!("{vm}.vhd"));
        let source = d.join(format!("{vm}.raw"));
        vdrep_tests::cycles::assert_same(&source, &replica, "vpc", vm);
    }
    eprintln!(
        "{BUSY_VMS} VMs × {BUSY_THREADS} threads in {:.1} s",
        took.as_secs_f64()
    );
}

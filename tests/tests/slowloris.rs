//! Issue 16: slowloris. A receiver reads a frame's body only once it holds permits of the
//! frame budget for all of it (64 MiB over all connections, 16 MiB per connection), so
//! connections that announce large frames and then trickle their bytes can hold the whole
//! budget: five of them starve an honest sender for as long as they keep trickling. A body
//! must now arrive by its deadline (`receiver::limits::body_deadline`: 30 s + its length
//! at 4 KiB/s; the test hook `VDREP_TEST_BODY_DEADLINE` shortens it to 3 s here) whenever
//! other frames wait for the budget: the slow connections are then closed with close code
//! 5 (`SLOW_FRAME`), counted as `slow_frame`, and the honest copy completes. A slow
//! connection nobody waits behind is left alone.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use vdrep_proto::wire::{ExtentOp, MAX_EXTENT_LEN};
use vdrep_tests::hostile::{batch_start, bytes, extent, Peer};
use vdrep_tests::images::random_raw;
use vdrep_tests::procs::{assert_replica_identical, certs, finish, Send};
use vdrep_tests::prom::{sample, scrape};
use vdrep_tests::roles::Role;

const MIB: u64 = 1 << 20;
/// Slow connections: each holds its 16 MiB share, five hold more than the 64 MiB budget.
const SLOW: usize = 5;
/// Frames each slow connection starts (4 × 4 MiB: its whole share).
const FRAMES: usize = 4;
/// The deadline the test hook gives every body.
const DEADLINE_MS: u64 = 3000;
/// The honest copy's bound: the deadline, the copy (a second or two), and room for a
/// loaded machine; without the deadline it never ends.
const BOUND: Duration = Duration::from_secs(90);

/// A connection that opens a disk, then on each of [`FRAMES`] streams sends a 4 MiB
/// extent's header and its first KiB, then one byte every half second.
async fn slowloris(to: SocketAddr, tls: &Path, n: usize) -> Peer {
    let mut p = Peer::connect(to, tls, "evil").await.unwrap();
    let mut ctl = p.control().await;
    let (h, g) = p.open(&mut ctl, "vm2", &format!("slow{n}"), 64 * MIB).await;
    let payload = bytes(MAX_EXTENT_LEN as usize, 0x5a);
    for k in 0..FRAMES {
        let (mut send, recv) = p.conn.open_bi().await.unwrap();
        let mut f = batch_start(h, g);
        let frame = extent(
            k as u64 * 4 * MIB,
            MAX_EXTENT_LEN,
            ExtentOp::Write,
            [0; 32],
            &payload,
        );
        let head = f.len() + frame.len() - payload.len();
        f.extend(frame);
        p.tally("slow_frames", 1);
        tokio::spawn(async move {
            let _keep = recv;
            let mut at = head + 1024;
            if send.write_all(&f[..at]).await.is_err() {
                return;
            }
            while at < f.len() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if send.write_all(&f[at..at + 1]).await.is_err() {
                    return;
                }
                at += 1;
            }
        });
    }
    p
}

#[test]
fn slowloris_connections_are_closed_and_an_honest_sender_completes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = certs(&d.join("tls"), &["hv01", "evil"]);
    let store = d.join("store");
    let args: Vec<String> = [
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store.to_str().unwrap(),
        "--tls",
        tls.to_str().unwrap(),
        "--allow",
        "hv01=vm1",
        "--allow",
        "evil=vm2",
        "--metrics",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rx = Role::start_env(
        &args,
        &d.join("receiver.log"),
        &["listening on ", "metrics on "],
        &[("VDREP_TEST_BODY_DEADLINE", &DEADLINE_MS.to_string())],
    );
    let to: SocketAddr = rx.addr("listening on ").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let slow: Vec<Peer> = rt.block_on(async {
        // Alone, a slow connection past its deadline is left alone: nobody waits behind
        // it (a sender on a slow link looks the same).
        let first = slowloris(to, &tls, 0).await;
        tokio::time::sleep(Duration::from_millis(DEADLINE_MS + 1500)).await;
        assert!(
            first.conn.close_reason().is_none(),
            "a slow frame nobody waits behind was closed: {:?}",
            first.conn.close_reason()
        );
        let mut v = vec![first];
        for n in 1..SLOW {
            v.push(slowloris(to, &tls, n).await);
        }
        // Let the receiver read every header and take the permits.
        tokio::time::sleep(Duration::from_millis(500)).await;
        v
    });
    let img = random_raw(&d.join("legit.raw"), 16 * MIB);
    let send = Send::new(
        &to.to_string(),
        &tls,
        "hv01",
        "vm1",
        &[&img],
        &d.join("s.log"),
    );
    let t0 = Instant::now();
    let r = finish(send.spawn(), t0, BOUND, &send.log);
    r.ok();
    let took = t0.elapsed();
    assert_replica_identical(&img, "raw", &store.join("vm1").join("legit.vhd"));
    let closed: Vec<String> = slow
        .iter()
        .filter_map(|p| p.conn.close_reason().map(|r| r.to_string()))
        .collect();
    // Slow connections are closed only while frames wait behind them: as many as the
    // honest copy needed room from (at least one), not necessarily all five.
    assert!(
        !closed.is_empty(),
        "the slow connections holding the budget are closed"
    );
    for c in &closed {
        assert!(
            c.contains("not received within") && c.contains("KiB/s"),
            "the close names the problem: {c}"
        );
    }
    let m = scrape(&rx.addr("metrics on "));
    let counted = sample(&m, "vdrep_refusals_total", &[("class", "slow_frame")]).unwrap_or(0.0);
    assert!(
        counted >= closed.len() as f64,
        "{counted} slow frames counted, {} connections closed",
        closed.len()
    );
    eprintln!(
        "{SLOW} slowloris connections × {FRAMES} frames: closed ({closed:?}); honest 16 MiB \
         copy in {:.1} s; slow_frame refusals {counted}",
        took.as_secs_f64()
    );
}

//! Issue 16: a receiver serving hostile peers. Peers with valid certificates (built on the
//! project's transport, `vdrep_tests::hostile`) send wrapping and oversized sizes, offsets
//! past the end, frames out of order and repeated, handles they were never given, torn and
//! oversized frames and thousands of streams, and hold frames half-sent on hundreds of
//! streams; meanwhile an honest `vdrep send` replicates its VM. The receiver stays up, the
//! honest replica compares equal, every refusal is logged and counted
//! (`vdrep_refusals_total{class}`), one connection over `--max-connections` is refused as
//! busy, and the receiver's peak RSS (VmHWM) stays within 256 MiB.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use vdrep_proto::wire::{Control, ErrorClass, ExtentOp, K_EXTENT, MAX_EXTENT_LEN};

/// Kind of `Hello` (WIRE.md §4).
const K_HELLO: u8 = 1;
use vdrep_tests::hostile::{
    batch_start, bytes, extent, hash, header, open_disk, page_hash, Got, Peer, Target,
};
use vdrep_tests::images::random_raw;
use vdrep_tests::procs::{assert_replica_identical, finish, Send};
use vdrep_tests::prom::{sample, scrape};

const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;
const MAX_CONNECTIONS: usize = 6;
/// Connections that hold frames half-sent on many streams (3 × 16 MiB of the 64 MiB frame
/// budget: the honest sender keeps the rest).
const FLOODERS: usize = 3;
const FLOOD_STREAMS: usize = 200;
const THOUSANDS: usize = 3000;

fn vm_hwm_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    kb / 1024
}

fn class(g: &Got) -> Option<ErrorClass> {
    g.class()
}

/// A connection that opens its own disk, then starts a 4 MiB extent on each of `streams`
/// streams and sends all of it but the last byte, never finishing: the receiver must hold
/// at most its share of these bodies and leave the rest in QUIC's flow control. Streams
/// past the receiver's stream credit never open (the peer stops asking after a second).
async fn flood(to: SocketAddr, tls: &Path, n: usize, streams: usize) -> Peer {
    let mut p = Peer::connect(to, tls, "evil").await.unwrap();
    let mut ctl = p.control().await;
    let (h, g) = p.open(&mut ctl, "vm2", &format!("flood{n}"), DISK).await;
    let payload = bytes(MAX_EXTENT_LEN as usize, 0x5a);
    for k in 0..streams {
        let Ok(Ok((mut send, recv))) =
            tokio::time::timeout(Duration::from_secs(1), p.conn.open_bi()).await
        else {
            p.tally("streams_held_back_by_stream_credit", (streams - k) as u64);
            break;
        };
        let mut f = batch_start(h, g);
        let off = (k as u64 * 4 * MIB) % DISK;
        f.extend(extent(
            off,
            MAX_EXTENT_LEN,
            ExtentOp::Write,
            [0; 32],
            &payload,
        ));
        f.pop(); // never complete
        p.tally("half_sent_frames", 1);
        tokio::spawn(async move {
            let _keep = recv;
            let _ = send.write_all(&f).await;
            std::future::pending::<()>().await;
        });
    }
    p
}

/// Thousands of short data streams naming a handle the connection was never given.
async fn thousands(p: &mut Peer) {
    let mut set = tokio::task::JoinSet::new();
    let mut refused = 0;
    let count = |r: Result<Option<ErrorClass>, tokio::task::JoinError>| {
        matches!(r, Ok(Some(ErrorClass::Protocol))) as usize
    };
    for k in 0..THOUSANDS {
        let conn = p.conn.clone();
        set.spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            send.write_all(&batch_start(10_000 + k as u32, 1))
                .await
                .ok()?;
            send.finish().ok()?;
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                vdrep::transport::read_frame(&mut recv, 1 << 20),
            )
            .await
            .ok()?
            .ok()?;
            vdrep_proto::wire::BatchResult::decode(&r.1)
                .ok()?
                .error
                .map(|e| e.0)
        });
        while set.len() >= 200 {
            if let Some(r) = set.join_next().await {
                refused += count(r);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        refused += count(r);
    }
    p.tally("thousands_of_streams", THOUSANDS as u64);
    assert_eq!(refused, THOUSANDS, "every unknown-handle stream refused");
}

/// The control-stream attacks of one peer.
async fn control_attacks(p: &mut Peer, h: u32, g: u64) {
    let mut ctl = p.control().await;
    // Wrapping and oversized disk sizes (finding 1's range included): refused, stream usable.
    for size in [
        u64::MAX,
        u64::MAX - (1 << 20) + 2,
        u64::MAX - 511,
        0,
        8 << 40,
    ] {
        let got = p
            .request(&mut ctl, "wrapping_size", open_disk("vm2", "w", size))
            .await;
        assert_eq!(
            class(&got),
            Some(ErrorClass::InvalidState),
            "{size}: {got:?}"
        );
    }
    // Another VM's disk and capacity: unauthorised, stream usable.
    let got = p
        .request(&mut ctl, "other_vm", open_disk("vm1", "legit", DISK))
        .await;
    assert_eq!(class(&got), Some(ErrorClass::Unauthorized), "{got:?}");
    let q = Control::QueryCapacity {
        req: 0,
        vm: "vm1".into(),
        needed: 1,
    };
    let got = p.request(&mut ctl, "other_vm", q).await;
    assert_eq!(class(&got), Some(ErrorClass::Unauthorized), "{got:?}");
    // Out of order on a usable stream: a commit of another generation, a cycle commit with
    // no cycle open, a page of progress never announced.
    let got = p
        .request(
            &mut ctl,
            "out_of_order",
            Control::CommitInitial {
                req: 0,
                handle: h,
                generation: g + 1,
            },
        )
        .await;
    assert_eq!(class(&got), Some(ErrorClass::InvalidState), "{got:?}");
    let got = p
        .request(
            &mut ctl,
            "out_of_order",
            Control::ProgressRequest {
                req: 0,
                handle: h,
                after: 0,
            },
        )
        .await;
    assert_eq!(class(&got), Some(ErrorClass::InvalidState), "{got:?}");
    // Repeated: the same open three times.
    for _ in 0..3 {
        let got = p
            .request(&mut ctl, "repeated", open_disk("vm2", "d1", DISK))
            .await;
        // The disk is open on this connection already: answered again, or refused as busy
        // (its store lock is held), never a failure of the receiver.
        assert!(
            matches!(got, Got::Answer(Control::DiskOpened { .. }))
                || class(&got) == Some(ErrorClass::TargetBusy),
            "{got:?}"
        );
    }
    // A second hello on a ready stream: a protocol violation that closes the stream.
    let hello = Control::Hello {
        min_version: 1,
        max_version: 4,
        software: "again".into(),
    };
    let got = p.send(&mut ctl, "repeated", &hello.encode()).await;
    assert_eq!(class(&got), Some(ErrorClass::Protocol), "{got:?}");

    // Each of these closes its stream: one fresh stream each.
    let fatal: Vec<(&'static str, Control)> = vec![
        (
            "foreign_handle",
            Control::CommitInitial {
                req: 0,
                handle: h + 1000,
                generation: g,
            },
        ),
        (
            "foreign_handle",
            Control::BeginCycle {
                req: 0,
                handle: 1 << 31,
                cycle: 1,
            },
        ),
        ("foreign_handle", Control::RootRequest { req: 0, handle: 0 }),
        (
            "out_of_order",
            Control::DiskOpened {
                req: 1,
                handle: h,
                initial_committed: true,
                committed_cycle: 9,
                generation: g,
                known_empty: false,
                progress: vdrep_proto::RangeSet::new(),
                more_progress: false,
            },
        ),
        (
            "oversized",
            Control::HashRequest {
                req: 0,
                handle: h,
                level: 9,
                parents: vec![],
                verify: false,
            },
        ),
    ];
    for (what, msg) in fatal {
        let mut c = p.control().await;
        let got = p.request(&mut c, what, msg).await;
        assert!(
            matches!(
                class(&got),
                Some(ErrorClass::Protocol) | Some(ErrorClass::InvalidState)
            ),
            "{what}: {got:?}"
        );
    }
    // A request before the hello.
    let mut c = p.raw().await;
    let got = p
        .request(
            &mut c,
            "out_of_order",
            Control::BeginCycle {
                req: 0,
                handle: h,
                cycle: 1,
            },
        )
        .await;
    assert_eq!(class(&got), Some(ErrorClass::Protocol), "{got:?}");
    // Oversized and torn control frames: the stream ends, nothing is buffered.
    let c = p.control().await;
    let got = p.torn(c, "oversized", &header(3, 2 << 20)).await;
    assert!(matches!(got, Got::Closed(_)), "{got:?}");
    let c = p.raw().await;
    let got = p.torn(c, "oversized", &header(K_HELLO, u32::MAX)).await;
    assert!(matches!(got, Got::Closed(_)), "{got:?}");
    let c = p.control().await;
    let mut f = header(3, 1000);
    f.extend([1u8; 10]);
    let got = p.torn(c, "truncated", &f).await;
    assert!(matches!(got, Got::Closed(_)), "{got:?}");
}

/// The data-stream attacks of one peer on its disk `h` (generation `g`).
async fn data_attacks(p: &mut Peer, h: u32, g: u64) {
    let start = batch_start(h, g);
    let four_k = bytes(4096, 7);
    let ok4k = |off| extent(off, 4096, ExtentOp::Write, page_hash(off, &four_k), &four_k);
    let bad: Vec<(&'static str, Vec<Vec<u8>>, ErrorClass)> = vec![
        ("past_end", vec![ok4k(DISK)], ErrorClass::Protocol),
        (
            "past_end",
            vec![ok4k(u64::MAX - 4095)],
            ErrorClass::Protocol,
        ),
        (
            "oversized",
            vec![extent(0, 2 << 30, ExtentOp::Clear, [0; 32], &[])],
            ErrorClass::Protocol,
        ),
        (
            "oversized",
            vec![{
                let mut f = header(K_EXTENT, 8 << 20);
                f.extend([0u8; 46]);
                f
            }],
            ErrorClass::Protocol,
        ),
        (
            "wrong_frame",
            vec![Control::RootRequest { req: 1, handle: h }.encode()],
            ErrorClass::Protocol,
        ),
        (
            "wrapping_size",
            vec![extent(
                512,
                4096,
                ExtentOp::Write,
                hash(&four_k),
                &four_k[..100],
            )],
            ErrorClass::Protocol,
        ),
    ];
    for (what, frames, want) in bad {
        let r = p.batch(what, &start, &frames, true).await;
        let got = r.as_ref().and_then(|r| r.error.as_ref().map(|e| e.0));
        assert_eq!(got, Some(want), "{what}: {r:?}");
    }
    // Stale generation, and a handle this connection was never given.
    let r = p
        .batch("out_of_order", &batch_start(h, g + 7), &[], true)
        .await;
    assert_eq!(
        r.and_then(|r| r.error).map(|e| e.0),
        Some(ErrorClass::InvalidState)
    );
    let r = p
        .batch("foreign_handle", &batch_start(h + 500, g), &[], true)
        .await;
    assert_eq!(
        r.and_then(|r| r.error).map(|e| e.0),
        Some(ErrorClass::Protocol)
    );
    // Out of order and repeated extents are only writes: accepted. Damaged ones rejected.
    let frames = vec![ok4k(8192), ok4k(0), ok4k(8192), ok4k(8192)];
    let r = p.batch("repeated", &start, &frames, true).await.unwrap();
    assert!(r.error.is_none() && r.written == 4, "{r:?}");
    let damaged: Vec<_> = (0..5u64)
        .map(|i| extent(i * 4096, 4096, ExtentOp::Write, [1; 32], &four_k))
        .collect();
    let r = p.batch("damaged", &start, &damaged, true).await.unwrap();
    assert!(r.error.is_none() && r.rejected.len() == 5, "{r:?}");
    // Truncated: an extent's payload cut short, then the stream ends or is reset.
    let mut cut = extent(
        0,
        MAX_EXTENT_LEN,
        ExtentOp::Write,
        [0; 32],
        &vec![3; MAX_EXTENT_LEN as usize],
    );
    cut.truncate(100 << 10);
    let r = p.batch("truncated", &start, &[cut.clone()], true).await;
    assert!(r.and_then(|r| r.error).is_some());
    let _ = p.batch("truncated", &start, &[cut], false).await;
}

#[test]
fn hostile_peers_are_refused_counted_and_bounded_while_an_honest_sender_replicates() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let Target { rt, rx, to, tls } = Target::start(
        d,
        &["hv01", "evil"],
        &["hv01=vm1", "evil=vm2"],
        &[
            "--metrics",
            "127.0.0.1:0",
            "--max-connections",
            &MAX_CONNECTIONS.to_string(),
        ],
        2,
    );
    let store = d.join("store");
    let pid = rx.pid().unwrap();

    // Half-sent frames on hundreds of streams first, so the honest copy runs under them.
    let flooders: Vec<Peer> = rt.block_on(async {
        let mut v = Vec::new();
        for n in 0..FLOODERS {
            v.push(flood(to, &tls, n, FLOOD_STREAMS).await);
        }
        v
    });
    let img = random_raw(&d.join("legit.raw"), 96 * MIB);
    let send = Send::new(
        &to.to_string(),
        &tls,
        "hv01",
        "vm1",
        &[&img],
        &d.join("s.log"),
    )
    .arg("--give-up-after")
    .arg("120s")
    .arg("--bandwidth")
    .arg("200Mbit");
    let t0 = Instant::now();
    let honest = send.spawn();

    let (mut main, busy) = rt.block_on(async {
        let mut p = Peer::connect(to, &tls, "evil").await.unwrap();
        let mut ctl = p.control().await;
        let (h, g) = p.open(&mut ctl, "vm2", "d1", DISK).await;
        control_attacks(&mut p, h, g).await;
        data_attacks(&mut p, h, g).await;
        thousands(&mut p).await;
        // Fill the receiver to its limit (honest 1 + main 1 + flooders + idle), then one more.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS - 2 - FLOODERS {
            let mut q = Peer::connect(to, &tls, "evil").await.unwrap();
            q.control().await;
            idle.push(q);
        }
        let extra = Peer::connect(to, &tls, "evil").await.unwrap();
        let busy = match extra.conn.open_bi().await {
            Ok((mut s, _)) => {
                let _ = s.write_all(&[1]).await;
                extra.conn.closed().await
            }
            Err(e) => e,
        };
        (p, busy.to_string())
    });
    assert!(
        busy.contains("--max-connections") && busy.contains(&MAX_CONNECTIONS.to_string()),
        "the connection over the limit is refused as busy, naming it: {busy}"
    );
    let hwm_under_attack = vm_hwm_mib(pid);
    main.tally("busy_connection", 1);
    // Let the flood go: the honest sender finishes, bit-exact.
    let mut sent: BTreeMap<&str, u64> = main.sent.clone();
    let mut answers = main.answers.clone();
    for f in &flooders {
        for (k, v) in &f.sent {
            *sent.entry(k).or_default() += v;
        }
        for (k, v) in &f.answers {
            *answers.entry(k.clone()).or_default() += v;
        }
    }
    drop(flooders);
    let r = finish(honest, t0, Duration::from_secs(300), &send.log);
    r.ok();
    assert_replica_identical(&img, "raw", &store.join("vm1").join("legit.vhd"));

    let m = scrape(&rx.addr("metrics on "));
    let count = |c: &str| sample(&m, "vdrep_refusals_total", &[("class", c)]).unwrap_or(0.0) as u64;
    let refused_answers: u64 = answers
        .iter()
        .filter(|(k, _)| *k != "ok" && *k != "closed")
        .map(|(_, v)| *v)
        .sum();
    let total: u64 = [
        "protocol",
        "invalid_state",
        "unauthorized",
        "internal",
        "connection_limit",
    ]
    .iter()
    .map(|c| count(c))
    .sum();
    assert!(
        count("unauthorized") >= 2 && count("connection_limit") >= 1,
        "{m}"
    );
    assert!(count("invalid_state") >= 8, "{m}");
    assert!(count("protocol") >= THOUSANDS as u64 + 15, "{m}");
    assert!(
        total >= refused_answers,
        "every refusal answered was counted: {total} < {refused_answers}"
    );
    let log = std::fs::read_to_string(&rx.log).unwrap();
    assert!(log.matches("refused").count() as u64 >= total, "and logged");
    let hwm = vm_hwm_mib(pid);
    eprintln!(
        "hostile frames sent: {sent:?}\nanswers: {answers:?}\nrefusals counted: protocol {} \
         invalid_state {} unauthorized {} internal {} connection_limit {}\nreceiver VmHWM \
         {hwm_under_attack} MiB under attack, {hwm} MiB at the end",
        count("protocol"),
        count("invalid_state"),
        count("unauthorized"),
        count("internal"),
        count("connection_limit"),
    );
    assert!(
        hwm <= 256,
        "the receiver's peak RSS {hwm} MiB exceeds 256 MiB"
    );
}

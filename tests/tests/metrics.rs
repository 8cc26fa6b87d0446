//! Metrics of the sender and receiver during a real replication: each role's live
//! exposition passes `promtool check metrics` (lint included) and carries the expected
//! series and values.

use std::time::Duration;

use vdrep_tests::images::seeded_raw;
use vdrep_tests::procs::certs;
use vdrep_tests::prom::{promtool_check, sample, scrape};
use vdrep_tests::roles::{eventually, Role};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn sender_and_receiver_expose_lint_clean_metrics_with_the_replication_figures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    let size = 12u64 << 20;
    // Every 4th MiB stays zero: skipped bytes are counted, data bytes are the rest.
    let disk = seeded_raw(&d.join("os.raw"), size, 7, 1 << 20, 4);
    let rx = Role::receiver(d, &tls, "hv01=web", true);
    let mut args = rx.send_args(&tls, "hv01");
    args.extend(s(&[
        "--vm",
        "web",
        disk.to_str().unwrap(),
        "--interval",
        "1s",
        "--no-progress",
        "--metrics",
        "127.0.0.1:0",
    ]));
    let tx = Role::start(&args, &d.join("sender.log"), &["metrics on "]);
    let (sm, rm) = (tx.addr("metrics on "), rx.addr("metrics on "));
    let web = [("vm", "web"), ("disk", "os")];
    // Two cycles committed and the sampler has run since: every series is there. The
    // sampler sets the gauges once a second, after the counters: under load a scrape can
    // see the cycles counted before the copy's progress gauge reached 1 (a full suite saw
    // 0.33), so the wait includes it; it must get there within the minute.
    let sender = eventually(Duration::from_secs(60), || {
        let t = scrape(&sm);
        (sample(&t, "vdrep_cycles_total", &web)? >= 2.0
            && sample(&t, "vdrep_health", &[("state", "normal")])? == 1.0
            && sample(&t, "vdrep_resync_progress_ratio", &web)? == 1.0)
            .then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "no 2 cycles at full progress in the sender's metrics; log:\n{}",
            tx.log_text()
        )
    });
    let receiver = scrape(&rm);

    assert_eq!(promtool_check(&sender), "", "sender exposition:\n{sender}");
    assert_eq!(
        promtool_check(&receiver),
        "",
        "receiver exposition:\n{receiver}"
    );

    let v = |t: &str, n: &str, l: &[(&str, &str)]| {
        sample(t, n, l).unwrap_or_else(|| panic!("{n}{l:?} missing in:\n{t}"))
    };
    // Initial copy of a sparse raw file: the holes (every 4th MiB) are skipped unread, the
    // rest is read, sent as data and written.
    assert_eq!(
        v(&sender, "vdrep_read_bytes_total", &web),
        (size * 3 / 4) as f64
    );
    assert_eq!(
        v(
            &sender,
            "vdrep_skipped_bytes_total",
            &[("vm", "web"), ("reason", "unallocated")]
        ),
        (size / 4) as f64
    );
    let data = v(&sender, "vdrep_data_bytes_total", &web);
    assert_eq!(data, (size * 3 / 4) as f64);
    assert!(v(&sender, "vdrep_wire_bytes_total", &web) >= data * 0.99);
    assert!(v(&sender, "vdrep_extents_total", &web) >= 9.0);
    assert!((0.9..1.1).contains(&v(&sender, "vdrep_compression_ratio", &web)));
    assert!(v(&sender, "vdrep_rpo_seconds", &web) <= 5.0);
    assert!(v(&sender, "vdrep_cycle_duration_seconds_count", &web) >= 2.0);
    assert_eq!(v(&sender, "vdrep_health", &[("state", "critical")]), 0.0);
    assert_eq!(v(&sender, "vdrep_resync_required", &web), 0.0);
    assert_eq!(v(&sender, "vdrep_resync_progress_ratio", &web), 1.0);
    assert_eq!(
        v(&sender, "vdrep_throttle_limit_bytes_per_second", &[]),
        0.0
    );
    let rtt = v(&sender, "vdrep_quic_rtt_seconds", &[]);
    assert!(rtt > 0.0 && rtt < 1.0, "rtt {rtt}");
    assert!(v(&sender, "vdrep_quic_congestion_window_bytes", &[]) > 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days = (v(
        &sender,
        "vdrep_certificate_expiry_timestamp_seconds",
        &[("cert", "identity"), ("name", "hv01")],
    ) - now)
        / 86400.0;
    assert!(
        (824.0..826.0).contains(&days),
        "identity expires in {days} days"
    );
    // Each role names its build.
    for t in [&sender, &receiver] {
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        assert_eq!(v(t, "vdrep_build_info", &version), 1.0);
        let line = t
            .lines()
            .find(|l| l.starts_with("vdrep_build_info{"))
            .unwrap();
        assert!(
            line.contains("commit=\"") && !line.contains("commit=\"\""),
            "{line}"
        );
    }

    // The replica started empty: zero runs need no write.
    assert_eq!(v(&receiver, "vdrep_written_bytes_total", &web), data);
    assert!(v(&receiver, "vdrep_recovery_points", &web) >= 2.0);
    assert!(v(&receiver, "vdrep_rpo_seconds", &web) <= 5.0);
    assert!(
        v(
            &receiver,
            "vdrep_certificate_expiry_timestamp_seconds",
            &[("cert", "peer"), ("name", "hv01")]
        ) > now + 300.0 * 86400.0
    );
    // Every series is described: a HELP line per metric family.
    for t in [&sender, &receiver] {
        for l in t.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = l.split_whitespace().nth(2).unwrap();
            assert!(t.contains(&format!("# HELP {name} ")), "{name} has no HELP");
            assert!(
                vdrep::metrics::lookup(name).is_some(),
                "{name} is not in the spec table"
            );
        }
    }
}

#[test]
fn receiver_counts_refused_peers_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01", "intruder"]);
    let disk = seeded_raw(&d.join("os.raw"), 1 << 20, 1, 1 << 20, 0);
    let rx = Role::receiver(d, &tls, "hv01=web", true);
    let out = vdrep_tests::vdrep_command()
        .args(rx.send_args(&tls, "intruder"))
        .args(["--vm", "web", disk.to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unknown sender is non-recoverable"
    );
    let t = scrape(&rx.addr("metrics on "));
    let refused = sample(
        &t,
        "vdrep_refused_peers_total",
        &[("reason", "unknown_sender")],
    );
    assert!(refused >= Some(1.0), "{t}");
    assert!(
        !t.contains("intruder"),
        "an unknown sender's certificate is not exported:\n{t}"
    );
    assert_eq!(promtool_check(&t), "");
}

/// The receiver's certificate expiry is a timestamp, and a renewed certificate file is taken
/// without restart: the gauge moves to the new expiry (and a half-done replacement that does
/// not load keeps the old one in use).
#[test]
fn receiver_rereads_a_replaced_certificate_and_exports_its_expiry_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = d.join("tls");
    vdrep_tests::vdrep_ok(&[
        "certs",
        "init",
        tls.to_str().unwrap(),
        "--sender",
        "hv01",
        "--days",
        "30",
    ]);
    let rx = Role::receiver(d, &tls, "hv01=web", true);
    let m = rx.addr("metrics on ");
    let identity = [("cert", "identity")];
    let expiry = || {
        let t = scrape(&m);
        sample(&t, "vdrep_certificate_expiry_timestamp_seconds", &identity)
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let days_left = |ts: f64| (ts - now()) / 86400.0;
    let first = expiry().unwrap_or_else(|| panic!("no identity expiry; log:\n{}", rx.log_text()));
    assert!(
        (29.0..=30.5).contains(&days_left(first)),
        "{}",
        days_left(first)
    );

    // A renewal: a certificate and key valid for 400 days replace the files in place.
    let renewed = d.join("renewed");
    vdrep_tests::vdrep_ok(&[
        "certs",
        "init",
        renewed.to_str().unwrap(),
        "--sender",
        "hv01",
        "--days",
        "400",
    ]);
    // First only the certificate: it does not match the old key, so nothing changes.
    std::fs::copy(renewed.join("receiver.pem"), tls.join("receiver.pem")).unwrap();
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        expiry(),
        Some(first),
        "a certificate without its key was taken"
    );
    assert!(rx.log_text().contains("do not load"), "{}", rx.log_text());
    std::fs::copy(renewed.join("receiver.key"), tls.join("receiver.key")).unwrap();
    let second = eventually(Duration::from_secs(20), || expiry().filter(|t| *t != first))
        .unwrap_or_else(|| {
            panic!(
                "the renewed certificate was not taken; log:\n{}",
                rx.log_text()
            )
        });
    assert!(
        (399.0..=400.5).contains(&days_left(second)),
        "{}",
        days_left(second)
    );
}

/// A protecting sender takes its renewed certificate at the next connection, without
/// restart: after the receiver restarts on the same port, the receiver sees the new
/// certificate (its peer expiry gauge) and the sender says it reloaded.
#[test]
fn a_protecting_sender_uses_its_renewed_certificate_at_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = d.join("tls");
    let t = tls.to_str().unwrap();
    vdrep_tests::vdrep_ok(&["certs", "init", t, "--sender", "hv01", "--days", "30"]);
    let disk = seeded_raw(&d.join("os.raw"), 4 << 20, 5, 1 << 20, 3);
    let rx_args = |listen: &str| {
        s(&[
            "receive",
            "--listen",
            listen,
            "--store",
            d.join("store").to_str().unwrap(),
            "--tls",
            t,
            "--allow",
            "hv01=web",
            "--metrics",
            "127.0.0.1:0",
        ])
    };
    let mut rx = Role::start(
        &rx_args("127.0.0.1:0"),
        &d.join("rx1.log"),
        &["listening on ", "metrics on "],
    );
    let listen = rx.addr("listening on ");
    let tx = Role::start(
        &s(&[
            "send",
            "--to",
            &listen,
            "--tls",
            t,
            "--identity",
            "hv01",
            "--vm",
            "web",
            disk.to_str().unwrap(),
            "--interval",
            "1s",
            "--no-progress",
            "--state",
            d.join("state").to_str().unwrap(),
        ]),
        &d.join("sender.log"),
        &[],
    );
    let peer_days = |rx: &Role| {
        let t = scrape(&rx.addr("metrics on "));
        let ts = sample(
            &t,
            "vdrep_certificate_expiry_timestamp_seconds",
            &[("cert", "peer"), ("name", "hv01")],
        )?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        Some((ts - now) / 86400.0)
    };
    let first = eventually(Duration::from_secs(30), || {
        peer_days(&rx).filter(|d| *d < 31.0)
    })
    .unwrap_or_else(|| panic!("no peer certificate; sender:\n{}", tx.log_text()));
    assert!(first > 29.0, "{first}");

    // Renewal with the same CA, then a new connection: the receiver restarts on its port.
    vdrep_tests::vdrep_ok(&["certs", "add-sender", t, "hv01", "--force", "--days", "400"]);
    rx.kill();
    let rx = Role::start(
        &rx_args(&listen),
        &d.join("rx2.log"),
        &["listening on ", "metrics on "],
    );
    let renewed = eventually(Duration::from_secs(60), || {
        peer_days(&rx).filter(|d| *d > 399.0)
    });
    assert!(
        renewed.is_some(),
        "the sender reconnected with its old certificate; sender:\n{}",
        tx.log_text()
    );
    assert!(tx
        .log_text()
        .contains("certificate files changed: reloaded"));
}

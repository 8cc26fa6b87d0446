//! The Azure page-blob sink against Azurite: cycles and recovery points at the store level,
//! failover downloads checked by qemu-img, and the faults of the sink layer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdrep::sink::azure::rest::RetryPolicy;
use vdrep::sink::azure::{AzureConfig, AzureDisk, AzureStore, MAX_PUT_PAGE};
use vdrep::sink::{DiskKey, RecoveryPoint, ReplicaDisk, ReplicaStore, SinkError};
use vdrep_proto::{Guid, RangeSet};
use vdrep_tests::azurite::Azurite;
use vdrep_tests::{require_qemu, run};

const SIZE: u64 = 3 * 1024 * 1024 + 1024; // not a MiB multiple: the blob pads it

fn config(az: &Azurite, container: &str) -> AzureConfig {
    let mut c = AzureConfig::new(&az.url(), container);
    c.sas = Some(format!("?{}", az.sas()));
    c.retry = RetryPolicy {
        give_up_after: Duration::from_secs(30),
        ..RetryPolicy::default()
    };
    c
}

fn point(cycle: u64, created: u64) -> RecoveryPoint {
    RecoveryPoint {
        cycle,
        created_unix: created,
        bytes: 0,
        digest: [cycle as u8; 32],
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn write_all_and_commit(d: &AzureDisk, image: &mut [u8]) {
    let end = d.state().writable_end();
    let data = pattern(1, 1024 * 1024);
    d.write(0, &data).unwrap();
    image[..data.len()].copy_from_slice(&data);
    let tail = pattern(2, 5 * 512);
    let at = end - tail.len() as u64;
    d.write(at, &tail).unwrap();
    image[at as usize..end as usize].copy_from_slice(&tail);
    d.clear(1024 * 1024, at - 1024 * 1024).unwrap(); // fresh blob: sends nothing
    d.checkpoint(&RangeSet::from_range(0, end)).unwrap();
    d.commit_initial(&point(0, 1_000)).unwrap();
}

fn compare(src_raw: &Path, replica: &Path) {
    require_qemu();
    run(std::process::Command::new("qemu-img")
        .args(["compare", "-f", "vpc", "-F", "raw"])
        .arg(replica)
        .arg(src_raw));
}

#[test]
fn cycles_become_snapshots_each_readable_and_downloadable_as_a_fixed_vhd() {
    let az = Azurite::start();
    let store = AzureStore::open(config(&az, "replicas")).unwrap();
    let key = DiskKey::new("vm1", "disk0").unwrap();
    let d = store
        .open_azure(&key, SIZE, Guid::v4_from_bytes([9; 16]))
        .unwrap();
    let mut image = vec![0u8; SIZE.div_ceil(512) as usize * 512];
    write_all_and_commit(&d, &mut image);
    let mut images = vec![image.clone()];
    for cycle in 1..=5u64 {
        assert!(d.begin_cycle(cycle).unwrap().is_empty());
        let at = cycle * 300 * 1024;
        let data = pattern(cycle as u8 + 10, 64 * 1024);
        d.write(at, &data).unwrap();
        image[at as usize..at as usize + data.len()].copy_from_slice(&data);
        d.clear(0, 4096).unwrap(); // a blob with data: Clear Pages
        image[..4096].fill(0);
        d.checkpoint(&RangeSet::from_range(at, at + data.len() as u64))
            .unwrap();
        assert_eq!(
            d.begin_cycle(cycle).unwrap().covered_len(),
            64 * 1024,
            "resent cycle skips durable ranges"
        );
        d.commit_cycle(&point(cycle, 1_000 + cycle)).unwrap();
        d.commit_cycle(&point(cycle, 1_000 + cycle)).unwrap(); // resent commit: no-op
        images.push(image.clone());
    }
    let pts = d.points().unwrap();
    assert_eq!(
        pts.iter().map(|p| p.cycle).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    assert_eq!(pts[3].digest, [3; 32]);
    for (c, img) in images.iter().enumerate() {
        let got = d.read_point(c as u64, 0, img.len()).unwrap();
        assert!(got[..] == img[..], "point {c} differs");
    }
    // Failover: a snapshot downloaded as a local fixed VHD equals the source at that point.
    let tmp = tempfile::tempdir().unwrap();
    for c in [2u64, 5] {
        let raw = tmp.path().join(format!("src{c}.raw"));
        std::fs::write(&raw, &images[c as usize][..SIZE as usize]).unwrap();
        let vhd = tmp.path().join(format!("p{c}.vhd"));
        d.download_point(c, &vhd).unwrap();
        compare(&raw, &vhd);
    }
    // Retention prunes old snapshots, never the newest.
    assert_eq!(d.prune_points(1_003).unwrap(), vec![0, 1, 2]);
    assert_eq!(d.prune_points(u64::MAX).unwrap(), vec![3, 4]);
    assert_eq!(d.points().unwrap().len(), 1);
    // A new full copy keeps the committed point readable until it commits.
    d.begin_initial().unwrap();
    assert!(d.read_committed(0, 8192).unwrap()[..] == images[5][..8192]);
    assert!(
        d.read(300 * 1024, 512).unwrap().iter().all(|&b| b == 0),
        "fresh working blob"
    );
    let mut fresh = vec![0u8; image.len()];
    write_all_and_commit(&d, &mut fresh);
    assert_eq!(
        d.points()
            .unwrap()
            .iter()
            .map(|p| p.cycle)
            .collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(store.list_disks(None).unwrap(), vec![key]);
}

#[test]
fn another_receiver_takes_over_with_the_state_kept_in_azure() {
    let az = Azurite::start();
    let key = DiskKey::new("vm1", "d").unwrap();
    let id = Guid::v4_from_bytes([3; 16]);
    {
        let s1 = AzureStore::open(config(&az, "cont-1")).unwrap();
        let d = s1.open_azure(&key, SIZE, id).unwrap();
        d.write(0, &pattern(5, 8192)).unwrap();
        d.checkpoint(&RangeSet::from_range(0, 8192)).unwrap();
    } // handle dropped: lease released
    let s2 = AzureStore::open(config(&az, "cont-1")).unwrap();
    let d = s2.open_azure(&key, SIZE, id).unwrap();
    let st = d.state();
    assert!(st.initial_in_progress);
    assert_eq!(st.progress, RangeSet::from_range(0, 8192));
    assert!(d.read(0, 8192).unwrap()[..] == pattern(5, 8192)[..]);
    // A different size or source is refused clearly.
    drop(d);
    let e = s2.open_azure(&key, SIZE * 2, id).err().unwrap();
    assert!(matches!(e, SinkError::SizeMismatch { .. }), "{e}");
}

#[test]
fn disk_sizes_that_wrap_or_exceed_a_page_blob_are_refused_before_any_blob_is_made() {
    let az = Azurite::start();
    let store = AzureStore::open(config(&az, "cont-size")).unwrap();
    let key = DiskKey::new("vm", "big").unwrap();
    // 2^64 − 2^20 + 1 wrapped to a 512-byte blob when rounded up to 1 MiB (issue 16).
    for size in [
        u64::MAX - (1 << 20) + 2,
        u64::MAX,
        (8 << 40) - (1 << 20) + 1,
    ] {
        let e = store.open_disk(&key, size, Guid::NIL).err().unwrap();
        assert!(
            matches!(e, SinkError::Unsupported { .. }) && !e.is_transient(),
            "{size}: {e}"
        );
        assert!(e.to_string().contains("8 TiB"), "{e}");
    }
    assert!(store.list_disks(Some("vm")).unwrap().is_empty());
}

#[test]
fn a_second_receiver_on_the_same_disk_is_refused_by_the_lease() {
    let az = Azurite::start();
    let key = DiskKey::new("vm", "d").unwrap();
    let a = AzureStore::open(config(&az, "cont-2")).unwrap();
    let b = AzureStore::open(config(&az, "cont-2")).unwrap();
    let _held = a.open_disk(&key, SIZE, Guid::NIL).unwrap();
    let e = b.open_disk(&key, SIZE, Guid::NIL).err().unwrap();
    assert!(matches!(e, SinkError::Locked { .. }), "{e}");
    assert!(
        e.is_transient() && e.to_string().contains("in use by another receiver"),
        "{e}"
    );
}

#[test]
fn a_lost_lease_fences_the_writer_with_a_clear_error() {
    let az = Azurite::start();
    let key = DiskKey::new("vm", "d").unwrap();
    let s = AzureStore::open(config(&az, "cont-3")).unwrap();
    let d = s.open_azure(&key, SIZE, Guid::NIL).unwrap();
    d.write(0, &pattern(1, 4096)).unwrap();
    s.container().break_lease("vm/d.vhd").unwrap();
    // Writes are buffered into Put Pages: the checkpoint that must make them durable fails,
    // and records no progress.
    d.write(4096, &pattern(2, 4096)).unwrap();
    let e = d.checkpoint(&RangeSet::from_range(0, 8192)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("412") && msg.contains("lease"), "{msg}");
    assert!(e.is_transient(), "reopening re-acquires the lease: {msg}");
    assert!(d.state().progress.is_empty());
}

#[test]
fn a_wrong_sas_is_a_non_recoverable_error_that_says_so() {
    let az = Azurite::start();
    let mut cfg = config(&az, "cont-4");
    cfg.sas = Some(az.sas().replace("sig=", "sig=AAAA"));
    let e = AzureStore::open(cfg).err().unwrap();
    let msg = e.to_string();
    assert!(!e.is_transient(), "{msg}");
    assert!(msg.contains("403") && msg.contains("SAS"), "{msg}");
}

#[test]
fn a_put_page_of_4_mib_plus_512_is_refused_before_sending() {
    let mut az = Azurite::start();
    let s = AzureStore::open(config(&az, "cont-5")).unwrap();
    let d = s
        .open_azure(&DiskKey::new("vm", "big").unwrap(), 16 << 20, Guid::NIL)
        .unwrap();
    az.stop(); // anything sent now would fail as a transport error, not a page rule
    let t = Instant::now();
    let e = d
        .put_page_raw(0, &vec![1u8; MAX_PUT_PAGE + 512])
        .unwrap_err();
    assert!(matches!(e, SinkError::OutOfRange { .. }), "{e}");
    assert!(e.to_string().contains("4 MiB"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    az.restart();
    // The data path splits large writes into legal pages.
    d.write(0, &vec![7u8; MAX_PUT_PAGE + 512]).unwrap();
    assert!(d
        .read(MAX_PUT_PAGE as u64, 512)
        .unwrap()
        .iter()
        .all(|&b| b == 7));
}

#[test]
fn azurite_killed_and_restarted_mid_operation_the_writes_complete() {
    let mut az = Azurite::start();
    let s = AzureStore::open(config(&az, "cont-6")).unwrap();
    let d: Arc<dyn ReplicaDisk> = s
        .open_disk(&DiskKey::new("vm", "d").unwrap(), SIZE, Guid::NIL)
        .unwrap();
    d.write(0, &pattern(1, 65536)).unwrap();
    az.stop();
    let d2 = d.clone();
    let writer = std::thread::spawn(move || {
        for i in 1..8u64 {
            d2.write(i * 65536, &pattern(i as u8, 65536))?;
        }
        d2.checkpoint(&RangeSet::from_range(0, 8 * 65536))
    });
    std::thread::sleep(Duration::from_secs(2));
    az.restart();
    writer.join().unwrap().unwrap();
    for i in 0..8u64 {
        assert!(d.read(i * 65536, 65536).unwrap()[..] == pattern(i.max(1) as u8, 65536)[..]);
    }
    assert_eq!(d.state().progress.covered_len(), 8 * 65536);
}

#[test]
fn shared_key_authorisation_works_like_a_sas() {
    let az = Azurite::start();
    let mut cfg = AzureConfig::new(&az.url(), "cont-7");
    cfg.shared_key = Some(vdrep_tests::azurite::KEY.to_string());
    let s = AzureStore::open(cfg).unwrap();
    let d = s
        .open_azure(&DiskKey::new("vm", "d").unwrap(), SIZE, Guid::NIL)
        .unwrap();
    d.write(512, &pattern(4, 1024)).unwrap();
    assert!(d.read(512, 1024).unwrap()[..] == pattern(4, 1024)[..]);
    let mut bad = AzureConfig::new(&az.url(), "cont-7");
    bad.shared_key = Some(vdrep_tests::azurite::KEY.replace('E', "F"));
    let e = AzureStore::open(bad).err().unwrap();
    assert!(!e.is_transient() && e.to_string().contains("403"), "{e}");
}

#[test]
fn adjacent_writes_are_joined_into_4_mib_put_pages_and_read_back_exactly() {
    let az = Azurite::start();
    let s = AzureStore::open(config(&az, "cont-8")).unwrap();
    let d = s
        .open_azure(&DiskKey::new("vm", "d").unwrap(), 20 << 20, Guid::NIL)
        .unwrap();
    let count = || {
        s.container()
            .put_pages
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = count();
    // Two interleaved streams of 512 KiB extents (8 MiB each), then a lone 4 KiB write.
    let (a, b) = (pattern(3, 8 << 20), pattern(4, 8 << 20));
    let (a_at, b_at, lone_at) = (0u64, 10u64 << 20, 19u64 << 20);
    for (i, (ca, cb)) in a.chunks(512 << 10).zip(b.chunks(512 << 10)).enumerate() {
        let off = (i as u64) * (512 << 10);
        d.write(a_at + off, ca).unwrap();
        d.write(b_at + off, cb).unwrap();
    }
    let lone = pattern(5, 4096);
    d.write(lone_at, &lone).unwrap();
    let mut done = RangeSet::from_range(a_at, a_at + (8 << 20));
    done.insert(b_at, b_at + (8 << 20));
    done.insert(lone_at, lone_at + 4096);
    d.checkpoint(&done).unwrap();
    // 33 extents, 5 Put Pages: 2 × 4 MiB per stream and the lone one.
    assert_eq!(count() - before, 5);
    assert_eq!(d.read(a_at, 8 << 20).unwrap()[..], a[..]);
    assert_eq!(d.read(b_at, 8 << 20).unwrap()[..], b[..]);
    assert_eq!(d.read(lone_at, 4096).unwrap()[..], lone[..]);
    assert!(d.read(8 << 20, 2 << 20).unwrap().iter().all(|&x| x == 0));
    assert_eq!(d.state().progress, done);
}

#[test]
fn a_rewrite_of_buffered_bytes_lands_last_and_a_clear_after_buffered_writes_wins() {
    let az = Azurite::start();
    let s = AzureStore::open(config(&az, "cont-9")).unwrap();
    let d = s
        .open_azure(&DiskKey::new("vm", "d").unwrap(), 8 << 20, Guid::NIL)
        .unwrap();
    d.write(0, &[1u8; 1 << 20]).unwrap();
    d.write(4096, &[2u8; 8192]).unwrap(); // overlaps the buffered run
    d.write(2 << 20, &[3u8; 1 << 20]).unwrap();
    d.clear(2 << 20, 4096).unwrap(); // the buffered write must not land after it
    d.checkpoint(&RangeSet::from_range(0, 3 << 20)).unwrap();
    let got = d.read(0, 3 << 20).unwrap();
    assert!(got[..4096].iter().all(|&x| x == 1));
    assert!(got[4096..12288].iter().all(|&x| x == 2));
    assert!(got[12288..1 << 20].iter().all(|&x| x == 1));
    assert!(got[2 << 20..(2 << 20) + 4096].iter().all(|&x| x == 0));
    assert!(got[(2 << 20) + 4096..].iter().all(|&x| x == 3));
}

/// A JWT as Entra ID would issue for Azure Storage (unsigned: Azurite's `--oauth basic`
/// checks audience, issuer and lifetime only).
fn storage_jwt(lifetime_s: u64) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "aud": "https://storage.azure.com",
        "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000001/",
        "iat": now - 60, "nbf": now - 60, "exp": now + lifetime_s,
        "oid": "00000000-0000-0000-0000-000000000002",
    });
    format!("{}.{}.c2lnbmF0dXJl", b64(&header), b64(&claims))
}

/// A token endpoint on 127.0.0.1 answering every request with `token`; counts requests.
fn token_endpoint(token: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer =
                format!(r#"{{"token_type":"Bearer","expires_in":3600,"access_token":"{token}"}}"#);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, hits)
}

#[test]
fn workload_identity_tokens_authorise_the_sink_against_azurite_over_https() {
    use vdrep::sink::azure::identity::Source;
    let az = Azurite::start_oauth();
    let dir = tempfile::tempdir().unwrap();
    let federated = dir.path().join("federated-token");
    std::fs::write(&federated, "kubernetes.service.account.token").unwrap();
    let (authority, hits) = token_endpoint(storage_jwt(3600));
    let mut cfg = AzureConfig::new(&az.url(), "oauth");
    cfg.ca_file = az.ca_file().map(Path::to_path_buf);
    cfg.identity = Some(vec![Source::Workload {
        token_file: federated,
        client_id: "11111111-2222-3333-4444-555555555555".into(),
        tenant_id: "00000000-0000-0000-0000-000000000001".into(),
        authority,
    }]);
    let s = AzureStore::open(cfg.clone()).unwrap();
    assert!(
        s.describe().contains("workload identity"),
        "{}",
        s.describe()
    );
    let d = s
        .open_azure(&DiskKey::new("vm", "d").unwrap(), SIZE, Guid::NIL)
        .unwrap();
    let mut image = vec![0u8; d.state().writable_end() as usize];
    write_all_and_commit(&d, &mut image);
    assert_eq!(d.read_committed(0, image.len()).unwrap()[..], image[..]);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the token is cached"
    );

    // Without the CA the endpoint's certificate is refused; with an expired token Azurite
    // refuses the request: both say what failed.
    let mut no_ca = cfg.clone();
    no_ca.ca_file = None;
    let t = Instant::now();
    let e = AzureStore::open(no_ca).err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("--azure-ca-file") && !e.is_transient(),
        "{msg}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "not retried: {msg}");
    let (stale, _) = token_endpoint(storage_jwt(0));
    let mut expired = cfg.clone();
    if let Some([Source::Workload { authority, .. }]) = expired.identity.as_deref_mut() {
        *authority = stale;
    }
    std::thread::sleep(Duration::from_millis(1100));
    let e = AzureStore::open(expired).err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("403") && msg.contains("AuthenticationFailed"),
        "{msg}"
    );
    assert!(!e.is_transient(), "{msg}");
}

//! Recovery points, test failover and unprotect on the Azure sink (Azurite): a point reader
//! takes no lease (it reads while a receiver holds the disk), every snapshot reads back as
//! its point, a pruned point is a clear `NotFound`, `remove_disk` is refused under a lease
//! and then deletes blob, snapshots and state; and `vdrep points`, `failover --test` and
//! `unprotect` work with the `--azure-*` options instead of `--store`.

use std::path::Path;

use vdrep::digest::DigestBuilder;
use vdrep::sink::azure::{AzureConfig, AzureStore};
use vdrep::sink::{DiskKey, RecoveryPoint, ReplicaStore, SinkError};
use vdrep_proto::{Guid, RangeSet};
use vdrep_tests::azurite::Azurite;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 3 * MIB + 1024;

fn store(az: &Azurite) -> AzureStore {
    let mut cfg = AzureConfig::new(&az.url(), "replicas");
    cfg.sas = Some(az.sas());
    AzureStore::open(cfg).unwrap()
}

fn point(cycle: u64, img: &[u8]) -> RecoveryPoint {
    let mut b = DigestBuilder::new(img.len() as u64);
    b.update(img);
    RecoveryPoint {
        cycle,
        created_unix: 1_800_000_000 + cycle,
        bytes: 4096,
        digest: b.finish().unwrap(),
    }
}

/// Runs vdrep with the Azure options (the SAS through the environment, as operators would).
fn vdrep_az(az: &Azurite, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    let url = az.url();
    all.extend(["--azure-url", &url, "--azure-container", "replicas"]);
    vdrep_tests::vdrep_command()
        .args(&all)
        .env("VDREP_AZURE_SAS", format!("?{}", az.sas()))
        .output()
        .unwrap()
}

#[test]
fn azure_points_read_without_the_lease_and_failover_and_unprotect_use_azure_options() {
    let az = Azurite::start();
    let st = store(&az);
    let key = DiskKey::new("vm1", "d").unwrap();
    let disk = st.open_disk(&key, SIZE, Guid([4; 16])).unwrap();
    // Point 0: data with a zero MiB in the middle; points 1 and 2 change a few sectors.
    let mut imgs = vec![(0..SIZE)
        .map(|i| (i / 512 % 253) as u8 + 1)
        .collect::<Vec<u8>>()];
    imgs[0][MIB as usize..2 * MIB as usize].fill(0);
    disk.write(0, &imgs[0][..MIB as usize]).unwrap();
    disk.write(2 * MIB, &imgs[0][2 * MIB as usize..]).unwrap();
    disk.checkpoint(&RangeSet::from_range(0, SIZE)).unwrap();
    disk.commit_initial(&point(0, &imgs[0])).unwrap();
    for c in 1..=2u64 {
        let mut img = imgs.last().unwrap().clone();
        let off = (c * 2000 * 512) as usize;
        img[off..off + 4096].fill(0xC0 + c as u8);
        disk.begin_cycle(c).unwrap();
        disk.write(off as u64, &img[off..off + 4096]).unwrap();
        disk.checkpoint(&RangeSet::from_range(off as u64, off as u64 + 4096))
            .unwrap();
        disk.commit_cycle(&point(c, &img)).unwrap();
        imgs.push(img);
    }

    // The receiver still holds the lease: readers work, removal is refused.
    let reader = st.point_reader(&key).unwrap();
    let cycles: Vec<u64> = reader.points().unwrap().iter().map(|p| p.cycle).collect();
    assert_eq!(cycles, vec![0, 1, 2]);
    for (c, img) in imgs.iter().enumerate() {
        let got = reader.read_point(c as u64, 0, SIZE as usize).unwrap();
        assert!(got.as_ref() == &img[..], "point {c} differs");
    }
    let alloc = reader
        .allocated(0)
        .unwrap()
        .expect("Azure knows its page ranges");
    assert!(
        alloc.covered_len() < SIZE,
        "the zero MiB is not allocated: {alloc:?}"
    );
    assert!(matches!(
        st.remove_disk(&key),
        Err(SinkError::Locked { .. })
    ));

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let doc: serde_json::Value =
        serde_json::from_slice(&ok(vdrep_az(&az, &["points", "--vm", "vm1", "--json"])).stdout)
            .unwrap();
    let listed: Vec<u64> = doc["disks"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![0, 1, 2]);
    for (c, sel) in [(1u64, "1"), (2, "latest")] {
        let o = ok(vdrep_az(
            &az,
            &[
                "failover",
                "--test",
                "--vm",
                "vm1",
                "--point",
                sel,
                "--out",
                s(&out),
            ],
        ));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("digest verified"), "{text}");
        let b = std::fs::read(out.join("d.vhd")).unwrap();
        assert_eq!(b.len() as u64, SIZE.div_ceil(MIB) * MIB + 512);
        assert!(
            b[..SIZE as usize] == imgs[c as usize][..],
            "failover of {sel}"
        );
    }

    // Pruning deletes point 0's snapshot: the reader (with its cached listing) says so.
    disk.prune_points(1_800_000_001).unwrap();
    let e = reader.read_point(0, 0, 512).unwrap_err();
    assert!(
        matches!(&e, SinkError::NotFound { problem, .. } if problem.contains("points 1..=2")),
        "{e}"
    );

    let refused = vdrep_az(&az, &["unprotect", "--vm", "vm1", "--yes"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("being replicated"));
    drop(disk); // releases the lease
    ok(vdrep_az(&az, &["unprotect", "--vm", "vm1", "--yes"]));
    assert!(st.list_disks(None).unwrap().is_empty());
    assert!(
        st.container().list("vm1/", true).unwrap().is_empty(),
        "blob, snapshots and state are gone"
    );
    let after = vdrep_az(&az, &["points", "--vm", "vm1"]);
    assert_eq!(after.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&after.stderr).contains("holds no disks"));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(o: std::process::Output) -> std::process::Output {
    assert!(
        o.status.success(),
        "failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

//! Test failover asked through the sidecar's API (issue 8): the job runs where the store is
//! readable, writes the VM's disks at the point into the documented folder beside the store
//! (`STORE-failover/VM/JOB-ID/NAME.vhd`) and its result says where; the output is the same
//! as `vdrep failover --test --store` makes on the store's host. A sidecar that cannot read
//! the store fails the job saying what to do, and an unknown point fails it with the points
//! that exist.

use std::path::Path;

use serde_json::{json, Value};
use vdrep_tests::roles::Role;
use vdrep_tests::sidecar::{Stack, TOKEN};
use vdrep_tests::vdrep_command;

fn vdrep(args: &[&str], dir: &Path) -> std::process::Output {
    let out = vdrep_command()
        .args(args)
        .env("VDREP_TOKEN_FILE", dir.join("token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vdrep {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The guest's bytes of a fixed VHD: everything before the 512-byte footer (whose id and
/// timestamp differ between two outputs of the same point).
fn guest_bytes(p: &Path) -> Vec<u8> {
    let mut b = std::fs::read(p).unwrap();
    b.truncate(b.len() - 512);
    b
}

#[test]
fn a_test_failover_through_the_api_writes_the_point_beside_the_store_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let st = Stack::start(d);
    let api = st.api();

    // Through the CLI, which is a client of the API when no store is given.
    let out = vdrep(
        &[
            "failover",
            "--test",
            "--vm",
            "web",
            "--point",
            "1",
            "--sidecar",
            &api,
            "--json",
        ],
        d,
    );
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["kind"], "test_failover");
    let id = job["id"].as_str().unwrap().to_string();
    let j = st.wait_job(&id, 60);
    assert_eq!(j["state"], "succeeded", "{j:#}");
    assert!(j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "succeeded"));
    let folder = d.join("store-failover/web").join(&id);
    assert_eq!(j["result"]["folder"], folder.to_str().unwrap());
    assert_eq!(j["result"]["point"], 1);
    let disks = j["result"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1);
    let vhd = folder.join("os.vhd");
    assert_eq!(disks[0]["path"], vhd.to_str().unwrap());
    assert_eq!(disks[0]["verified"], j["result"]["verified"]);

    // The same bytes as a test failover run directly against the store.
    let direct = d.join("direct");
    let store = d.join("store");
    vdrep(
        &[
            "failover",
            "--test",
            "--store",
            store.to_str().unwrap(),
            "--vm",
            "web",
            "--point",
            "1",
            "--out",
            direct.to_str().unwrap(),
            "--json",
        ],
        d,
    );
    assert!(
        guest_bytes(&vhd) == guest_bytes(&direct.join("os.vhd")),
        "the API's failover differs from vdrep failover --test --store"
    );
    // The store itself holds only its VMs: the output went beside it.
    let names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("failover")), "{names:?}");

    // A point that does not exist: the job fails and names the points that do.
    let r = st.call(
        "POST",
        "/v1/vms/web/test-failover",
        Some(TOKEN),
        Some(json!({"point": 999_999})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let j = st.wait_job(r.json()["id"].as_str().unwrap(), 30);
    assert_eq!(j["state"], "failed", "{j:#}");
    let e = j["errors"][0].as_str().unwrap();
    assert!(e.contains("recovery point 999999 does not exist"), "{e}");

    // A sidecar that cannot read the store says so instead of pretending.
    let blind = Role::start(
        &Stack::sidecar_args(d, &d.join("run/sender.sock"), &d.join("blind-state")),
        &d.join("blind.log"),
        &["sidecar on "],
    );
    let addr = blind.addr("sidecar on ");
    let out = vdrep(
        &[
            "failover",
            "--test",
            "--vm",
            "web",
            "--sidecar",
            &addr,
            "--json",
        ],
        d,
    );
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let j = vdrep_tests::roles::eventually(std::time::Duration::from_secs(20), || {
        let j = vdrep_tests::http::get(&addr, &format!("/v1/jobs/{id}")).json();
        (j["state"] == "failed").then_some(j)
    })
    .expect("the job fails");
    assert!(
        j["errors"][0]
            .as_str()
            .unwrap()
            .contains("cannot read the replica store"),
        "{j:#}"
    );
}

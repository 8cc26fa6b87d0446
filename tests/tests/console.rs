//! The operator's console (issue 19): the page the sidecar serves at `/`, driven in Debian's
//! chromium by playwright-core (`tests/console/console.cjs`) against a real receiver, sender
//! and sidecar replicating a VHDX; and, over plain HTTP, the security headers, the read
//! token and the API additions the page uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vdrep_tests::http::{get, request};
use vdrep_tests::images::{make_image, scattered_writes, seeded_raw, Kind};
use vdrep_tests::procs::certs;
use vdrep_tests::roles::{eventually, Role};
use vdrep_tests::sidecar::{s, write_token, Stack, TOKEN};
use vdrep_tests::{require_qemu, require_tool, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fails with the install command when the browser or its driver is missing.
fn require_browser() {
    require_tool("node", "apt-get install nodejs");
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "Debian chromium is not installed: run `bash ops/setup.sh` (it installs the pinned \
         `chromium` package; never `npx playwright install`)"
    );
    assert!(
        repo()
            .join("ops/node_modules/playwright-core/package.json")
            .is_file(),
        "playwright-core is not installed: run `bash ops/setup.sh` (or `cd ops && npm ci \
         --ignore-scripts`)"
    );
}

/// Runs the browser script in `mode`; answers what it wrote to its output file.
fn browse(mode: &str, api: &str, d: &Path) -> Value {
    let shots = repo().join("target/console");
    std::fs::create_dir_all(&shots).unwrap();
    let out_file = d.join(format!("browser-{mode}.json"));
    let out = Command::new("node")
        .arg(repo().join("tests/console/console.cjs"))
        .arg(mode)
        .env("CONSOLE_URL", format!("http://{api}"))
        .env("CONSOLE_TOKEN", TOKEN)
        .env("CONSOLE_SHOTS", &shots)
        .env("CONSOLE_OUT", &out_file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser run ({mode}) failed:\n{text}"
    );
    serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap()
}

#[test]
fn the_console_in_chromium_shows_health_resyncs_and_fails_over_at_a_chosen_point() {
    require_browser();
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    const SIZE: u64 = 32 << 20;
    let web = make_image(d, "web", Kind::Vhdx, SIZE, &scattered_writes(19, SIZE, 24));
    // A second VM of the same sender that the receiver does not allow.
    let db = seeded_raw(&d.join("db.raw"), 4 << 20, 5, 1 << 20, 3);
    std::fs::write(
        d.join("sender.toml"),
        format!(
            "[[vm]]\nname = \"db\"\ndisks = [{:?}]\n",
            db.to_str().unwrap()
        ),
    )
    .unwrap();
    write_token(d);
    let _rx = Role::receiver(d, &tls, "hv01=web", false);
    let mut args = Stack::sender_args(d, &tls, &web, &_rx);
    args.extend(s(&[
        "--config",
        d.join("sender.toml").to_str().unwrap(),
        "--metrics",
        "127.0.0.1:0",
    ]));
    let mut tx = Role::start(&args, &d.join("sender.log"), &["metrics on "]);
    let sc = Stack::sidecar(d);
    let api = sc.addr("sidecar on ");
    let ready = eventually(Duration::from_secs(90), || {
        let r = get(&api, "/v1/vms/web");
        (r.status == 200 && r.json()["disks"][0]["last_cycle"].as_u64() >= Some(2)).then_some(())
    });
    assert!(ready.is_some(), "web never protected:\n{}", tx.log_text());

    // The disk's format; no copy runs, so no rate and no ETA.
    let disk = &get(&api, "/v1/vms/web").json()["disks"][0];
    assert_eq!(disk["format"], "vhdx-dynamic", "{disk:#}");
    assert_eq!(disk["rate_bytes_per_second"], Value::Null, "{disk:#}");
    assert_eq!(disk["eta_unix"], Value::Null, "{disk:#}");

    // The points the page lists are the document `vdrep points --json` prints.
    let cli = Command::new(vdrep_tests::vdrep_bin())
        .args(["points", "--store", d.join("store").to_str().unwrap()])
        .args(["--vm", "web", "--json"])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let served = get(&api, "/v1/vms/web/points");
    assert_eq!(served.status, 200, "{}", served.body);
    let mut served = served.json();
    // Cycles go on every second: the CLI's list (read first) is a prefix of the API's.
    let n = cli["disks"][0]["points"].as_array().unwrap().len();
    served["disks"][0]["points"]
        .as_array_mut()
        .unwrap()
        .truncate(n);
    // The VM's own points (top-level `points`, issue 17) grow the same way.
    let m = cli["points"].as_array().expect("top-level points").len();
    assert!(m > 0, "no VM point listed: {cli:#}");
    served["points"].as_array_mut().unwrap().truncate(m);
    assert_eq!(served, cli);
    assert_eq!(get(&api, "/v1/vms/nobody/points").status, 404);

    let out = browse("main", &api, d);

    // The refused click made no job: the resyncs are the two made with the token.
    let jobs = get(&api, "/v1/jobs?vm=web").json();
    let resyncs: Vec<&Value> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "resync")
        .collect();
    assert_eq!(resyncs.len(), 2, "{jobs:#}");
    let now_job = resyncs
        .iter()
        .find(|j| j["id"] == out["resync_job"])
        .unwrap();
    assert_eq!(now_job["state"], "succeeded");
    assert_eq!(now_job["not_before_unix"], Value::Null);
    // The other waits for the VM's off-hours window.
    let window_job = resyncs
        .iter()
        .find(|j| j["id"] == out["window_job"])
        .unwrap();
    assert!(window_job["not_before_unix"].is_u64(), "{window_job:#}");

    // The test failover's disks, where the page says they are, equal the source at that
    // point (the source was not written after the initial copy, so the point's content
    // is the source's).
    let fo = &out["failover"];
    let disks = fo["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{fo:#}");
    let job = get(&api, &format!("/v1/jobs/{}", fo["job"].as_str().unwrap())).json();
    assert_eq!(job["result"]["point"], fo["point"], "{job:#}");
    for disk in disks {
        let path = disk["path"].as_str().unwrap();
        assert_eq!(job["result"]["disks"][0]["path"], path);
        run(Command::new("qemu-img").args([
            "compare",
            "-f",
            "vhdx",
            "-F",
            "vpc",
            web.to_str().unwrap(),
            path,
        ]));
    }

    // The sender gone: the page says so plainly.
    tx.kill();
    let out = browse("unreachable", &api, d);
    assert!(
        out["banner"]
            .as_str()
            .unwrap()
            .contains("cannot reach the sender"),
        "{out:#}"
    );
}

/// A sidecar with no sender behind it and no store: enough for the HTTP rules.
fn lone_sidecar(d: &Path, extra: &[&str]) -> Role {
    write_token(d);
    let mut args = Stack::sidecar_args(d, &d.join("no-sender.sock"), &d.join("state"));
    args.extend(s(extra));
    Role::start(&args, &d.join("sidecar.log"), &["sidecar on "])
}

#[test]
fn every_answer_carries_the_security_headers_and_sets_no_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let sc = lone_sidecar(dir.path(), &[]);
    let api = sc.addr("sidecar on ");
    let page = get(&api, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("<script src=\"/assets/console.js\""));
    let js = get(&api, "/assets/console.js");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(get(&api, "/assets/console.css").status, 200);
    let missing = get(&api, "/assets/nope.js");
    assert_eq!(missing.status, 404);
    for (path, r) in [
        ("/", page),
        ("/assets/console.js", js),
        ("/assets/nope.js", missing),
        ("/v1/vms", get(&api, "/v1/vms")),
        ("/v1/nothing", get(&api, "/v1/nothing")),
        (
            "POST /v1/vms/web/resync",
            request(&api, "POST", "/v1/vms/web/resync", None, Some("{}")).unwrap(),
        ),
    ] {
        let csp = r.header("content-security-policy").unwrap_or("");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
        assert!(csp.contains("default-src 'none'"), "{path}: {csp:?}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{path}: {csp:?}"
        );
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        // The token is never put in a cookie: the page keeps it in memory.
        assert_eq!(r.header("set-cookie"), None, "{path}");
    }
}

#[test]
fn a_read_token_guards_the_api_reads_but_not_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Mode 0600, like the write token: the sidecar refuses a token file others can read.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(d.join("read-token"))
            .unwrap();
        writeln!(f, "reader-token").unwrap();
    }
    let sc = lone_sidecar(
        d,
        &["--read-token-file", d.join("read-token").to_str().unwrap()],
    );
    let api = sc.addr("sidecar on ");
    for path in ["/v1/vms", "/v1/jobs", "/v1/bandwidth", "/v1/vms/web/policy"] {
        let r = get(&api, path);
        assert_eq!(r.status, 401, "{path} without a token: {}", r.body);
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("read-token-file"));
        let r = request(&api, "GET", path, Some("wrong"), None).unwrap();
        assert_eq!(r.status, 401, "{path} with a wrong token");
        for t in ["reader-token", TOKEN] {
            let r = request(&api, "GET", path, Some(t), None).unwrap();
            assert_eq!(r.status, 200, "{path} with {t}: {}", r.body);
        }
    }
    // The page, its assets and the description stay open.
    for path in [
        "/",
        "/assets/console.js",
        "/assets/console.css",
        "/openapi.json",
    ] {
        assert_eq!(get(&api, path).status, 200, "{path}");
    }
    // The read token reads only: a change needs the write token.
    let r = request(
        &api,
        "POST",
        "/v1/vms/web/resync",
        Some("reader-token"),
        Some("{}"),
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("changes state"));

    // Without --read-token-file reads are open (as before).
    let open = tempfile::tempdir().unwrap();
    let sc2 = lone_sidecar(open.path(), &[]);
    assert_eq!(get(&sc2.addr("sidecar on "), "/v1/vms").status, 200);
}

#[test]
fn jobs_filter_by_vm_and_state_and_points_need_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let sc = lone_sidecar(dir.path(), &[]);
    let api = sc.addr("sidecar on ");
    // The sender is unreachable, so requests queue as jobs (checked when it answers).
    for vm in ["app", "app", "db"] {
        let r = request(
            &api,
            "POST",
            &format!("/v1/vms/{vm}/resync"),
            Some(TOKEN),
            Some(&json!({"now": true}).to_string()),
        )
        .unwrap();
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let ids = |q: &str| -> Vec<String> {
        let r = get(&api, &format!("/v1/jobs{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        r.json()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                format!(
                    "{}/{}",
                    j["vm"].as_str().unwrap(),
                    j["state"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(ids(""), ["db/queued", "app/queued", "app/queued"]);
    assert_eq!(ids("?vm=app"), ["app/queued", "app/queued"]);
    assert_eq!(ids("?vm=db&state=queued"), ["db/queued"]);
    assert!(ids("?state=running").is_empty());
    assert!(ids("?vm=nobody").is_empty());
    for bad in ["?state=bogus", "?vm=a%2Fb", "?vm="] {
        let r = get(&api, &format!("/v1/jobs{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.json()["error"].is_string());
    }
    // Points come from the receiver's store; this sidecar was given none.
    let r = get(&api, "/v1/vms/app/points");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("cannot read the replica store"));
}

#[test]
fn an_initial_copy_shows_its_rate_and_eta_in_the_api_and_vdrep_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = certs(&d.join("tls"), &["hv01"]);
    // 96 MiB of incompressible bytes at 64 Mbit/s (8 MB/s) on one stream: a copy of about
    // 12 s whose progress is acknowledged every 16 MiB batch.
    const SIZE: u64 = 96 << 20;
    let disk = seeded_raw(&d.join("os.raw"), SIZE, 11, 1 << 20, 0);
    write_token(d);
    let rx = Role::receiver(d, &tls, "hv01=web", false);
    // The sidecar pushes its schedule to the sender: the same 64 Mbit/s at all hours.
    let sc = Stack::sidecar(d);
    let api = sc.addr("sidecar on ");
    let all_day = json!({"no_throttle": false, "work_days": ["mon","tue","wed","thu","fri","sat","sun"],
        "work_hour_start": 0, "work_hour_end": 24, "work_hour_bytes_per_second": 8_000_000,
        "non_work_hour_bytes_per_second": 8_000_000});
    let r = request(
        &api,
        "PUT",
        "/v1/bandwidth",
        Some(TOKEN),
        Some(&all_day.to_string()),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let mut args = Stack::sender_args(d, &tls, &disk, &rx);
    args.extend(s(&["--bandwidth", "64Mbit", "--threads", "1"]));
    let tx = Role::start(&args, &d.join("sender.log"), &[]);
    let mut seen = Vec::new();
    let copying = eventually(Duration::from_secs(30), || {
        let v = get(&api, "/v1/vms/web");
        let d = (v.status == 200).then(|| v.json()["disks"][0].clone())?;
        seen.push(d.clone());
        (d["phase"] == "initial"
            && d["rate_bytes_per_second"].as_u64() > Some(0)
            && d["copied_bytes"].as_u64() > Some(0))
        .then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "the copy never showed a rate; seen: {:#?}\nsender log:\n{}",
            seen.last(),
            tx.log_text()
        )
    });
    let rate = copying["rate_bytes_per_second"].as_u64().unwrap();
    assert!(
        // An average over up to 10 s of acknowledged batches.
        (3_000_000..=16_000_000).contains(&rate),
        "rate {rate} B/s for an 8 MB/s limit: {copying:#}"
    );
    let now = jiff::Timestamp::now().as_second() as u64;
    let eta = copying["eta_unix"].as_u64().expect("an ETA while copying");
    let left = SIZE - copying["copied_bytes"].as_u64().unwrap();
    // The ETA is what is left at the measured rate (a few seconds of slack for the sample).
    let want = now + left / rate;
    assert!(
        eta + 3 >= want && eta <= want + 3,
        "eta {eta}, expected about {want}: {copying:#}"
    );
    let out = Command::new(vdrep_tests::vdrep_bin())
        .args(["status", "--sidecar", &api])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().next().unwrap().ends_with("FORMAT  PHASE"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains(" raw ") && row.contains(" initial ") && row.contains(" MB/s ETA "),
        "{table}"
    );
}

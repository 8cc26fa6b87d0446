//! `vdrep certs init` and `vdrep certs add-sender`, checked with OpenSSL: the files exist with
//! the right modes, names and usages, chain to the CA, and an existing CA is never replaced
//! by accident.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use vdrep_tests::{require_tool, run, vdrep, vdrep_ok};

fn require_openssl() {
    require_tool("openssl", "apt-get install openssl");
}

/// `openssl x509 -noout -text` of a PEM file.
fn x509_text(file: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(file));
    String::from_utf8(out.stdout).unwrap()
}

/// The line after `header` in `openssl x509 -text` output (e.g. the SAN list).
fn field_after(text: &str, header: &str) -> String {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with(header))
        .unwrap_or_else(|| panic!("no {header} in:\n{text}"));
    lines.next().unwrap().trim().to_string()
}

/// `openssl verify -CAfile ca.pem -purpose P FILE` succeeds.
fn verifies(dir: &Path, purpose: &str, file: &str) -> bool {
    Command::new("openssl")
        .args(["verify", "-purpose", purpose, "-CAfile"])
        .arg(dir.join("ca.pem"))
        .arg(dir.join(file))
        .output()
        .unwrap()
        .status
        .success()
}

fn mode(file: &Path) -> u32 {
    fs::metadata(file).unwrap().permissions().mode() & 0o777
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn init_writes_a_ca_a_receiver_and_each_sender_with_the_specified_names() {
    require_openssl();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("etc/vdrep/certs");
    let out = vdrep_ok(&[
        "certs",
        "init",
        s(&dir),
        "--sender",
        "hv01",
        "--sender",
        "hv02.lab",
        "--host",
        "repl.example",
        "--host",
        "10.9.8.7",
        "--days",
        "40",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("ca.key"), "{stdout}");

    for (f, m) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("receiver.pem", 0o644),
        ("receiver.key", 0o600),
        ("hv01.pem", 0o644),
        ("hv01.key", 0o600),
        ("hv02.lab.pem", 0o644),
        ("hv02.lab.key", 0o600),
    ] {
        assert_eq!(mode(&dir.join(f)), m, "{f}");
    }

    let ca = x509_text(&dir.join("ca.pem"));
    assert!(ca.contains("CA:TRUE"), "{ca}");

    let r = x509_text(&dir.join("receiver.pem"));
    assert_eq!(
        field_after(&r, "X509v3 Subject Alternative Name"),
        "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:repl.example, IP Address:10.9.8.7"
    );
    assert_eq!(
        field_after(&r, "X509v3 Extended Key Usage"),
        "TLS Web Server Authentication"
    );
    assert!(verifies(&dir, "sslserver", "receiver.pem"));

    for name in ["hv01", "hv02.lab"] {
        let c = x509_text(&dir.join(format!("{name}.pem")));
        assert!(c.contains(&format!("Subject: CN = {name}\n")), "{c}");
        assert_eq!(
            field_after(&c, "X509v3 Subject Alternative Name"),
            format!("DNS:{name}")
        );
        assert_eq!(
            field_after(&c, "X509v3 Extended Key Usage"),
            "TLS Web Client Authentication"
        );
        assert!(verifies(&dir, "sslclient", &format!("{name}.pem")));
        // A sender certificate cannot impersonate the receiver.
        assert!(!verifies(&dir, "sslserver", &format!("{name}.pem")));
    }

    // --days 40: valid for 40 days from now, give or take the test's run time.
    let out = run(Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(39 * 86_400).to_string(),
            "-in",
        ])
        .arg(dir.join("hv01.pem")));
    assert!(out.status.success());
    let expires_by_41_days = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(41 * 86_400).to_string(),
            "-in",
        ])
        .arg(dir.join("hv01.pem"))
        .output()
        .unwrap();
    assert!(!expires_by_41_days.status.success());
}

#[test]
fn add_sender_issues_with_the_existing_ca_without_replacing_it() {
    require_openssl();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    vdrep_ok(&["certs", "init", s(dir), "--sender", "hv01"]);
    let ca_before = fs::read(dir.join("ca.pem")).unwrap();
    let key_before = fs::read(dir.join("ca.key")).unwrap();

    vdrep_ok(&["certs", "add-sender", s(dir), "hv-new"]);
    assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), key_before);
    assert_eq!(mode(&dir.join("hv-new.key")), 0o600);
    let c = x509_text(&dir.join("hv-new.pem"));
    assert!(c.contains("Subject: CN = hv-new\n"), "{c}");
    assert!(verifies(dir, "sslclient", "hv-new.pem"));
    assert!(
        verifies(dir, "sslclient", "hv01.pem"),
        "older senders stay valid"
    );

    // An existing sender is renewed only on request.
    let out = vdrep(&["certs", "add-sender", s(dir), "hv01"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hv01.pem: already exists"));
    vdrep_ok(&["certs", "add-sender", s(dir), "hv01", "--force"]);
    assert!(verifies(dir, "sslclient", "hv01.pem"));
}

#[test]
fn init_twice_refuses_to_replace_the_ca_unless_forced() {
    require_openssl();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    vdrep_ok(&["certs", "init", s(dir), "--sender", "hv01"]);
    let ca_before = fs::read(dir.join("ca.pem")).unwrap();

    let out = vdrep(&["certs", "init", s(dir), "--sender", "hv01"]);
    assert_eq!(out.status.code(), Some(1), "non-recoverable error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ca.pem: already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca_before);

    vdrep_ok(&["certs", "init", s(dir), "--sender", "hv01", "--force"]);
    assert_ne!(fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    assert!(verifies(dir, "sslclient", "hv01.pem"));
}

#[test]
fn bad_sender_names_and_missing_senders_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("c");
    for (args, code, msg) in [
        (vec!["--sender", "../etc"], 1, "only letters, digits"),
        (vec!["--sender", "receiver"], 1, "reserved"),
        (vec![], 2, "--sender"),
    ] {
        let mut all = vec!["certs", "init", s(&dir)];
        all.extend(args);
        let out = vdrep(&all);
        assert_eq!(out.status.code(), Some(code), "{all:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(msg),
            "{all:?}"
        );
        assert!(!dir.exists(), "nothing written for {all:?}");
    }
}

#[test]
fn add_sender_works_with_an_operators_own_openssl_ca() {
    require_openssl();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(dir.join("ca.key")));
    run(Command::new("openssl")
        .args(["req", "-x509", "-new", "-key"])
        .arg(dir.join("ca.key"))
        .args([
            "-subj",
            "/O=Contoso/CN=Contoso Replication CA",
            "-days",
            "365",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
        ])
        .arg(dir.join("ca.pem")));
    vdrep_ok(&["certs", "add-sender", s(dir), "hv07"]);
    let c = x509_text(&dir.join("hv07.pem"));
    assert!(
        c.contains("Issuer: O = Contoso, CN = Contoso Replication CA"),
        "{c}"
    );
    assert!(verifies(dir, "sslclient", "hv07.pem"));
}

fn owner_of(file: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(file).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn init_with_owner_gives_the_role_its_files_but_keeps_ca_key_roots() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("tls");
    // `nobody:nogroup` (65534) stands for the packaged `vdrep` user.
    vdrep_ok(&[
        "certs",
        "init",
        s(&dir),
        "--sender",
        "hv01",
        "--host",
        "receiver.example",
        "--owner",
        "nobody:nogroup",
    ]);
    for f in [
        "receiver.key",
        "receiver.pem",
        "hv01.key",
        "hv01.pem",
        "ca.pem",
    ] {
        assert_eq!(owner_of(&dir.join(f)), (65534, 65534), "{f}");
    }
    assert_eq!(mode(&dir.join("hv01.key")), 0o600);
    assert_eq!(owner_of(&dir.join("ca.key")), (0, 0), "ca.key stays root's");
    assert_eq!(owner_of(&dir).1, 65534);
    assert_eq!(mode(&dir), 0o750);
    // add-sender hands its files over too.
    vdrep_ok(&["certs", "add-sender", s(&dir), "hv02", "--owner", "nobody"]);
    assert_eq!(owner_of(&dir.join("hv02.key")), (65534, 65534));

    // An unknown user is refused before anything is written.
    let other = t.path().join("other");
    let out = vdrep(&[
        "certs",
        "init",
        s(&other),
        "--sender",
        "hv01",
        "--owner",
        "no-such-user-vdrep",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("owner \"no-such-user-vdrep\": no user named"),
        "{err}"
    );
    assert!(!other.exists(), "files written despite the bad owner");
}

/// Each role started with a secret file open to others exits 1 naming the file, before it
/// listens or connects.
#[test]
fn every_role_refuses_a_private_key_or_token_that_others_can_access() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = d.join("tls");
    vdrep_ok(&["certs", "init", s(&tls), "--sender", "hv01"]);
    let refuses = |args: &[&str], file: &Path, mode_text: &str| {
        let out = vdrep(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{}: mode {mode_text} lets other users",
                file.display()
            )),
            "{args:?}: {err}"
        );
    };
    let set = |f: &Path, m: u32| fs::set_permissions(f, fs::Permissions::from_mode(m)).unwrap();

    let rx_key = tls.join("receiver.key");
    set(&rx_key, 0o644);
    let store = d.join("store");
    refuses(
        &[
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--store",
            s(&store),
            "--tls",
            s(&tls),
            "--allow",
            "hv01=vm1",
        ],
        &rx_key,
        "0644",
    );

    let tx_key = tls.join("hv01.key");
    set(&tx_key, 0o604);
    let disk = d.join("os.raw");
    fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let state = d.join("state");
    refuses(
        &[
            "send",
            "--to",
            "127.0.0.1:9",
            "--tls",
            s(&tls),
            "--identity",
            "hv01",
            "--vm",
            "vm1",
            s(&disk),
            "--state",
            s(&state),
            "--no-progress",
        ],
        &tx_key,
        "0604",
    );

    let token = d.join("token");
    fs::write(&token, "t\n").unwrap();
    // Group access is how the package shares it with `vdrep` (0640); others get nothing.
    set(&token, 0o641);
    refuses(
        &[
            "sidecar",
            "--listen",
            "127.0.0.1:0",
            "--sender-control",
            s(&d.join("s.sock")),
            "--token-file",
            s(&token),
            "--state",
            s(&d.join("sc")),
        ],
        &token,
        "0641",
    );
}

/// The sender refusing the receiver's certificate for its name says so, and how to fix it
/// (not "the receiver refused ... check --allow").
#[test]
fn a_receiver_certificate_without_the_name_in_to_is_refused_by_the_sender_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tls = vdrep_tests::procs::certs(&d.join("tls"), &["hv01"]);
    let rx = vdrep_tests::roles::Role::receiver(d, &tls, "hv01=vm1", false);
    let addr = rx.addr("listening on ");
    let disk = d.join("os.raw");
    fs::write(&disk, vec![1u8; 1 << 20]).unwrap();
    let out = vdrep(&[
        "send",
        "--to",
        &addr,
        "--server-name",
        "receiver.example",
        "--tls",
        s(&tls),
        "--identity",
        "hv01",
        "--vm",
        "vm1",
        s(&disk),
        "--no-progress",
        "--state",
        s(&d.join("state")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("this sender refused the receiver's certificate")
            && last.contains("--host NAME")
            && last.contains("--server-name"),
        "{last}"
    );
    assert!(!last.contains("check --allow"), "{last}");
}

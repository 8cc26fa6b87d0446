//! Specifications of `certs::init` and `certs::add_sender`, checked by parsing what they wrote.

use crate::error::Classify;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use x509_parser::extensions::GeneralName;
use x509_parser::parse_x509_certificate;

use super::*;
use crate::tls::pem;

fn der_of(file: &Path) -> Vec<u8> {
    let certs = pem::load_certs(file).unwrap();
    certs[0].to_vec()
}

struct Parsed {
    cn: String,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    is_ca: bool,
    client_auth: bool,
    server_auth: bool,
    not_after: i64,
    issuer: String,
}

fn parse(file: &Path) -> Parsed {
    let der = der_of(file);
    let (_, c) = parse_x509_certificate(&der).unwrap();
    let cn = c
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let mut dns = vec![];
    let mut ips = vec![];
    if let Some(san) = c.subject_alternative_name().unwrap() {
        for g in &san.value.general_names {
            match g {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => ips.push(match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()),
                }),
                _ => {}
            }
        }
    }
    let eku = c.extended_key_usage().unwrap().map(|e| e.value.clone());
    Parsed {
        cn,
        dns,
        ips,
        is_ca: c.is_ca(),
        client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
        server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
        not_after: c.validity().not_after.timestamp(),
        issuer: c.issuer().to_string(),
    }
}

fn signed_by_ca(dir: &Path, file: &Path) -> bool {
    let ca = der_of(&files::ca_cert(dir));
    let leaf = der_of(file);
    let (_, ca) = parse_x509_certificate(&ca).unwrap();
    let (_, leaf) = parse_x509_certificate(&leaf).unwrap();
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

fn mode(file: &Path) -> u32 {
    fs::metadata(file).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_ca_receiver_and_senders_with_private_keys_0600() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("new/certs");
    let written = init(&dir, &["hv01".into(), "hv02".into()], &[], 30, false).unwrap();
    let names: Vec<_> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "ca.pem",
            "ca.key",
            "receiver.pem",
            "receiver.key",
            "hv01.pem",
            "hv01.key",
            "hv02.pem",
            "hv02.key"
        ]
    );
    for n in &names {
        let want = if n.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(&dir.join(n)), want, "{n}");
    }
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn init_certificates_have_the_specified_names_and_usages() {
    let d = tempfile::tempdir().unwrap();
    let hosts = vec!["repl.contoso.com".to_string(), "10.1.2.3".to_string()];
    init(d.path(), &["hv01".into()], &hosts, 30, false).unwrap();

    let ca = parse(&files::ca_cert(d.path()));
    assert!(ca.is_ca);
    assert!(ca.cn.starts_with("vdrep CA "), "{}", ca.cn);

    let r = parse(&files::receiver_cert(d.path()));
    assert!(!r.is_ca && r.server_auth && !r.client_auth);
    assert_eq!(r.dns, ["localhost", "repl.contoso.com"]);
    assert_eq!(
        r.ips,
        [
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap(),
            "10.1.2.3".parse().unwrap()
        ]
    );
    assert!(signed_by_ca(d.path(), &files::receiver_cert(d.path())));

    let s = parse(&files::sender_cert(d.path(), "hv01"));
    assert_eq!(s.cn, "hv01");
    assert_eq!(s.dns, ["hv01"]);
    assert!(s.ips.is_empty());
    assert!(!s.is_ca && s.client_auth && !s.server_auth);
    assert_eq!(s.issuer, format!("CN={}", ca.cn));
    assert!(signed_by_ca(
        d.path(),
        &files::sender_cert(d.path(), "hv01")
    ));

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let thirty_days = 30 * 86_400;
    assert!((s.not_after - now - thirty_days).abs() < 120);
    assert!(
        ca.not_after - now > 3000 * 86_400,
        "the CA outlives its leaves"
    );
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let d = tempfile::tempdir().unwrap();
    init(d.path(), &["hv01".into()], &[], 30, false).unwrap();
    let before = fs::read(files::ca_cert(d.path())).unwrap();
    let e = init(d.path(), &["hv01".into()], &[], 30, false).unwrap_err();
    assert!(matches!(e, TlsError::Exists { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("ca.pem: already exists") && msg.contains("--force"),
        "{msg}"
    );
    assert!(!e.is_transient());
    assert_eq!(fs::read(files::ca_cert(d.path())).unwrap(), before);

    init(d.path(), &["hv01".into()], &[], 30, true).unwrap();
    assert_ne!(fs::read(files::ca_cert(d.path())).unwrap(), before);
}

#[test]
fn init_checks_every_name_before_writing_anything() {
    let d = tempfile::tempdir().unwrap();
    for (senders, hosts, msg) in [
        (vec!["ok", "../evil"], vec![], "only letters"),
        (vec!["ok", "receiver"], vec![], "reserved"),
        (vec!["hv01", "HV01"], vec![], "given twice"),
        (
            vec!["ok"],
            vec!["bad host!"],
            "neither an IP address nor a valid DNS name",
        ),
    ] {
        let senders: Vec<String> = senders.into_iter().map(String::from).collect();
        let hosts: Vec<String> = hosts.into_iter().map(String::from).collect();
        let e = init(d.path(), &senders, &hosts, 30, false).unwrap_err();
        assert!(e.to_string().contains(msg), "{e}");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}

#[test]
fn add_sender_signs_with_the_existing_ca() {
    let d = tempfile::tempdir().unwrap();
    init(d.path(), &["hv01".into()], &[], 30, false).unwrap();
    let ca_before = fs::read(files::ca_cert(d.path())).unwrap();
    let written = add_sender(d.path(), "hv-new.lab", 10, false).unwrap();
    assert_eq!(
        written,
        [
            files::sender_cert(d.path(), "hv-new.lab"),
            files::sender_key(d.path(), "hv-new.lab")
        ]
    );
    assert_eq!(fs::read(files::ca_cert(d.path())).unwrap(), ca_before);
    let s = parse(&files::sender_cert(d.path(), "hv-new.lab"));
    assert_eq!((s.cn.as_str(), s.client_auth), ("hv-new.lab", true));
    assert!(signed_by_ca(
        d.path(),
        &files::sender_cert(d.path(), "hv-new.lab")
    ));
    assert_eq!(mode(&files::sender_key(d.path(), "hv-new.lab")), 0o600);
}

#[test]
fn add_sender_refuses_an_existing_sender_unless_forced() {
    let d = tempfile::tempdir().unwrap();
    init(d.path(), &["hv01".into()], &[], 30, false).unwrap();
    let e = add_sender(d.path(), "hv01", 30, false).unwrap_err();
    assert!(e.to_string().contains("hv01.pem: already exists"), "{e}");
    let before = fs::read(files::sender_key(d.path(), "hv01")).unwrap();
    add_sender(d.path(), "hv01", 30, true).unwrap();
    assert_ne!(
        fs::read(files::sender_key(d.path(), "hv01")).unwrap(),
        before
    );
}

#[test]
fn add_sender_without_a_ca_names_the_missing_file() {
    let d = tempfile::tempdir().unwrap();
    let e = add_sender(d.path(), "hv01", 30, false).unwrap_err();
    assert!(e.to_string().contains("ca.pem: unreadable"), "{e}");
    assert!(!e.is_transient());
}

#[test]
fn add_sender_refuses_a_ca_key_that_does_not_match_ca_pem() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    init(a.path(), &[], &[], 30, false).unwrap();
    init(b.path(), &[], &[], 30, false).unwrap();
    fs::copy(files::ca_key(b.path()), files::ca_key(a.path())).unwrap();
    let e = add_sender(a.path(), "hv01", 30, false).unwrap_err();
    assert!(
        e.to_string()
            .contains("ca.key: does not match any certificate in ca.pem"),
        "{e}"
    );
}

#[test]
fn add_sender_refuses_a_leaf_certificate_as_ca() {
    let d = tempfile::tempdir().unwrap();
    init(d.path(), &["hv01".into()], &[], 30, false).unwrap();
    fs::copy(
        files::sender_cert(d.path(), "hv01"),
        files::ca_cert(d.path()),
    )
    .unwrap();
    fs::copy(files::sender_key(d.path(), "hv01"), files::ca_key(d.path())).unwrap();
    let e = add_sender(d.path(), "hv02", 30, false).unwrap_err();
    assert!(
        e.to_string().contains("ca.pem: not a CA certificate"),
        "{e}"
    );
}

#[test]
fn a_sender_never_outlives_its_ca() {
    let now = OffsetDateTime::now_utc();
    let (ca, _, _) = Ca::generate(Validity::between(
        now - Duration::days(1),
        now + Duration::days(5),
    ))
    .unwrap();
    let (pem, _) = ca
        .issue_sender("hv01", Validity::days_from_now(825))
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("hv01.pem");
    fs::write(&f, pem).unwrap();
    let left = parse(&f).not_after - now.unix_timestamp();
    assert!((left - 5 * 86_400).abs() < 5, "{left}");
}

//! The identity chain against a token endpoint on 127.0.0.1 and a fake `az` script.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;

use super::*;

/// One captured request: method, path, and the form fields of its body.
struct Captured {
    method: String,
    path: String,
    form: BTreeMap<String, String>,
}

/// Serves `answers.len()` requests on 127.0.0.1 (each answered with the next `(status, body)`)
/// and reports each request. Returns the base URL.
fn token_endpoint(answers: Vec<(u16, String)>) -> (String, mpsc::Receiver<Captured>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (status, body) in answers {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap();
                    }
                }
            }
            let mut b = vec![0; len];
            r.read_exact(&mut b).unwrap();
            let form = String::from_utf8(b)
                .unwrap()
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect();
            let _ = tx.send(Captured { method, path, form });
            let reason = if status == 200 { "OK" } else { "Error" };
            let resp = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    (url, rx)
}

fn percent_decode(v: &str) -> String {
    let v = v.replace('+', " ");
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn workload(dir: &std::path::Path, authority: &str) -> Source {
    let file = dir.join("token");
    std::fs::write(&file, "header.payload.signature\n").unwrap();
    Source::Workload {
        token_file: file,
        client_id: "11111111-2222-3333-4444-555555555555".into(),
        tenant_id: "tenant-x".into(),
        authority: format!("{authority}/"),
    }
}

#[test]
fn workload_identity_exchanges_the_federated_token_by_client_assertion() {
    let dir = tempfile::tempdir().unwrap();
    let (url, rx) = token_endpoint(vec![(
        200,
        r#"{"token_type":"Bearer","expires_in":3599,"access_token":"tok-wi"}"#.into(),
    )]);
    let chain = IdentityChain::new(vec![workload(dir.path(), &url)]);
    assert_eq!(chain.token().unwrap(), "tok-wi");
    assert_eq!(chain.chosen_kind(), Some("workload identity"));
    let c = rx.recv().unwrap();
    assert_eq!(c.method, "POST");
    assert_eq!(c.path, "/tenant-x/oauth2/v2.0/token");
    assert_eq!(c.form["grant_type"], "client_credentials");
    assert_eq!(
        c.form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(c.form["client_assertion"], "header.payload.signature");
    assert_eq!(c.form["client_id"], "11111111-2222-3333-4444-555555555555");
    assert_eq!(c.form["scope"], "https://storage.azure.com/.default");
    // Cached: a second call makes no request (the endpoint would not answer it).
    assert_eq!(chain.token().unwrap(), "tok-wi");
}

#[test]
fn a_token_close_to_expiry_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let (url, rx) = token_endpoint(vec![
        (200, r#"{"expires_in":2,"access_token":"short"}"#.into()),
        (200, r#"{"expires_in":3600,"access_token":"long"}"#.into()),
    ]);
    let chain = IdentityChain::new(vec![workload(dir.path(), &url)]);
    assert_eq!(chain.token().unwrap(), "short");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(chain.token().unwrap(), "long");
    assert_eq!(rx.try_iter().count(), 2);
}

#[test]
fn a_refused_federated_token_names_workload_identity_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _rx) = token_endpoint(vec![(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found\nTrace ID: x"}"#.into(),
    )]);
    let e = workload(dir.path(), &url)
        .fetch(&IdentityChain::new(vec![]).agent)
        .unwrap_err();
    assert_eq!(e.kind, "workload identity");
    assert!(e.message.contains("HTTP 401"), "{e}");
    assert!(e.message.contains("AADSTS700213"), "{e}");
    assert!(!e.message.contains("Trace ID"), "{e}");
}

/// A fake `az` printing `stdout` (or failing with `stderr` when `ok` is false).
fn fake_az(dir: &std::path::Path, ok: bool, text: &str) -> PathBuf {
    let p = dir.join("az");
    let script = if ok {
        format!("#!/bin/sh\necho \"$@\" > \"$0.args\"\ncat <<'EOF'\n{text}\nEOF\n")
    } else {
        format!("#!/bin/sh\necho '{text}' >&2\nexit 1\n")
    };
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn azure_cli_token_is_read_from_az_account_get_access_token() {
    let dir = tempfile::tempdir().unwrap();
    let exp = crate::clock::system_time()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3000;
    let az = fake_az(
        dir.path(),
        true,
        &format!(
            r#"{{"accessToken":"tok-cli","expiresOn":"2030-01-01 00:00:00.000000","expires_on":{exp},"tokenType":"Bearer"}}"#
        ),
    );
    let chain = IdentityChain::new(vec![Source::AzureCli {
        program: az.clone(),
    }]);
    assert_eq!(chain.token().unwrap(), "tok-cli");
    assert_eq!(chain.chosen_kind(), Some("Azure CLI"));
    let args = std::fs::read_to_string(dir.path().join("az.args")).unwrap();
    assert_eq!(
        args.trim(),
        "account get-access-token --resource https://storage.azure.com/ --output json"
    );
}

#[test]
fn azure_cli_expires_on_in_local_time_is_understood_without_expires_on() {
    let now = crate::clock::system_time();
    // mktime of a local time one hour from now, formatted by the inverse (localtime_r).
    let t = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as libc::time_t + 3600;
    // SAFETY: plain C struct, filled by localtime_r.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t and a tm.
    unsafe { libc::localtime_r(&t, &mut tm) };
    let s = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.123456",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    );
    let tok = parse_cli_token(&format!(r#"{{"accessToken":"a","expiresOn":"{s}"}}"#), now).unwrap();
    let left = tok
        .expires
        .saturating_duration_since(crate::clock::std_now());
    assert!(
        left > Duration::from_secs(3590) && left <= Duration::from_secs(3600),
        "{left:?}"
    );
}

#[test]
fn the_chain_error_lists_every_source_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let az = fake_az(
        dir.path(),
        false,
        "ERROR: Please run 'az login' to setup account.",
    );
    // A managed identity endpoint nobody listens on (a port just closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let chain = IdentityChain::new(vec![
        Source::Missing {
            kind: "workload identity",
            why: "not configured (AZURE_FEDERATED_TOKEN_FILE not set)".into(),
        },
        Source::ManagedIdentity {
            client_id: None,
            endpoint: format!("http://127.0.0.1:{port}/metadata/identity/oauth2/token"),
        },
        Source::AzureCli { program: az },
    ]);
    let e = chain.token().unwrap_err();
    let m = e.to_string();
    assert!(
        m.starts_with("identity chain: no Azure credential worked"),
        "{m}"
    );
    assert!(m.contains("--azure-sas"), "{m}");
    assert!(
        m.contains("workload identity: not configured (AZURE_FEDERATED_TOKEN_FILE"),
        "{m}"
    );
    assert!(
        m.contains("managed identity: the instance metadata service (IMDS) is unreachable"),
        "{m}"
    );
    assert!(
        m.contains("Azure CLI: `az account get-access-token` failed"),
        "{m}"
    );
    assert!(m.contains("az login"), "{m}");
    assert!(!e.recoverable, "nothing configured: retrying cannot help");
}

#[test]
fn the_first_working_source_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (url, rx) = token_endpoint(vec![
        (200, r#"{"expires_in":"1","access_token":"mi-1"}"#.into()),
        (200, r#"{"expires_in":"3600","access_token":"mi-2"}"#.into()),
    ]);
    let az = fake_az(dir.path(), true, r#"{"accessToken":"cli","expires_on":1}"#);
    let chain = IdentityChain::new(vec![
        Source::ManagedIdentity {
            client_id: Some("abc".into()),
            endpoint: format!("{url}/metadata/identity/oauth2/token"),
        },
        Source::AzureCli { program: az },
    ]);
    assert_eq!(chain.token().unwrap(), "mi-1");
    let c = rx.recv().unwrap();
    assert_eq!(c.method, "GET");
    assert!(
        c.path.starts_with("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fstorage.azure.com%2F&client_id=abc"),
        "{}",
        c.path
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(chain.token().unwrap(), "mi-2");
    assert_eq!(chain.chosen_kind(), Some("managed identity"));
}

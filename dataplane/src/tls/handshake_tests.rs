//! Real QUIC handshakes on 127.0.0.1 between the receiver and sender configurations: who is
//! let in, who is refused, and what each side is told.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, Endpoint};
use time::OffsetDateTime;

use super::certs::{self, files, Ca, Validity};
use super::config::{self, ReceiverFiles, SenderFiles, ALPN};
use super::identity::{self, PeerIdentity};
use super::pem;

/// A name with every allowed punctuation, to show such names survive the handshake.
const SENDER: &str = "hv_01.lab-a";

/// What each end saw of one connection attempt.
struct Outcome {
    server: Result<PeerIdentity, String>,
    client: Result<(), String>,
}

/// Runs a receiver built from `server_dir` and one connection from `client` to it as
/// `server_name`; waits until both ends know the outcome (bounded by a timeout).
async fn handshake(server_dir: &Path, client: quinn::ClientConfig, server_name: &str) -> Outcome {
    let server_cfg = config::receiver_quic(&ReceiverFiles::in_dir(server_dir)).unwrap();
    let server = Endpoint::server(server_cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = server.local_addr().unwrap();
    let client_ep = Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();

    let server_side = async {
        let incoming = server.accept().await.expect("an incoming connection");
        match incoming.await {
            Ok(conn) => {
                let id = identity::peer_identity(&conn).map_err(|e| e.to_string());
                conn.close(0u32.into(), b"test done");
                id
            }
            Err(e) => Err(describe(&e)),
        }
    };
    let client_side = async {
        let connecting = client_ep
            .connect_with(client, addr, server_name)
            .map_err(|e| e.to_string())?;
        match connecting.await {
            // In TLS 1.3 the client finishes first; a refusal of its certificate arrives
            // as the server closing the connection.
            Ok(conn) => match conn.closed().await {
                ConnectionError::ApplicationClosed(c) if c.reason.as_ref() == b"test done" => {
                    Ok(())
                }
                e => Err(describe(&e)),
            },
            Err(e) => Err(describe(&e)),
        }
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .expect("the handshake finished within 10 s");
    client_ep.wait_idle().await;
    Outcome { server, client }
}

fn describe(e: &ConnectionError) -> String {
    format!("{e}")
}

fn client_for(dir: &Path, name: &str) -> quinn::ClientConfig {
    config::sender_quic(&SenderFiles::in_dir(dir, name)).unwrap()
}

fn fixture() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    certs::init(d.path(), &[SENDER.to_string()], &[], 30, false).unwrap();
    d
}

#[tokio::test]
async fn a_sender_with_a_certificate_from_our_ca_connects_and_is_named() {
    let d = fixture();
    let o = handshake(d.path(), client_for(d.path(), SENDER), "localhost").await;
    let id = o.server.expect("the receiver accepts the sender");
    o.client.expect("the sender connects");
    let leaf = &pem::load_certs(&files::sender_cert(d.path(), SENDER)).unwrap()[0];
    assert_eq!(
        id,
        PeerIdentity {
            name: SENDER.to_string(),
            not_after_unix: identity::not_after_unix(leaf).unwrap(),
        }
    );
}

#[tokio::test]
async fn the_receiver_is_reachable_by_loopback_address_and_by_host_name() {
    let d = tempfile::tempdir().unwrap();
    certs::init(
        d.path(),
        &["a1".into()],
        &["repl.example".into()],
        30,
        false,
    )
    .unwrap();
    for name in ["127.0.0.1", "repl.example"] {
        let o = handshake(d.path(), client_for(d.path(), "a1"), name).await;
        assert_eq!(o.server.expect(name).name, "a1");
        o.client.expect(name);
    }
}

#[tokio::test]
async fn a_sender_certified_by_another_ca_is_refused_on_both_sides() {
    let ours = fixture();
    let theirs = fixture(); // same sender name, different CA
    let o = handshake(ours.path(), client_for(theirs.path(), SENDER), "localhost").await;
    let s = o
        .server
        .expect_err("the receiver refuses a foreign certificate");
    let c = o.client.expect_err("the sender learns it was refused");
    // The sender also distrusts the receiver (signed by a CA it does not know), so either
    // side may notice first; both must fail and say it is about the certificate issuer.
    assert!(
        s.contains("UnknownIssuer") || c.contains("UnknownIssuer"),
        "server: {s}\nclient: {c}"
    );
    for msg in [&s, &c] {
        assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    }
}

#[tokio::test]
async fn a_sender_with_a_foreign_certificate_but_our_ca_is_refused_by_the_receiver() {
    // The sender trusts our receiver (our ca.pem) but presents a certificate from another CA:
    // only the receiver's client verification can catch this.
    let ours = fixture();
    let theirs = fixture();
    let cfg = config::sender_quic(&SenderFiles {
        ca: files::ca_cert(ours.path()),
        ..SenderFiles::in_dir(theirs.path(), SENDER)
    })
    .unwrap();
    let o = handshake(ours.path(), cfg, "localhost").await;
    let s = o.server.expect_err("refused");
    let c = o.client.expect_err("told");
    assert!(s.contains("invalid peer certificate: UnknownIssuer"), "{s}");
    assert!(c.contains("certificate"), "{c}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let d = fixture();
    let mut roots = rustls::RootCertStore::empty();
    for c in pem::load_certs(&files::ca_cert(d.path())).unwrap() {
        roots.add(c).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(config::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let o = handshake(d.path(), cfg, "localhost").await;
    let s = o.server.expect_err("refused");
    let c = o.client.expect_err("told");
    assert!(s.contains("peer sent no certificates"), "{s}");
    assert!(c.contains("certificate"), "{c}");
}

#[tokio::test]
async fn a_sender_dialling_a_name_the_receiver_certificate_lacks_refuses_it() {
    let d = fixture();
    let o = handshake(d.path(), client_for(d.path(), SENDER), "elsewhere.example").await;
    let c = o.client.expect_err("the sender refuses the receiver");
    let s = o.server.expect_err("the receiver sees the handshake fail");
    assert!(
        c.contains("certificate not valid for name \"elsewhere.example\""),
        "{c}"
    );
    assert!(s.contains("certificate"), "{s}");
}

#[tokio::test]
async fn an_expired_sender_certificate_is_refused() {
    let d = fixture();
    let now = OffsetDateTime::now_utc();
    let expired = Validity::between(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    );
    let (pem, key) = Ca::load(d.path())
        .unwrap()
        .issue_sender("old", expired)
        .unwrap();
    std::fs::write(files::sender_cert(d.path(), "old"), pem).unwrap();
    super::pem::write_atomic(
        &files::sender_key(d.path(), "old"),
        key.as_bytes(),
        super::pem::KEY_MODE,
    )
    .unwrap();
    let o = handshake(d.path(), client_for(d.path(), "old"), "localhost").await;
    let s = o.server.expect_err("refused");
    let c = o.client.expect_err("told");
    assert!(
        s.contains("invalid peer certificate: certificate expired"),
        "{s}"
    );
    assert!(c.contains("certificate"), "{c}");
}

#[tokio::test]
async fn an_expired_receiver_certificate_is_refused_by_the_sender() {
    let d = fixture();
    let now = OffsetDateTime::now_utc();
    let expired = Validity::between(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    );
    let (pem, key) = Ca::load(d.path())
        .unwrap()
        .issue_receiver(&[], expired)
        .unwrap();
    std::fs::write(files::receiver_cert(d.path()), pem).unwrap();
    super::pem::write_atomic(
        &files::receiver_key(d.path()),
        key.as_bytes(),
        super::pem::KEY_MODE,
    )
    .unwrap();
    let o = handshake(d.path(), client_for(d.path(), SENDER), "localhost").await;
    let c = o.client.expect_err("refused");
    o.server.expect_err("told");
    assert!(
        c.contains("invalid peer certificate: certificate expired"),
        "{c}"
    );
}

#[tokio::test]
async fn a_peer_speaking_another_protocol_version_is_refused() {
    let d = fixture();
    let mut tls = config::sender_tls(&SenderFiles::in_dir(d.path(), SENDER)).unwrap();
    tls.alpn_protocols = vec![b"vdrep/2".to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let o = handshake(d.path(), cfg, "localhost").await;
    let s = o.server.expect_err("refused");
    let c = o.client.expect_err("told");
    assert!(s.contains("peer doesn't support any known protocol"), "{s}");
    assert!(c.contains("error 120"), "{c}"); // no_application_protocol alert
}

#[tokio::test]
async fn the_receivers_certificate_cannot_act_as_a_sender() {
    // Same CA, valid dates, but the certificate is for server authentication only: a stolen
    // receiver key must not let its holder replicate as a sender.
    let d = fixture();
    let cfg = config::sender_quic(&SenderFiles {
        ca: files::ca_cert(d.path()),
        cert: files::receiver_cert(d.path()),
        key: files::receiver_key(d.path()),
    })
    .unwrap();
    let o = handshake(d.path(), cfg, "localhost").await;
    let s = o.server.expect_err("refused");
    o.client.expect_err("told");
    assert!(
        s.contains("does not allow extended key usage for client authentication"),
        "{s}"
    );
}

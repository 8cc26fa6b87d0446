//! The rustls and quinn configurations of both ends: TLS 1.3 only, mutual authentication
//! against one CA, ALPN `vdrep/1`.
//!
//! # Crypto provider: *ring*, AES-128-GCM first
//!
//! Both ends use rustls' *ring* provider, built explicitly here (never the process-wide
//! default, so a dependency enabling another provider changes nothing). DESIGN.md §5
//! measured quinn at 1.25–1.45 GB/s on loopback with aws-lc-rs, ≈0.7 CPU-s per GB per end.
//! Measured on this 2-core machine (AVX-512/VAES CPU; seal in place, best of 3, scratch
//! benchmark): AES-128-GCM on 1200-byte QUIC packets, ring 0.17.14 3.4 GB/s vs aws-lc-rs
//! 4.0 GB/s (AES-256-GCM 3.2 vs 3.6; ChaCha20 1.2 vs 1.9); on 16 KiB buffers aws-lc's
//! AVX-512 code pulls away (9.6 vs 22.9 GB/s), but QUIC seals packet by packet. So the
//! provider moves ≈0.04 CPU-s per GB (0.29 vs 0.25), a few per cent of the ≈0.7 CPU-s/GB a
//! QUIC end spends, while aws-lc-sys adds a C build (~1 min on 2 cores) to every fresh CI
//! build and a second crypto library beside the ring that rcgen and x509-parser use. We
//! take ring. If a profile ever shows packet protection dominating, switching is this one
//! function plus the `rustls-aws-lc-rs`/`aws_lc_rs` features in the workspace `Cargo.toml`.
//!
//! Cipher suites, in preference order: TLS13_AES_128_GCM_SHA256 (fastest measured in §5,
//! and QUIC's mandatory initial suite), TLS13_AES_256_GCM_SHA384, then
//! TLS13_CHACHA20_POLY1305_SHA256 for CPUs without AES instructions. The receiver enforces
//! its own order. TLS 1.2 is not compiled in.
//!
//! # Authentication
//!
//! The receiver *requires* a client certificate chaining to `ca.pem` (rustls'
//! `WebPkiClientVerifier`: signature, validity period, client-auth EKU); which VMs that
//! sender may touch is decided afterwards from its name ([`super::identity`]). The sender
//! verifies the receiver's certificate against the same `ca.pem` and the server name it
//! dialled. 0-RTT stays off: replayable early data has no place in a replication protocol.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::certs::files;
use super::pem;
use super::TlsError;

/// The one application protocol both ends speak; a peer offering anything else fails the
/// handshake (so a future `vdrep/2` is refused clearly, not misparsed).
pub const ALPN: &[u8] = b"vdrep/1";

/// The crypto provider of both ends: *ring*, with the cipher suites in our preference order
/// (see the module documentation for why).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..ring::default_provider()
    })
}

/// The files the receiver needs. [`ReceiverFiles::in_dir`] gives the standard layout; an
/// operator's configuration may point each elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverFiles {
    /// CA certificate(s) that sender certificates must chain to.
    pub ca: PathBuf,
    /// The receiver's chain, leaf first.
    pub cert: PathBuf,
    /// The receiver's private key.
    pub key: PathBuf,
}

impl ReceiverFiles {
    /// `DIR/ca.pem`, `DIR/receiver.pem`, `DIR/receiver.key`.
    pub fn in_dir(dir: &Path) -> Self {
        ReceiverFiles {
            ca: files::ca_cert(dir),
            cert: files::receiver_cert(dir),
            key: files::receiver_key(dir),
        }
    }
}

/// The files a sender needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderFiles {
    /// CA certificate(s) the receiver's certificate must chain to.
    pub ca: PathBuf,
    /// The sender's chain, leaf first.
    pub cert: PathBuf,
    /// The sender's private key.
    pub key: PathBuf,
}

impl SenderFiles {
    /// `DIR/ca.pem`, `DIR/NAME.pem`, `DIR/NAME.key`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        SenderFiles {
            ca: files::ca_cert(dir),
            cert: files::sender_cert(dir, name),
            key: files::sender_key(dir, name),
        }
    }
}

/// The receiver's rustls configuration: its certificate, client certificates required and
/// verified against `ca`, ALPN `vdrep/1`, TLS 1.3 only.
pub fn receiver_tls(f: &ReceiverFiles) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let roots = Arc::new(load_roots(&f.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::bad_file(&f.ca, format!("unusable as client CA: {e}")))?;
    let (chain, key) = load_pair(&f.cert, &f.key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("receiver", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| pair_error(&f.cert, &f.key, e))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// A sender's rustls configuration: verifies the receiver against `ca` (and, per connection,
/// the server name it dials), presents its own certificate, ALPN `vdrep/1`, TLS 1.3 only.
pub fn sender_tls(f: &SenderFiles) -> Result<rustls::ClientConfig, TlsError> {
    let roots = load_roots(&f.ca)?;
    let (chain, key) = load_pair(&f.cert, &f.key)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("sender", e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| pair_error(&f.cert, &f.key, e))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// [`receiver_tls`] wrapped for quinn. Transport parameters (windows, idle timeout) are the
/// transport's business: set them on the result.
pub fn receiver_quic(f: &ReceiverFiles) -> Result<quinn::ServerConfig, TlsError> {
    let crypto =
        QuicServerConfig::try_from(receiver_tls(f)?).map_err(|e| config_error("receiver", e))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// [`sender_tls`] wrapped for quinn.
pub fn sender_quic(f: &SenderFiles) -> Result<quinn::ClientConfig, TlsError> {
    let crypto =
        QuicClientConfig::try_from(sender_tls(f)?).map_err(|e| config_error("sender", e))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

fn load_roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in pem::load_certs(ca)? {
        roots
            .add(der)
            .map_err(|e| TlsError::bad_file(ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn load_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    Ok((pem::load_certs(cert)?, pem::load_key(key)?))
}

fn pair_error(cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    let cert_name = cert.file_name().unwrap_or_default().to_string_lossy();
    TlsError::bad_file(
        key,
        format!("unusable with {cert_name} (wrong key for the certificate, or unsupported key type): {e}"),
    )
}

fn config_error(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Config {
        what: what.to_string(),
        problem: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Classify;
    use crate::tls::certs;

    #[test]
    fn aes_128_gcm_is_preferred_and_only_tls13_suites_exist() {
        let names: Vec<_> = crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            names,
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256"
            ]
        );
    }

    #[test]
    fn configs_build_from_an_init_directory_with_alpn() {
        let d = tempfile::tempdir().unwrap();
        certs::init(d.path(), &["hv01".into()], &[], 30, false).unwrap();
        let s = receiver_tls(&ReceiverFiles::in_dir(d.path())).unwrap();
        assert_eq!(s.alpn_protocols, [b"vdrep/1".to_vec()]);
        let c = sender_tls(&SenderFiles::in_dir(d.path(), "hv01")).unwrap();
        assert_eq!(c.alpn_protocols, [b"vdrep/1".to_vec()]);
        receiver_quic(&ReceiverFiles::in_dir(d.path())).unwrap();
        sender_quic(&SenderFiles::in_dir(d.path(), "hv01")).unwrap();
    }

    #[test]
    fn missing_sender_files_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        certs::init(d.path(), &["hv01".into()], &[], 30, false).unwrap();
        let e = sender_tls(&SenderFiles::in_dir(d.path(), "nobody")).unwrap_err();
        assert!(e.to_string().contains("nobody.pem: unreadable"), "{e}");
        assert!(!e.is_transient());
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let d = tempfile::tempdir().unwrap();
        certs::init(d.path(), &["a1".into(), "b2".into()], &[], 30, false).unwrap();
        let f = SenderFiles {
            key: d.path().join("b2.key"),
            ..SenderFiles::in_dir(d.path(), "a1")
        };
        let e = sender_tls(&f).unwrap_err().to_string();
        assert!(e.contains("b2.key: unusable with a1.pem"), "{e}");
    }

    #[test]
    fn an_empty_ca_file_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        certs::init(d.path(), &["a1".into()], &[], 30, false).unwrap();
        std::fs::write(d.path().join("ca.pem"), "").unwrap();
        let e = receiver_tls(&ReceiverFiles::in_dir(d.path())).unwrap_err();
        assert!(
            e.to_string().ends_with("ca.pem: no certificate found"),
            "{e}"
        );
    }
}

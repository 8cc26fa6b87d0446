//! Certificate expiry for the `vdrep_certificate_expiry_seconds` gauge: each role exports its
//! own certificate and its CA's, the receiver also each sender it has seen.

use std::path::Path;

use rustls_pki_types::CertificateDer;

use super::events;
use crate::tls::identity::{not_after_unix, peer_name};

/// The first certificate of a PEM file: its name (CN or DNS SAN, else the file's stem) and
/// expiry.
fn first_cert(file: &Path) -> Option<(String, i64)> {
    let fallback = file.file_stem()?.to_string_lossy().into_owned();
    let text = std::fs::read(file).ok()?;
    let pem = x509_parser::pem::Pem::iter_from_buffer(&text)
        .next()?
        .ok()?;
    let der = CertificateDer::from(pem.contents);
    let name = peer_name(&der).unwrap_or(fallback);
    Some((name, not_after_unix(&der).ok()?))
}

/// Exports the expiry of `cert` (this role's identity) and `ca`; unreadable files are skipped
/// (the role's TLS set-up reports them).
pub fn export_files(ca: &Path, cert: &Path) {
    if let Some((name, t)) = first_cert(cert) {
        events::certificate("identity", &name, t);
    }
    if let Some((name, t)) = first_cert(ca) {
        events::certificate("ca", &name, t);
    }
}

//! Certificate expiry for the `vdrep_certificate_expiry_timestamp_seconds` gauge: each role
//! exports its own certificate and its CA's, the receiver also each sender it has seen. A
//! role that can take a renewed certificate without restarting ([`watch`]) re-reads the files
//! when they change and exports the new expiry once it uses them, so the gauge always tells
//! the certificate in use.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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

/// How often [`watch`] looks at the files (three `stat` calls): a renewal is in use within
/// seconds.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// What identifies a file's version without reading it: length and modification time.
fn fingerprint(files: &[&Path]) -> Vec<Option<(u64, Option<SystemTime>)>> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        })
        .collect()
}

/// Tells whether a role's certificate files changed since it last asked (length or
/// modification time of the CA, certificate and key).
#[derive(Debug)]
pub struct FileWatch {
    files: [PathBuf; 3],
    seen: Vec<Option<(u64, Option<SystemTime>)>>,
}

impl FileWatch {
    /// Starts watching `ca`, `cert` and `key` as they are now.
    pub fn new(ca: &Path, cert: &Path, key: &Path) -> Self {
        let files = [ca.to_path_buf(), cert.to_path_buf(), key.to_path_buf()];
        let seen = fingerprint(&[&files[0], &files[1], &files[2]]);
        FileWatch { files, seen }
    }

    /// Whether any file changed since the last call (or since [`FileWatch::new`]).
    pub fn changed(&mut self) -> bool {
        let now = fingerprint(&[&self.files[0], &self.files[1], &self.files[2]]);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

/// Spawns a task on the current runtime that, every [`WATCH_EVERY`], checks `ca`, `cert` and
/// `key`; when any changed it calls `reload` (which builds and installs the new TLS
/// configuration) and, if that succeeds, exports the new expiry. A replacement that does not
/// load (half-copied, wrong key) is logged and retried at the next change; the role keeps the
/// certificate it has.
pub fn watch<F>(ca: PathBuf, cert: PathBuf, key: PathBuf, reload: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Result<(), String> + Send + 'static,
{
    tokio::spawn(async move {
        let mut files = FileWatch::new(&ca, &cert, &key);
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            if !files.changed() {
                continue;
            }
            match reload() {
                Ok(()) => {
                    export_files(&ca, &cert);
                    tracing::info!(cert = %cert.display(), "certificate files changed: reloaded");
                }
                Err(e) => tracing::warn!(
                    cert = %cert.display(),
                    error = %e,
                    "certificate files changed but do not load; keeping the certificate in use"
                ),
            }
        }
    })
}

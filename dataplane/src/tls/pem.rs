//! Reading and writing the PEM files of a certificate directory.
//!
//! Reads are bounded (a PEM file larger than [`MAX_PEM_BYTES`] is refused rather than loaded)
//! and every failure names the file. Writes replace the file atomically (temporary file,
//! fsync, rename), so an interrupted `certs init` never leaves half a key behind, and private
//! keys are created with mode 0600 from the first byte.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Largest PEM file we read: certificate chains and keys are a few KiB; anything bigger is
/// not what the operator meant to point us at.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Mode of private-key files: readable by the owner only.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificate files: public material.
pub const CERT_MODE: u32 = 0o644;

/// Reads a whole (small) file, naming it in every error.
pub fn read_small(file: &Path) -> Result<Vec<u8>, TlsError> {
    let meta = fs::metadata(file).map_err(|e| TlsError::io(file, "unreadable", e))?;
    if !meta.is_file() {
        return Err(TlsError::bad_file(file, "not a regular file"));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(TlsError::bad_file(
            file,
            format!(
                "{} bytes is too large for a PEM file (limit {MAX_PEM_BYTES})",
                meta.len()
            ),
        ));
    }
    fs::read(file).map_err(|e| TlsError::io(file, "unreadable", e))
}

/// All certificates in a PEM file, in file order (leaf first for a chain). At least one.
pub fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_small(file)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::bad_file(file, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::bad_file(file, "no certificate found"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC). A key file that grants
/// anything to other users is refused (`crate::secret`), so no role starts with it.
pub fn load_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    crate::secret::check_private(file, "private key")?;
    let bytes = read_small(file)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            TlsError::bad_file(file, "no private key found")
        }
        e => TlsError::bad_file(file, format!("malformed PEM: {e}")),
    })
}

/// Creates `dir` (and its parents) if missing; a new directory gets mode 0700 since it will
/// hold private keys.
pub fn create_dir(dir: &Path) -> Result<(), TlsError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TlsError::io(dir, "cannot create directory", e))
}

/// Writes `contents` to `file` atomically with the given mode.
pub fn write_atomic(file: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = tmp_path(file);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // An old temporary file keeps its old mode: set ours before writing any secret.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, file)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        TlsError::io(file, "cannot write", e)
    })
}

fn tmp_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    file.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_named_unreadable() {
        let d = tempfile::tempdir().unwrap();
        let e = load_certs(&d.path().join("ca.pem")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("ca.pem: unreadable"), "{msg}");
        assert!(!e.is_recoverable());
    }

    #[test]
    fn pem_without_certificate_says_no_certificate_found() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        fs::write(&p, "hello\n").unwrap();
        let msg = load_certs(&p).unwrap_err().to_string();
        assert!(msg.ends_with("ca.pem: no certificate found"), "{msg}");
    }

    #[test]
    fn key_file_without_key_says_no_private_key_found() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sender.key");
        fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(KEY_MODE)).unwrap();
        let msg = load_key(&p).unwrap_err().to_string();
        assert!(msg.ends_with("sender.key: no private key found"), "{msg}");
    }

    #[test]
    fn a_key_readable_by_others_is_refused_before_it_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hv01.key");
        fs::write(&p, "not even a key").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let msg = load_key(&p).unwrap_err().to_string();
        assert!(
            msg.contains("hv01.key: mode 0644 lets other users read"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_pem_is_malformed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        fs::write(&p, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let msg = load_certs(&p).unwrap_err().to_string();
        assert!(msg.contains("ca.pem: malformed PEM"), "{msg}");
    }

    #[test]
    fn oversized_file_is_refused_unread() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.pem");
        let f = fs::File::create(&p).unwrap();
        f.set_len(MAX_PEM_BYTES + 1).unwrap();
        let msg = load_certs(&p).unwrap_err().to_string();
        assert!(msg.contains("too large for a PEM file"), "{msg}");
    }

    #[test]
    fn atomic_write_sets_key_mode_even_over_a_stale_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.key");
        fs::write(tmp_path(&p), "stale").unwrap();
        fs::set_permissions(tmp_path(&p), fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&p, b"secret", KEY_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!tmp_path(&p).exists());
    }
}

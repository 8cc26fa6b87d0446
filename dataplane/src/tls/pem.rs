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

/// Writes `contents` to `file` atomically with the given mode. The temporary file has a
/// random name and is created exclusively without following symlinks (`O_EXCL|O_NOFOLLOW`):
/// with a fixed `NAME.tmp`, a symlink planted there by anyone who can write the folder made us
/// write the key through it, chmod its target and rename the link over the key.
pub fn write_atomic(file: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = tmp_path(file);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        // The mode above is filtered by the umask: set ours before writing any secret.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, file)
    };
    write().map_err(|e| {
        // Only when we created it: an existing path there is never ours (create_new).
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = fs::remove_file(&tmp);
        }
        TlsError::io(file, "cannot write", e)
    })
}

/// `.NAME.tmp.RANDOM` beside `file`: unpredictable, so nothing can be planted there.
fn tmp_path(file: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(file.file_name().unwrap_or_default());
    name.push(format!(".tmp.{:016x}", rand::random::<u64>()));
    file.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Classify;

    #[test]
    fn missing_file_is_named_unreadable() {
        let d = tempfile::tempdir().unwrap();
        let e = load_certs(&d.path().join("ca.pem")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("ca.pem: unreadable"), "{msg}");
        assert!(!e.is_transient());
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
    fn atomic_write_sets_key_mode_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.key");
        write_atomic(&p, b"secret", KEY_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_planted_at_the_old_temporary_name_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "not yours").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        let p = d.path().join("x.key");
        let planted = d.path().join("x.key.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&p, b"secret", KEY_MODE).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"not yours");
        let vmode = fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(vmode, 0o644);
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_file(), "the key must not be a symlink");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"secret");
    }
}

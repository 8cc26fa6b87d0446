//! Files that hold secrets: private keys (`*.key`) and the sidecar's token. A role refuses to
//! start when such a file grants anything to other users (`mode & 0o007 != 0`): a key that
//! every local account can read is a key an attacker on the host already has, and starting
//! anyway would hide that. Group access is allowed on purpose: the packaged units run as user
//! `vdrep`, and the README's service steps give the token to that group
//! (`install -m 0640 -g vdrep`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A secret file whose mode lets other users in.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: mode {mode:04o} lets other users {access} this {what}; refusing to use it \
     (chmod o-rwx {})",
    file.display(),
    file.display()
)]
pub struct OpenToOthers {
    /// The file.
    pub file: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// "private key", "token file".
    pub what: &'static str,
    /// "read", "write", "read and write" (from the other-bits).
    pub access: &'static str,
}

/// Checks that `file` grants nothing to others. A file that cannot be examined passes: the
/// read that follows reports why, naming the file.
pub fn check_private(file: &Path, what: &'static str) -> Result<(), OpenToOthers> {
    let Ok(meta) = std::fs::metadata(file) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 == 0 {
        return Ok(());
    }
    let access = match (mode & 0o004 != 0, mode & 0o002 != 0) {
        (true, true) => "read and write",
        (true, false) => "read",
        (false, true) => "write",
        (false, false) => "execute",
    };
    Err(OpenToOthers {
        file: file.to_path_buf(),
        mode,
        what,
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn with_mode(mode: u32) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("receiver.key");
        fs::write(&p, "k").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        (d, p)
    }

    #[test]
    fn owner_and_group_access_is_accepted() {
        for mode in [0o600, 0o400, 0o640, 0o660] {
            let (_d, p) = with_mode(mode);
            check_private(&p, "private key").unwrap();
        }
    }

    #[test]
    fn any_bit_for_others_is_refused_naming_the_file_and_the_fix() {
        for (mode, access) in [(0o644, "read"), (0o602, "write"), (0o601, "execute")] {
            let (_d, p) = with_mode(mode);
            let e = check_private(&p, "private key").unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "receiver.key: mode {mode:04o} lets other users {access} this private key"
                )),
                "{e}"
            );
            assert!(
                e.ends_with(&format!("(chmod o-rwx {})", p.display())),
                "{e}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_left_to_the_read_that_follows() {
        check_private(Path::new("/nonexistent/x.key"), "private key").unwrap();
    }
}

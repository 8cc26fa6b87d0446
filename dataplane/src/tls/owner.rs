//! `vdrep certs init|add-sender … --owner USER[:GROUP]`: gives the certificates and keys to
//! the account a role runs as. `certs` runs as root, which makes keys root's with mode 0600;
//! the packaged units run as `vdrep` and could not read them. With `--owner`, every file
//! written except `ca.key` (which stays root's and should leave the machine) becomes
//! USER:GROUP, and the directory becomes group GROUP with mode 0750 so the role can reach its
//! files, while other users still cannot.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::TlsError;

/// A resolved `USER[:GROUP]`: GROUP defaults to USER's primary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    spec: String,
    uid: u32,
    gid: u32,
}

impl Owner {
    /// Resolves `USER[:GROUP]` (names, or numeric ids; a numeric USER needs a GROUP).
    pub fn parse(spec: &str) -> Result<Owner, TlsError> {
        let err = |problem: String| TlsError::Owner {
            owner: spec.to_string(),
            problem,
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(err("expected USER or USER:GROUP".into()));
        }
        let (uid, primary) = match user.parse::<u32>() {
            Ok(uid) => (uid, None),
            Err(_) => {
                let (uid, gid) =
                    lookup_user(user).ok_or_else(|| err(format!("no user named {user:?}")))?;
                (uid, Some(gid))
            }
        };
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => lookup_group(g).ok_or_else(|| err(format!("no group named {g:?}")))?,
            },
            None => primary.ok_or_else(|| err("a numeric USER needs :GROUP".into()))?,
        };
        Ok(Owner {
            spec: spec.to_string(),
            uid,
            gid,
        })
    }

    /// The user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The group id.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Gives `written` (except `ca.key`) to the owner and opens `dir` to its group (0750).
    pub fn apply(&self, dir: &Path, written: &[PathBuf]) -> Result<(), TlsError> {
        let fail = |p: &Path, e: std::io::Error| TlsError::Owner {
            owner: self.spec.clone(),
            problem: format!("{}: {e}", p.display()),
        };
        for f in written.iter().filter(|f| !is_ca_key(f)) {
            std::os::unix::fs::chown(f, Some(self.uid), Some(self.gid)).map_err(|e| fail(f, e))?;
        }
        std::os::unix::fs::chown(dir, None, Some(self.gid)).map_err(|e| fail(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
            .map_err(|e| fail(dir, e))
    }
}

/// Whether `f` is the CA's private key, which `--owner` never hands out.
pub fn is_ca_key(f: &Path) -> bool {
    f.file_name().is_some_and(|n| n == "ca.key")
}

/// Size of the buffer getpwnam_r/getgrnam_r fill (sysconf's usual suggestion is 1–16 KiB).
const NSS_BUF: usize = 1 << 16;

/// (uid, primary gid) of a user name, through NSS (files, LDAP, …).
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; NSS_BUF];
    // SAFETY: passwd is plain old data; getpwnam_r fills it with pointers into `buf`, which
    // outlives every use here, and only the two integer fields are read.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the length is the buffer's.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// The gid of a group name, through NSS.
fn lookup_group(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; NSS_BUF];
    // SAFETY: as in lookup_user.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the length is the buffer's.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_and_the_group_defaults_to_the_primary_one() {
        let root = Owner::parse("root").unwrap();
        assert_eq!((root.uid(), root.gid()), (0, 0));
        let o = Owner::parse("root:0").unwrap();
        assert_eq!((o.uid(), o.gid()), (0, 0));
        let o = Owner::parse("12345:54321").unwrap();
        assert_eq!((o.uid(), o.gid()), (12345, 54321));
    }

    #[test]
    fn unknown_names_and_bad_forms_are_refused_by_name() {
        for (spec, want) in [
            ("no-such-user-vdrep", "no user named \"no-such-user-vdrep\""),
            ("root:no-such-group-vdrep", "no group named"),
            ("12345", "a numeric USER needs :GROUP"),
            (":x", "expected USER or USER:GROUP"),
            ("root:", "expected USER or USER:GROUP"),
        ] {
            let e = Owner::parse(spec).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("owner {spec:?}: ")) && e.contains(want),
                "{e}"
            );
        }
    }
}

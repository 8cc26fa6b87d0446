//! Certificates and mutual TLS for the sender–receiver QUIC connection (DESIGN.md §7).
//!
//! A certificate directory has one layout, whether `vdrep certs init` made it or an operator
//! brought certificates from their own CA (any CA, PEM files):
//!
//! | file | who needs it | what |
//! | --- | --- | --- |
//! | `ca.pem` | both ends | the CA certificate(s) every peer is verified against |
//! | `ca.key` | only `certs add-sender` | the CA's private key; keep it off the machines |
//! | `receiver.pem`, `receiver.key` | the receiver | its chain (leaf first) and key |
//! | `NAME.pem`, `NAME.key` | sender `NAME` | its client chain and key |
//!
//! The receiver learns *who* a sender is from its certificate (subject CN, else its single
//! DNS SAN — see [`identity`]) and authorises it for its own VMs only.
//!
//! - [`advice`]: which side refused a handshake, and the fix.
//! - [`certs`]: generating a CA, the receiver's and the senders' certificates (rcgen).
//! - [`config`]: the rustls and quinn configurations both ends plug into the transport.
//! - [`identity`]: the sender name and expiry of a connected peer's certificate.
//! - [`owner`]: `--owner USER[:GROUP]`, handing the files to the account a role runs as.

pub mod advice;
pub mod certs;
pub mod config;
mod error;
pub mod identity;
pub mod owner;
mod pem;

#[cfg(test)]
mod handshake_tests;

pub use error::TlsError;

/// Longest sender name: it becomes a file name, a metric label and a DNS SAN label.
pub const MAX_SENDER_NAME: usize = 64;

/// Names a sender may not take, because their files belong to the CA and the receiver.
/// Compared case-insensitively so the files cannot collide on case-insensitive file systems.
pub const RESERVED_NAMES: [&str; 2] = ["ca", "receiver"];

/// Checks a sender name: 1..=64 characters of `[A-Za-z0-9._-]`, starting with a letter or
/// digit (so `NAME.pem` is never a hidden file nor `..`), and not a reserved name.
///
/// The same rule applies to names *read from* peer certificates, so whatever a receiver
/// derives from a certificate is safe as a file name, a log field and a metric label.
pub fn validate_sender_name(name: &str) -> Result<(), TlsError> {
    let bad = |problem| {
        Err(TlsError::InvalidName {
            name: name.to_string(),
            problem,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_SENDER_NAME {
        return bad("longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return bad("must start with a letter or digit");
    }
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return bad("reserved for the CA and receiver files");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_names_accept_hostnames_and_labels() {
        for ok in [
            "hv01",
            "HV-01.contoso.local",
            "vm_host_7",
            "a",
            &"x".repeat(64),
        ] {
            validate_sender_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn sender_names_refuse_paths_reserved_and_odd_characters() {
        let long = "x".repeat(65);
        for bad in [
            "", &long, "ca", "CA", "Receiver", "../x", "a/b", ".hidden", "-x", "a b", "é", "a\0",
        ] {
            let e = validate_sender_name(bad).expect_err(bad);
            assert!(e.to_string().starts_with("sender name"), "{e}");
            assert!(!e.is_recoverable());
        }
    }
}

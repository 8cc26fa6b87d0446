//! [`TlsError`]: what can go wrong with certificates, keys and TLS configuration.

use std::path::{Path, PathBuf};

/// An error from certificate tooling, TLS configuration or peer identification.
///
/// Every message names the file (or the peer) and the problem, so an operator can fix it
/// without reading code: `ca.pem: no certificate found`, `laptop.key: unreadable: ...`.
/// None of these is cured by retrying: a bad or missing certificate stays bad until someone
/// replaces it, so [`TlsError::is_recoverable`] is `false` throughout (DESIGN.md §7).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read, written or created.
    #[error("{}: {problem}: {source}", file.display())]
    Io {
        /// The file or directory.
        file: PathBuf,
        /// What we were doing: "unreadable", "cannot write", "cannot create directory".
        problem: &'static str,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no certificate (or a key file no private key), or its PEM is malformed.
    #[error("{}: {problem}", file.display())]
    BadFile {
        /// The offending file.
        file: PathBuf,
        /// What is wrong, e.g. "no certificate found".
        problem: String,
    },
    /// `init` would replace an existing CA (or `add-sender` an existing sender) without `--force`.
    #[error("{}: already exists; {hint}", file.display())]
    Exists {
        /// The file that would be overwritten.
        file: PathBuf,
        /// What `--force` would do.
        hint: &'static str,
    },
    /// A sender name (or a name taken from a peer certificate) is not acceptable.
    #[error("sender name {name:?}: {problem}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        problem: &'static str,
    },
    /// A `--host` value is neither a DNS name nor an IP address.
    #[error("host {host:?}: {problem}")]
    InvalidHost {
        /// The rejected host.
        host: String,
        /// Why.
        problem: String,
    },
    /// Generating or signing a certificate failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// Which certificate or key.
        what: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// rustls or quinn refused the configuration built from the files.
    #[error("TLS configuration ({what}): {problem}")]
    Config {
        /// Which side or which piece (e.g. "receiver", "sender laptop").
        what: String,
        /// The library's reason.
        problem: String,
    },
    /// A private key file grants access to other users (`mode & 0o007 != 0`).
    #[error(transparent)]
    OpenToOthers(#[from] crate::secret::OpenToOthers),
    /// `--owner USER[:GROUP]` names no such user or group, or the files cannot be given to it.
    #[error("owner {owner:?}: {problem}")]
    Owner {
        /// The `--owner` value.
        owner: String,
        /// Why it cannot be applied.
        problem: String,
    },
    /// The peer's certificate is missing or cannot be parsed, or names no usable sender.
    #[error("peer certificate: {problem}")]
    PeerCertificate {
        /// What is wrong with it.
        problem: String,
    },
}

impl TlsError {
    /// Whether retrying the same operation later could succeed. Never: certificates and keys
    /// do not fix themselves, and a refused peer stays refused until an operator acts.
    pub fn is_recoverable(&self) -> bool {
        false
    }

    pub(crate) fn io(file: &Path, problem: &'static str, source: std::io::Error) -> Self {
        TlsError::Io {
            file: file.to_path_buf(),
            problem,
            source,
        }
    }

    pub(crate) fn bad_file(file: &Path, problem: impl Into<String>) -> Self {
        TlsError::BadFile {
            file: file.to_path_buf(),
            problem: problem.into(),
        }
    }

    pub(crate) fn peer(problem: impl Into<String>) -> Self {
        TlsError::PeerCertificate {
            problem: problem.into(),
        }
    }
}

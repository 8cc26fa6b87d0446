//! What can go wrong talking NBD.

use std::path::PathBuf;

/// An error of the NBD client.
///
/// Every byte from the server is checked; a server that breaks the protocol ends the
/// connection with [`NbdError::Protocol`] (the client refuses further commands), never a
/// panic. [`NbdError::is_transient`] says whether a new connection may succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    /// The server's socket could not be reached.
    #[error("NBD {path}: cannot connect: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing failed (the server went away, or a read timed out).
    #[error("NBD {export}: connection lost: {source}")]
    Io {
        /// The export.
        export: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server sent something the protocol does not allow.
    #[error("NBD {export}: protocol violation by the server: {detail}")]
    Protocol {
        /// The export.
        export: String,
        /// What was wrong.
        detail: String,
    },
    /// The server refused an option during negotiation (no such export, no such bitmap).
    #[error("NBD {export}: server refused option {option}: {code}: {message}")]
    Refused {
        /// The export.
        export: String,
        /// The option number.
        option: u32,
        /// The error's name (`NBD_REP_ERR_UNKNOWN`, ...).
        code: &'static str,
        /// The server's message.
        message: String,
    },
    /// The server does not offer something vdrep needs (structured replies, a context).
    #[error("NBD {export}: server lacks {what}")]
    Unsupported {
        /// The export.
        export: String,
        /// What is missing.
        what: String,
    },
    /// A command failed on the server (an error chunk or a simple error reply).
    #[error("NBD {export}: {command} at {offset}+{length} failed: {errno} ({name}): {message}")]
    Command {
        /// The export.
        export: String,
        /// `read` or `block status`.
        command: &'static str,
        /// The request's offset.
        offset: u64,
        /// The request's length.
        length: u64,
        /// The errno value.
        errno: u32,
        /// Its name.
        name: &'static str,
        /// The server's message, if any.
        message: String,
    },
    /// The caller asked for something outside the export or unnegotiated.
    #[error("NBD {export}: invalid request: {detail}")]
    InvalidRequest {
        /// The export.
        export: String,
        /// What was wrong.
        detail: String,
    },
    /// An earlier error left the connection in an unknown state.
    #[error("NBD {export}: connection unusable after an earlier error")]
    Broken {
        /// The export.
        export: String,
    },
}

impl NbdError {
    /// True when a new connection may succeed (the socket was gone or slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            NbdError::Connect { .. } | NbdError::Io { .. } | NbdError::Broken { .. }
        )
    }

    /// True when the server says the export does not exist (`NBD_REP_ERR_UNKNOWN`). For an
    /// export the caller has just added itself this is no refusal but a server that changed
    /// under it: qemu stopping (it closes its exports before its NBD server) or restarted.
    pub fn is_export_missing(&self) -> bool {
        matches!(
            self,
            NbdError::Refused {
                code: "NBD_REP_ERR_UNKNOWN",
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_export_is_told_apart_from_other_refusals() {
        let refused = |code| NbdError::Refused {
            export: "vdrep-exp-5-1".into(),
            option: 10,
            code,
            message: "export 'vdrep-exp-5-1' not present".into(),
        };
        assert!(refused("NBD_REP_ERR_UNKNOWN").is_export_missing());
        assert!(
            !refused("NBD_REP_ERR_UNKNOWN").is_transient(),
            "for a general client"
        );
        assert!(!refused("NBD_REP_ERR_POLICY").is_export_missing());
    }
}

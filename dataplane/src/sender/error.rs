//! Errors of the sender, each knowing whether a retry can help.

use vdrep_proto::wire::ErrorClass;

use crate::disk::DiskError;
use crate::error::{Classify, Recovery};
use crate::retry::Classified;
use crate::transport::FrameError;

/// Why a replication attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// A source disk cannot be read.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Certificates or keys are unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The receiver's address does not resolve.
    #[error("cannot resolve receiver address {0}")]
    Resolve(String),
    /// The connection could not be started.
    #[error("receiver {peer}: cannot connect: {source}")]
    Connect {
        /// The receiver.
        peer: String,
        /// Why.
        #[source]
        source: quinn::ConnectError,
    },
    /// The connection failed or was closed (a TLS refusal says which side refused and the
    /// fix, `crate::tls::advice`).
    #[error("receiver {peer}: {source}{}", crate::tls::advice::suffix(source))]
    Connection {
        /// The receiver.
        peer: String,
        /// Why.
        #[source]
        source: quinn::ConnectionError,
    },
    /// A stream failed.
    #[error("receiver {peer}: {source}")]
    Frame {
        /// The receiver.
        peer: String,
        /// Why.
        #[source]
        source: FrameError,
    },
    /// The receiver refused a request.
    #[error("receiver {peer} refused ({}): {message}", class.as_str())]
    Remote {
        /// The receiver.
        peer: String,
        /// Classification from the receiver.
        class: ErrorClass,
        /// The receiver's words.
        message: String,
    },
    /// The receiver answered something this sender did not ask for.
    #[error("receiver {peer}: protocol error: {message}")]
    Protocol {
        /// The receiver.
        peer: String,
        /// What was wrong.
        message: String,
    },
    /// Extents kept failing verification at the receiver.
    #[error("{disk}: {count} extents still refused after {passes} resends (first at offset {offset}); the link corrupts data")]
    Integrity {
        /// The disk.
        disk: String,
        /// How many.
        count: usize,
        /// First offset.
        offset: u64,
        /// Passes tried.
        passes: usize,
    },
    /// A local failure of the pipeline's threads.
    #[error("internal error: {0}")]
    Internal(String),
    /// A consistency group's rules are broken (more than 16 VMs, members with different
    /// intervals): the configuration must change.
    #[error("{0}")]
    Group(String),
}

impl Classify for SendError {
    /// Transient errors are retried until `--give-up-after`; the others stop at once
    /// (authentication, authorisation, broken disks, invalid replica state).
    fn recovery(&self) -> Recovery {
        Recovery::transient_if(match self {
            SendError::Disk(e) => e.is_transient(),
            SendError::Tls(_) | SendError::Resolve(_) | SendError::Protocol { .. } => false,
            SendError::Connect { .. } => true,
            SendError::Connection { source, .. } => match source {
                quinn::ConnectionError::TransportError(t) => {
                    // TLS alerts (crypto errors 0x100..0x1ff) mean a certificate problem.
                    let code: u64 = t.code.into();
                    !(0x100..0x200).contains(&code)
                }
                // The receiver closed with a refusal code (see receiver::handle_connection).
                quinn::ConnectionError::ApplicationClosed(c) => {
                    !crate::transport::close::is_permanent_refusal(c.error_code.into())
                }
                quinn::ConnectionError::VersionMismatch => false,
                _ => true,
            },
            SendError::Frame { source, .. } => source.is_transient(),
            SendError::Remote { class, .. } => class.recovery().is_transient(),
            SendError::Integrity { .. } => true,
            SendError::Internal(_) | SendError::Group(_) => false,
        })
    }
}

impl SendError {
    /// The receiver closed the connection because it serves as many connections as it may
    /// ([`crate::transport::close::BUSY`]): retried, and a Warning, not a fault.
    pub fn is_receiver_busy(&self) -> bool {
        use quinn::{ReadError, ReadExactError, WriteError};
        let closed = match self {
            SendError::Connection { source, .. } => source,
            SendError::Frame {
                source:
                    FrameError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(c)))
                    | FrameError::Write(WriteError::ConnectionLost(c)),
                ..
            } => c,
            _ => return false,
        };
        matches!(
            closed,
            quinn::ConnectionError::ApplicationClosed(c)
                if u64::from(c.error_code) == u64::from(crate::transport::close::BUSY)
        )
    }

    /// Short class name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            e if e.is_receiver_busy() => ErrorClass::TargetBusy.as_str(),
            SendError::Disk(_) => "disk",
            SendError::Tls(_) => "tls",
            SendError::Resolve(_) => "resolve",
            SendError::Connect { .. } | SendError::Connection { .. } | SendError::Frame { .. } => {
                "network"
            }
            SendError::Remote { class, .. } => class.as_str(),
            SendError::Protocol { .. } => "protocol",
            SendError::Integrity { .. } => "integrity",
            SendError::Internal(_) => "internal",
            SendError::Group(_) => "group",
        }
    }
}

impl SendError {
    /// What the error means for the VM: its class, whether it is retried (its
    /// [`Recovery`]) and the advice health shows the operator.
    pub fn verdict(&self) -> Classified {
        let e = self;
        let recoverable = e.is_transient();
        let advice = match e {
        SendError::Disk(_) => {
            if recoverable {
                "a transient read error of the source disk; retrying"
            } else {
                "the source disk or its chain is missing or broken: repair it and restart protection"
            }
        }
        SendError::Tls(_) => "the certificates or keys are unusable: check --tls and --identity",
        SendError::Resolve(_) => "the receiver's address does not resolve: check --to",
        e if e.is_receiver_busy() => {
            "the receiver is at its connection limit (--max-connections); retrying"
        }
        SendError::Connection { source, .. }
            if crate::tls::advice::for_connection(source).is_some() =>
        {
            crate::tls::advice::for_connection(source).unwrap_or_default()
        }
        SendError::Connect { .. } | SendError::Connection { .. } | SendError::Frame { .. } => {
            if recoverable {
                "the receiver is unreachable or the link failed; retrying"
            } else {
                "the receiver refused the connection (certificate or authorisation): check --allow and the certificates"
            }
        }
        SendError::Remote { class, .. } => match class {
            ErrorClass::Unauthorized => {
                "the receiver does not allow this sender this VM: check its --allow"
            }
            ErrorClass::NotFound => "the receiver has no such VM or disk",
            ErrorClass::InvalidState | ErrorClass::SizeChanged => {
                "the replica's state does not match the source: a new initial replication is needed"
            }
            ErrorClass::DiskSetChanged => {
                "the store holds disks of this VM that the sender no longer names: unprotect them (vdrep unprotect --disk) or name them again"
            }
            ErrorClass::Protocol | ErrorClass::VersionMismatch => {
                "sender and receiver do not speak the same protocol version: upgrade one"
            }
            ErrorClass::TargetFull => "the target is out of space; retrying",
            ErrorClass::TargetBusy | ErrorClass::Internal => "the target is busy; retrying",
            _ if recoverable => "the receiver failed; retrying",
            _ => "the receiver refused: see its log",
        },
        SendError::Protocol { .. } => "the receiver broke the protocol: check both versions",
        SendError::Integrity { .. } => "data kept arriving corrupted; retrying",
        SendError::Internal(_) => "an internal failure of the sender: see its log",
        SendError::Group(_) => {
            "a consistency group has at most 16 VMs, one interval and one sender: fix its members"
        }
        #[allow(unreachable_patterns)]
        _ => {
            if recoverable {
                "retrying"
            } else {
                "not retried"
            }
        }
    };
        Classified {
            class: e.class(),
            recoverable,
            advice,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Classified;

    #[test]
    fn refusals_are_final_and_busy_targets_are_retried() {
        let remote = |class| SendError::Remote {
            peer: "rx".into(),
            class,
            message: "m".into(),
        };
        for c in [
            ErrorClass::Unauthorized,
            ErrorClass::NotFound,
            ErrorClass::InvalidState,
            ErrorClass::VersionMismatch,
            ErrorClass::DiskSetChanged,
        ] {
            assert!(!remote(c).verdict().recoverable, "{c:?}");
        }
        for c in [ErrorClass::TargetBusy, ErrorClass::TargetFull] {
            let k = remote(c).verdict();
            assert!(k.recoverable, "{c:?}");
            assert!(k.advice.contains("retrying"));
        }
        let net = SendError::Connection {
            peer: "rx".into(),
            source: quinn::ConnectionError::TimedOut,
        };
        assert_eq!(
            net.verdict(),
            Classified {
                class: "network",
                recoverable: true,
                advice: "the receiver is unreachable or the link failed; retrying"
            }
        );
        assert!(!SendError::Resolve("nowhere:1".into()).verdict().recoverable);
    }
}

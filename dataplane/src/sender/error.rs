//! Errors of the sender, each knowing whether a retry can help.

use vdrep_proto::wire::ErrorClass;

use crate::disk::DiskError;
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
}

impl SendError {
    /// Recoverable errors are retried until `--give-up-after`; the others stop at once
    /// (authentication, authorisation, broken disks, invalid replica state).
    pub fn is_recoverable(&self) -> bool {
        match self {
            SendError::Disk(e) => e.is_recoverable(),
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
                    let code: u64 = c.error_code.into();
                    !(code == 1 || code == 2)
                }
                quinn::ConnectionError::VersionMismatch => false,
                _ => true,
            },
            SendError::Frame { source, .. } => source.is_recoverable(),
            SendError::Remote { class, .. } => class.is_recoverable(),
            SendError::Integrity { .. } => true,
            SendError::Internal(_) => false,
        }
    }

    /// The receiver closed the connection because it serves as many connections as it may
    /// (`receiver::limits::BUSY_CLOSE_CODE`): retried, and a Warning, not a fault.
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
                if u64::from(c.error_code) == u64::from(crate::receiver::limits::BUSY_CLOSE_CODE)
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
        }
    }
}

//! What can go wrong talking QMP, and whether trying again later can help.

use std::path::PathBuf;

/// An error of the QMP client.
///
/// Every variant knows whether it is **transient** ([`QmpError::is_transient`]: the socket is
/// gone or slow, so the sender retries on its schedule and reports Warning) or **permanent**
/// (qemu understood and refused, or the peer does not speak QMP: retrying the same request
/// cannot help, so the disk's protection needs an operator).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The monitor socket could not be reached (qemu not running, wrong path, no permission).
    #[error(
        "QMP {path}: cannot connect: {source} (is qemu running with a QMP monitor on this socket?)"
    )]
    Connect {
        /// The monitor socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed: qemu closed it, exited or the connection broke.
    #[error("QMP {path}: connection lost: {source}")]
    Io {
        /// The monitor socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// qemu closed the connection (end of stream).
    #[error("QMP {path}: qemu closed the monitor connection")]
    Closed {
        /// The monitor socket.
        path: PathBuf,
    },
    /// No answer within the client's timeout. The connection's state is unknown afterwards;
    /// a late answer to this command is recognised by its id and dropped.
    #[error("QMP {path}: no answer to {command} within {timeout_ms} ms")]
    Timeout {
        /// The monitor socket.
        path: PathBuf,
        /// The command that got no answer.
        command: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The peer sent something that is not QMP (bad JSON, no greeting, an over-long line).
    #[error("QMP {path}: protocol error: {detail}")]
    Protocol {
        /// The monitor socket.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// qemu refused the command (`{"error": {"class", "desc"}}`): wrong arguments, unknown
    /// node, an operation the image does not support.
    #[error("QMP command {command} refused by qemu: {class}: {desc}")]
    Command {
        /// The command qemu refused.
        command: String,
        /// qemu's error class (`GenericError`, `DeviceNotFound`, `CommandNotFound`, ...).
        class: String,
        /// qemu's human-readable description.
        desc: String,
    },
    /// qemu answered, but not in the shape this client expects for the command.
    #[error("QMP command {command}: unexpected answer: {detail}")]
    Decode {
        /// The command.
        command: String,
        /// The decoding error.
        detail: String,
    },
    /// A wait for qemu to finish an asynchronous step (a job going away, an export closing)
    /// ran out of attempts.
    #[error("QMP {path}: {what} did not happen within {waited_ms} ms")]
    WaitExpired {
        /// The monitor socket.
        path: PathBuf,
        /// What was awaited.
        what: String,
        /// How long the client waited.
        waited_ms: u64,
    },
}

impl QmpError {
    /// True when the error says nothing about the request itself: the connection is gone or
    /// slow, and the same request may succeed on a new connection later.
    pub fn is_transient(&self) -> bool {
        match self {
            QmpError::Connect { .. }
            | QmpError::Io { .. }
            | QmpError::Closed { .. }
            | QmpError::Timeout { .. }
            | QmpError::WaitExpired { .. } => true,
            QmpError::Protocol { .. } | QmpError::Command { .. } | QmpError::Decode { .. } => false,
        }
    }

    /// qemu's error class when qemu refused the command.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

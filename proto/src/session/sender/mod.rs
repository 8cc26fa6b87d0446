//! The sender's side of the protocol: one [`SenderControl`] per control stream, one
//! [`SenderDisk`] per disk on a connection (open, copy or resume, commit, cycles, the resync
//! exchange: which request the disk's state allows and which answer it expects) and one
//! [`BatchSender`] per data stream. The sender decides *what* to replicate (plans, cycles,
//! resync comparisons live in `vdrep::sender`); these sessions own *how it is said*: the
//! hello and the version, request ids, which answer each request expects and what a batch
//! result means for progress and resends.

mod batch;
mod control;
mod disk;
mod passes;
mod resume;

pub use batch::{BatchInFlight, BatchSender, ExtentFrame, Settled, BATCH_SOURCE_BYTES};
pub use control::{SenderControl, SenderState};
pub use disk::{expected_hashes, DiskEvent, DiskState, OpenedDisk, SenderDisk, ZeroBlocks};
pub use passes::{PassVerdict, Passes, MAX_PASSES};
pub use resume::Resume;

use crate::wire::ErrorClass;

/// Why a sender session refused what it was fed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The receiver refused the request; its class decides whether to retry.
    #[error("{}: {message}", class.as_str())]
    Refused {
        /// Classification.
        class: ErrorClass,
        /// The receiver's reason.
        message: String,
    },
    /// The receiver broke the protocol (a malformed frame, an answer to another request).
    #[error("{0}")]
    Protocol(String),
    /// The session was driven out of order (a request while another is pending): a bug of
    /// the driver, not of the peer.
    #[error("{0}")]
    Misuse(String),
}

impl SessionError {
    /// Whether the attempt may succeed if made again later (on the retry schedule): only a
    /// refusal whose class says so. A protocol violation or a misuse is permanent — the
    /// same peer or the same driver would do it again.
    pub fn is_transient(&self) -> bool {
        match self {
            SessionError::Refused { class, .. } => class.recovery().is_transient(),
            SessionError::Protocol(_) | SessionError::Misuse(_) => false,
        }
    }
}

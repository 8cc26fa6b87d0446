//! The sender's side of the protocol: one [`SenderControl`] per control stream and one
//! [`BatchSender`] per data stream. The sender decides *what* to replicate (plans, cycles,
//! resync comparisons live in `vdrep::sender`); these sessions own *how it is said*: the
//! hello and the version, request ids, which answer each request expects and what a batch
//! result means for progress and resends.

mod batch;
mod control;
mod passes;

pub use batch::{BatchInFlight, BatchSender, ExtentFrame, Settled, BATCH_SOURCE_BYTES};
pub use control::{SenderControl, SenderState};
pub use passes::{PassVerdict, Passes, MAX_PASSES};

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

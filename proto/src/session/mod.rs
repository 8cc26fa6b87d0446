//! The vdrep protocol as deterministic state machines, one per role (quinn-proto / rustls
//! style): a session is fed the frames its peer sent and the completions of the work it asked
//! for, and answers with what to send, what to perform on the store or the source, and what
//! to report. It does no IO, reads no clock and spawns nothing, so every protocol case —
//! refusals, resends, resume, hostile frames — runs in a unit test without a socket
//! (`session/tests`), and the driver in `vdrep` (`receiver/`, `sender/`) only moves bytes.
//!
//! - [`receiver`]: one [`ReceiverSession`] per connection (its authorised VMs, its open disks
//!   and handles, the state of each control stream) and one [`BatchReceiver`] per data
//!   stream (extent validation before any hashing or allocation, the batch result).
//! - [`sender`]: one [`SenderControl`] per control stream (hello, version, request ids,
//!   answers matched to their request) and one [`BatchSender`] per data stream (what a
//!   batch carried, and what its result acknowledges or asks to resend).
//!
//! Every step a session returns is `#[must_use]`: dropping one would lose an answer or a
//! write. The frames and their limits are in [`crate::wire`]; `proto/WIRE.md` specifies the
//! protocol with the states and transitions of these sessions.

mod auth;
pub mod receiver;
pub mod sender;

#[cfg(test)]
mod tests;

pub use auth::Authorizations;
pub use receiver::{BatchReceiver, ReceiverSession};
pub use sender::{BatchSender, SenderControl};

use crate::wire::ErrorClass;

/// Identifies one QUIC stream of a connection to a session; the driver chooses the values
/// (the QUIC stream id serves), the session only tells streams apart.
pub type StreamId = u64;

/// A refusal as it travels on the wire: the class decides whether the peer retries
/// ([`ErrorClass::recovery`]), the message tells the operator what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Classification.
    pub class: ErrorClass,
    /// Human-readable reason.
    pub message: String,
}

impl Refusal {
    /// A refusal of class `class`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Refusal {
            class,
            message: message.into(),
        }
    }

    /// Whether this refusal ends the stream it is sent on: after a protocol violation or a
    /// failed version negotiation nothing more on the stream can be trusted.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.class,
            ErrorClass::Protocol | ErrorClass::VersionMismatch
        )
    }
}

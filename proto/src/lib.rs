//! Sans-IO core of vdrep: the on-disk record formats (VHD, VHDX, [MS-HRL]), the wire frames
//! ([`wire`], specified in `proto/WIRE.md`) and the protocol itself as sender and receiver
//! session state machines ([`session`]). Nothing here does IO or reads a clock, so every
//! decoder can be fuzzed and every state machine driven deterministically in memory (the
//! quinn-proto / rustls model).
//!
//! Decoders take byte slices and return typed structures or a [`FormatError`] that says which
//! structure, at which offset inside the buffer, and what is wrong; the IO layer adds the file
//! name and the absolute offset. No decoder panics on any input.

pub mod error;
pub mod formats;
pub mod guid;
pub mod job;
#[cfg(test)]
mod mutate;
pub mod ranges;
pub mod recovery;
pub mod session;
pub mod wire;

pub use error::FormatError;
pub use guid::Guid;
pub use ranges::RangeSet;
pub use recovery::Recovery;

//! The NBD client: read and trim ranges and query block status (allocation, qemu dirty bitmaps) of
//! an export over a unix socket, written against NBD's protocol document and tested against
//! qemu's server (and against hostile byte streams, `hostile_tests`).

mod client;
mod error;
mod handshake;
#[cfg(test)]
mod hostile_tests;
mod reads;
mod trim;
#[cfg(test)]
mod trim_tests;
pub mod wire;

pub use client::{is_timeout, Extent, NbdClient, MAX_READ_REQUEST};
pub use error::NbdError;
pub use reads::ReadQueue;
pub use trim::MAX_TRIM_REQUEST;

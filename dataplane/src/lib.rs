//! vdrep's data plane: everything that touches files, sockets and clocks.
//!
//! - [`io`]: positional reads behind one trait (pread today, io_uring where it pays), with a
//!   fault-injecting backend for tests.
//! - [`disk`]: virtual-disk readers for raw, VHD and VHDX images and differencing chains,
//!   built on the sans-IO structures of `vdrep-proto`.
//! - [`hrl`]: Hyper-V Replica Log reader, writer, chains and coalescing.
//! - [`digest`]: the whole-disk BLAKE3 digest of a recovery point (sender and failover).
//! - [`tls`]: certificates and the mutual-TLS configuration of the QUIC transport.
//! - [`jobs`]: enable protection, initial replication, finalize and test failover jobs.
//! - [`cli`]: the `vdrep` command line.

pub mod cli;
/// The git commit this binary was built from (`dataplane/build.rs`; "unknown" outside a git
/// checkout): `vdrep_build_info` names it.
pub const BUILD_COMMIT: &str = env!("VDREP_COMMIT");
pub mod clock;
pub mod codec;
pub mod cpu;
pub mod demo;
pub mod digest;
pub mod disk;
pub mod error;
pub mod health;
pub mod hrl;
pub mod io;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod receiver;
pub mod retry;
pub mod secret;
pub mod sender;
pub mod sidecar;
pub mod signals;
pub mod throttle;
pub mod tls;
pub mod tracking;
pub mod transport;

// The stores live in their own crate, below the roles (no QUIC, no async runtime); their
// modules keep their paths here.
pub use vdrep_store::{jobs, layout, parts, resync, sink};

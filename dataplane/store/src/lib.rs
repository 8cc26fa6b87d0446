//! vdrep's replica stores, below the two roles (DESIGN: formats and protocol → sources and
//! stores → send/receive → control → CLI). Needs no QUIC and no async runtime: the receiver
//! calls the stores from blocking tasks.
//!
//! - [`sink`]: the store traits, documented as a numbered lifecycle, the lifecycle itself
//!   written once ([`sink::lifecycle`]), and the backends: [`sink::local`] (a directory),
//!   [`sink::azure`] (page blobs), [`sink::fault`] (fault injection and the durability
//!   model crash tests run on).
//! - [`layout`]: the replica's on-disk form (a fixed VHD rounded to whole MiB, the footer).
//! - [`resync`]: the hash tree of a resynchronisation and the replica's durable index of it,
//!   kept by the store beside the replica.
//! - [`clock`]: the host's clocks, read only here (`vdrep::clock` re-exports them).
//! - [`jobs`]: the jobs of a VM, kept where its protection lives (the store).
//!
//! The `vdrep` crate re-exports these modules under the same names (`vdrep::sink`, …).

pub mod clock;
pub mod jobs;
pub mod layout;
pub mod parts;
pub mod resync;
pub mod sink;

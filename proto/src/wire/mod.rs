//! The vdrep wire protocol, sans-IO: frames, their codecs and version negotiation.
//!
//! One QUIC connection per sender. The sender opens one bidirectional **control stream**
//! first (hello, disk open, commit) and then any number of bidirectional **data streams**,
//! each carrying one batch of extents for one disk and answered by one batch result. Every
//! frame is `type: u8, length: u32 LE, body`; an extent frame's body is a fixed header
//! followed by its payload, so the sender can hand header and payload to the socket as
//! separate buffers without copying the payload.
//!
//! Every length read from the network is checked against a limit before anything is
//! allocated; decoders never panic (see the property tests).

mod codec;
pub mod job;
mod msg;

pub use codec::{decode_frame, encode_frame, FrameHeader, FRAME_HEADER_LEN};
pub use job::{Job, JobError, JobKind, JobState, Step, MAX_JOB_STEPS};
pub use msg::*;

/// The protocol version this build speaks. 2 added [`ExtentOp::WriteSparse`], 3
/// [`ExtentOp::WritePacked`], 4 paged progress ([`Control::ProgressRequest`]), 5 the VM's
/// recovery points ([`Control::CommitPoint`]), 6 the extent hash over page hashes
/// ([`ExtentHashing::Pages`]).
pub const PROTOCOL_VERSION: u16 = 6;
/// The first version whose extent hash is BLAKE3 over the hashes of the extent's 4 KiB pages
/// ([`ExtentHashing::Pages`]): the receiver hashes each byte once, for the check and for its
/// resync index alike.
pub const PAGE_HASH_VERSION: u16 = 6;
/// The first version with VM recovery points ([`Control::CommitPoint`]): with an older peer
/// a sender commits per-disk points only.
pub const VM_POINTS_VERSION: u16 = 5;
/// The first version whose `OpenDisk` may carry the VM's disk set ([`Control::OpenDisk`]'s
/// `vm_disks`), which the receiver checks against the store's disks of the VM.
pub const DISK_SET_VERSION: u16 = 5;
/// The first version whose progress travels in pages of [`PROGRESS_PAGE`] ranges: before it,
/// progress of more than one frame's worth cannot cross, and the receiver coarsens it to
/// [`V3_PROGRESS_RANGES`] (a subset of what is durable: the sender sends the rest again).
pub const PAGED_PROGRESS_VERSION: u16 = 4;
/// Most ranges a receiver puts in a `DiskOpened`/`CycleOpened` for a peer older than
/// [`PAGED_PROGRESS_VERSION`]: the frame stays under [`MAX_CONTROL_BODY`] (65,534 would).
pub const V3_PROGRESS_RANGES: usize = 65_000;
/// The oldest version this build still accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// ALPN token of the protocol.
pub const ALPN: &[u8] = b"vdrep/1";
/// Largest control frame body.
pub const MAX_CONTROL_BODY: u32 = 1 << 20;
/// Largest uncompressed extent: one Azure Put Page.
pub const MAX_EXTENT_LEN: u32 = 4 << 20;
/// Largest clear: clears carry no payload, so they may span far more than a write.
pub const MAX_CLEAR_LEN: u32 = 1 << 30;
/// Largest extent payload on the wire (compression may expand incompressible data slightly,
/// but the sender stores such extents raw, so the payload never exceeds the extent).
pub const MAX_EXTENT_PAYLOAD: u32 = MAX_EXTENT_LEN;
/// Longest string field (names, messages).
pub const MAX_STRING: usize = 4096;

/// Node sizes of the resynchronisation hash tree, top level first: 1 GiB → 16 MiB → 256 KiB
/// → 4 KiB pages. Each node's children are the [`RESYNC_FANOUT`] nodes of the next level
/// inside it; a comparison descends only where a node differs, so hash traffic follows the
/// number of differing pages, not the disk size (see `vdrep::resync`).
pub const RESYNC_NODE_SIZES: [u64; 4] = [1 << 30, 1 << 24, 1 << 18, 1 << 12];
/// Children per node of the resynchronisation tree.
pub const RESYNC_FANOUT: u64 = 64;

/// What an extent header's `hash` is the hash of (WIRE.md §5), by the version of the stream
/// that opened the extent's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentHashing {
    /// Versions 1 to 5: BLAKE3 of the extent's bytes.
    Whole,
    /// Version 6 on: the bytes are cut at every multiple of [`RESYNC_PAGE`] of the disk
    /// (the first and the last piece may be shorter), each piece is hashed with BLAKE3, and
    /// the extent's hash is BLAKE3 of the pieces' 32-byte hashes in order. The whole pages'
    /// hashes are the resync tree's leaves (§6).
    Pages,
}

impl ExtentHashing {
    /// The hashing of a disk opened on a stream of `version`.
    pub fn of_version(version: u16) -> Self {
        if version >= PAGE_HASH_VERSION {
            ExtentHashing::Pages
        } else {
            ExtentHashing::Whole
        }
    }
}

/// The resync tree's page (its leaves, [`RESYNC_NODE_SIZES`]' last), where version 6 cuts an
/// extent for its hash ([`ExtentHashing::Pages`]).
pub const RESYNC_PAGE: u64 = RESYNC_NODE_SIZES[RESYNC_NODE_SIZES.len() - 1];

/// Picks the version both sides speak, or `None` when the ranges do not overlap.
pub fn negotiate(peer_min: u16, peer_max: u16) -> Option<u16> {
    let hi = peer_max.min(PROTOCOL_VERSION);
    let lo = peer_min.max(MIN_PROTOCOL_VERSION);
    (hi >= lo).then_some(hi)
}

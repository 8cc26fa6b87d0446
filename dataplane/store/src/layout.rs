//! The Azure page-blob layout of a replica, shared by `vdrep convert`, the local page-blob
//! store and the Azure sink: the disk's bytes, zero-padded to a multiple of 1 MiB (Azure only
//! accepts fixed VHDs of such sizes), then a 512-byte fixed-VHD footer as Hyper-V writes it.

use std::time::{SystemTime, UNIX_EPOCH};

use vdrep_proto::formats::vhd::{footer::VHD_EPOCH_UNIX, Footer, FOOTER_SIZE};
use vdrep_proto::Guid;

/// Azure's granularity for fixed-VHD virtual sizes.
pub const MIB: u64 = 1 << 20;
/// Largest page blob Azure allows (8 TiB), footer included.
pub const MAX_BLOB: u64 = 8 << 40;

/// The virtual size of the replica of a disk of `size` bytes: rounded up to 1 MiB.
pub fn replica_virtual_size(size: u64) -> u64 {
    size.div_ceil(MIB) * MIB
}

/// Total bytes of the replica file or blob: rounded size plus the footer.
pub fn replica_file_size(size: u64) -> u64 {
    replica_virtual_size(size) + FOOTER_SIZE as u64
}

/// The footer for the replica of a disk of `size` bytes. Its current size is the rounded
/// size, so qemu, libvhdi and Azure all read the same virtual disk.
pub fn replica_footer(size: u64, unique_id: Guid, timestamp: u32) -> [u8; FOOTER_SIZE] {
    Footer::hyperv_fixed(replica_virtual_size(size), unique_id, timestamp).encode()
}

/// Seconds since the VHD epoch for `now`, saturating.
pub fn vhd_timestamp(now: SystemTime) -> u32 {
    let unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    unix.saturating_sub(VHD_EPOCH_UNIX).min(u32::MAX as u64) as u32
}

/// A fresh random GUID.
pub fn random_guid() -> Guid {
    Guid::v4_from_bytes(rand::random())
}

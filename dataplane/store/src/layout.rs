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

/// Largest disk a replica holds: its size rounded up to 1 MiB plus the 512-byte footer must
/// fit in [`MAX_BLOB`], so 8 TiB − 1 MiB. Sizes come from the wire (`OpenDisk`) and from
/// state files, so every size is checked against this with [`check_disk_size`] before any
/// other arithmetic on it.
pub const MAX_DISK: u64 = MAX_BLOB - MIB;

/// Refuses a disk size a replica cannot hold (0, or above [`MAX_DISK`]), with the reason.
/// Pure comparisons: no size, however large, can wrap here (a size near 2^64 rounded up to
/// 1 MiB used to wrap to a tiny replica that passed the 8 TiB check).
pub fn check_disk_size(size: u64) -> Result<(), String> {
    if size == 0 || size > MAX_DISK {
        return Err(format!(
            "disk size {size} bytes: replicas hold 1 byte up to {MAX_DISK} bytes (8 TiB − 1 MiB: \
             the 8 TiB page blob limit, rounded to 1 MiB, footer included)"
        ));
    }
    Ok(())
}

/// The virtual size of the replica of a disk of `size` bytes: rounded up to 1 MiB.
/// Saturates instead of wrapping, so a size above [`MAX_DISK`] that reached here by mistake
/// yields a size every limit refuses, never a small one.
pub fn replica_virtual_size(size: u64) -> u64 {
    size.div_ceil(MIB).saturating_mul(MIB)
}

/// Total bytes of the replica file or blob: rounded size plus the footer (saturating).
pub fn replica_file_size(size: u64) -> u64 {
    replica_virtual_size(size).saturating_add(FOOTER_SIZE as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_wrap_when_rounded_to_a_mib_are_refused_and_never_round_small() {
        for size in [
            u64::MAX - MIB + 2, // 2^64 − 2^20 + 1, the first size that wrapped
            u64::MAX - 4095,
            u64::MAX,
        ] {
            let e = check_disk_size(size).expect_err("a wrapping size must be refused");
            assert!(e.contains("8 TiB"), "{e}");
            assert_eq!(replica_virtual_size(size), u64::MAX);
            assert_eq!(replica_file_size(size), u64::MAX);
            assert!(replica_file_size(size) > MAX_BLOB);
        }
    }

    #[test]
    fn the_largest_disk_fills_a_page_blob_exactly_and_one_byte_more_is_refused() {
        assert_eq!(check_disk_size(MAX_DISK), Ok(()));
        assert_eq!(replica_file_size(MAX_DISK), MAX_DISK + FOOTER_SIZE as u64);
        assert!(replica_file_size(MAX_DISK) <= MAX_BLOB);
        assert!(check_disk_size(MAX_DISK + 1).is_err());
        assert!(replica_file_size(MAX_DISK + 1) > MAX_BLOB);
        assert!(check_disk_size(0).is_err());
        assert_eq!(check_disk_size(1), Ok(()));
    }
}

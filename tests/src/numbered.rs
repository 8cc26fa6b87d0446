//! Numbered 4 KiB writes spread round-robin over a VM's (or group's) disks: the strict-order
//! writer of the recovery-point tests. Write `k` goes to disk `(k-1) % disks` at slot
//! `(k-1) / disks` and fills its slot with `MAGIC` and `k`, so a disk image says which writes
//! it holds, and that each is whole and in its place.

use std::path::{Path, PathBuf};

/// Bytes per write (one slot).
pub const SLOT: u64 = 4096;

/// One test's writes: its magic (so a stray image is never mistaken for one) and its disks.
#[derive(Debug, Clone, Copy)]
pub struct Numbered {
    /// Marks the test's writes.
    pub magic: [u8; 8],
    /// Disks the writes go round.
    pub disks: u64,
}

impl Numbered {
    /// The bytes of write `k`.
    pub fn payload(&self, k: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(SLOT as usize);
        while v.len() < SLOT as usize {
            v.extend_from_slice(&self.magic);
            v.extend_from_slice(&k.to_le_bytes());
        }
        v
    }

    /// Makes write `k` with `vdrep log-write` into its disk of `disks` (each `size` bytes;
    /// the data goes through the file `scratch`).
    pub fn log_write(&self, k: u64, disks: &[PathBuf], size: u64, scratch: &Path) {
        let disk = &disks[((k - 1) % self.disks) as usize];
        let offset = (k - 1) / self.disks * SLOT;
        assert!(offset + SLOT <= size, "the test ran out of slots");
        crate::log_write(disk, offset, &self.payload(k), scratch);
    }

    /// The numbered writes disk `disk`'s bytes hold, each checked to be whole and in its
    /// place (slots the writer never reached hold only the byte `fill`).
    pub fn writes_in(&self, bytes: &[u8], disk: u64, fill: u8) -> Vec<u64> {
        let mut out = Vec::new();
        for (slot, b) in bytes.chunks(SLOT as usize).enumerate() {
            if b.iter().all(|&x| x == fill) {
                continue;
            }
            assert_eq!(
                &b[..8],
                &self.magic,
                "disk {disk} slot {slot}: not a numbered write"
            );
            let k = u64::from_le_bytes(b[8..16].try_into().unwrap());
            assert_eq!(
                b,
                &self.payload(k)[..],
                "disk {disk} slot {slot}: torn write {k}"
            );
            assert_eq!(
                ((k - 1) % self.disks, (k - 1) / self.disks),
                (disk, slot as u64),
                "write {k} is in the wrong place"
            );
            out.push(k);
        }
        out
    }
}

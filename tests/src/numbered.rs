//! Numbered 4 KiB writes spread round-robin over a VM's (or group's) disks: the strict-order
//! writer of the recovery-point tests. Write `k` goes to disk `(k-1) % disks` at slot
//! `(k-1) / disks` and fills its slot with `MAGIC` and `k`, so a disk image says which writes
//! it holds, and that each is whole and in its place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

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

/// The strict-order writer itself: makes writes 1, 2, 3, … of a [`Numbered`] into its disks
/// with `vdrep log-write`, each complete before the next, and records how long the longest
/// call took (a paused switch holds a write up). Shared by threads: a test writes from one
/// while it kills and restarts processes in another.
pub struct Writer {
    numbered: Numbered,
    disks: Vec<PathBuf>,
    size: u64,
    scratch: PathBuf,
    next: AtomicU64,
    longest_ms: AtomicU64,
}

impl Writer {
    /// A writer of `numbered` into `disks` (each `size` bytes), passing each write's data
    /// through the file `scratch`.
    pub fn new(numbered: Numbered, disks: &[PathBuf], size: u64, scratch: PathBuf) -> Writer {
        assert_eq!(disks.len() as u64, numbered.disks, "one path per disk");
        Writer {
            numbered,
            disks: disks.to_vec(),
            size,
            scratch,
            next: AtomicU64::new(1),
            longest_ms: AtomicU64::new(0),
        }
    }

    /// Makes the next write; returns its number.
    pub fn write_one(&self) -> u64 {
        let k = self.next.load(Ordering::SeqCst);
        let t0 = Instant::now();
        self.numbered
            .log_write(k, &self.disks, self.size, &self.scratch);
        self.longest_ms
            .fetch_max(t0.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.next.store(k + 1, Ordering::SeqCst);
        k
    }

    /// Writes made so far.
    pub fn written(&self) -> u64 {
        self.next.load(Ordering::SeqCst) - 1
    }

    /// The longest `vdrep log-write` call so far, in milliseconds.
    pub fn longest_ms(&self) -> u64 {
        self.longest_ms.load(Ordering::SeqCst)
    }

    /// Writes until `stop`.
    pub fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            self.write_one();
        }
    }
}

//! The buffers an open cycle copies its writes into (`super::cycle`), reused: a flush gives
//! them back and the next writes take them again, instead of allocating and freeing
//! `CYCLE_BUFFER` bytes per flush.
//!
//! Why: a cycle's write is buffered until the undo log under it is durable, so every byte
//! of a cycle is copied once into memory the receiver holds until the flush. Allocated
//! afresh per write, a flush's 32 MiB went back to the allocator at once and the blocking
//! threads' heaps returned it to the kernel; on a virtual machine whose host takes freed
//! memory back (free page reporting, the bench machine of session 15) every page of it
//! then costs a fault in the host when touched again — a GiB of new memory per GiB of
//! cycle, which the initial copy (written straight from the received chunks) never pays.
//!
//! Bounded: the free buffers kept are at most [`KEEP`] bytes, process-wide; the buffers in
//! use are the open cycles' own (bounded by their `CYCLE_BUFFER`).

use std::sync::{Mutex, OnceLock};

/// The most bytes of free buffers kept (one disk's full cycle buffer).
pub(super) const KEEP: usize = super::cycle::CYCLE_BUFFER;

/// Free buffers and the capacity they hold together.
pub(super) struct Bufs {
    free: Mutex<(Vec<Vec<u8>>, usize)>,
    keep: usize,
}

impl Bufs {
    pub(super) fn new(keep: usize) -> Bufs {
        Bufs {
            free: Mutex::new((Vec::new(), 0)),
            keep,
        }
    }

    /// The process's buffers.
    pub(super) fn global() -> &'static Bufs {
        static B: OnceLock<Bufs> = OnceLock::new();
        B.get_or_init(|| Bufs::new(KEEP))
    }

    /// The bytes of `parts`, one after the other, in a buffer taken from the free ones
    /// when there is one.
    pub(super) fn copy_of(&self, parts: &[&[u8]]) -> Vec<u8> {
        let len = parts.iter().map(|p| p.len()).sum();
        let mut b = self.take().unwrap_or_default();
        b.clear();
        b.reserve_exact(len);
        for p in parts {
            b.extend_from_slice(p);
        }
        b
    }

    fn take(&self) -> Option<Vec<u8>> {
        let mut f = self.free.lock().ok()?;
        let b = f.0.pop()?;
        f.1 -= b.capacity();
        Some(b)
    }

    /// Keeps `b` for a later [`Bufs::copy_of`], or drops it when [`KEEP`] is reached.
    pub(super) fn give_back(&self, b: Vec<u8>) {
        let cap = b.capacity();
        if cap == 0 {
            return;
        }
        if let Ok(mut f) = self.free.lock() {
            if f.1 + cap <= self.keep {
                f.1 += cap;
                f.0.push(b);
            }
        }
    }

    /// Capacity of the free buffers kept.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.free.lock().map_or(0, |f| f.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_reused_and_the_free_ones_stay_under_the_bound() {
        let bufs = Bufs::new(3 << 16);
        let a = bufs.copy_of(&[b"ab", b"", b"cd"]);
        assert_eq!(a, b"abcd");
        let b = bufs.copy_of(&[&[7u8; 1 << 16]]);
        let at = b.as_ptr();
        bufs.give_back(b);
        // The next copy lands in the same memory, whatever its old contents.
        let c = bufs.copy_of(&[&[1u8; 100], &[2u8; 100]]);
        assert_eq!(c.as_ptr(), at);
        assert_eq!(c.len(), 200);
        assert!(c[..100].iter().all(|&x| x == 1) && c[100..].iter().all(|&x| x == 2));
        bufs.give_back(c);
        for _ in 0..4 {
            bufs.give_back(vec![0u8; 1 << 16]);
        }
        assert!(bufs.held() <= 3 << 16, "kept {} bytes", bufs.held());
        // A larger write grows the buffer it takes.
        let d = bufs.copy_of(&[&[5u8; 1 << 17]]);
        assert_eq!(d.len(), 1 << 17);
        assert!(d.iter().all(|&x| x == 5));
    }
}

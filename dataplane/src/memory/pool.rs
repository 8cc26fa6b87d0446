//! Large payload buffers reused from one extent to the next.
//!
//! [`MMAP_THRESHOLD`](super::MMAP_THRESHOLD) gives every block of 1 MiB or more its own mapping, returned to the
//! kernel when freed: that is what holds the receiver into Azurite under the memory bound
//! (see the module above). The data path allocates one such block per extent — the
//! sender's read buffer (1 MiB reads, up to 4 MiB joined), the receiver's frame body (a
//! 1 MiB raw extent plus its header) and its decompressed extent (4 MiB buffers,
//! `codec::zstd_ctx`) — so every extent's pages were faulted in, zeroed by
//! the kernel and unmapped again when QUIC had them acknowledged: 20 % of a warm unlimited
//! sender's CPU and ~4 % of the receiver's (perf, bench/results/ANALYSIS.md, session 8).
//!
//! The pool keeps buffers of at least [`POOL_MIN`] (64 KiB) that their last user dropped, up to
//! [`MAX_IDLE`] bytes in all, and hands them to the next extent with their pages still
//! mapped. Buffers in use are bounded where they were before (the prepared budget, QUIC's
//! windows); the pool adds at most [`MAX_IDLE`] of idle ones, and a process that stops
//! copying keeps no more than that. Smaller buffers never enter it: the heap arenas reuse
//! them without faults already, and zeroing them costs little.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use bytes::Bytes;

/// Bytes of idle buffers the pool keeps at most: four 4 MiB extents, sixteen 1 MiB ones.
/// In a steady copy buffers come back about as fast as they are taken, so a few suffice.
pub const MAX_IDLE: usize = 16 << 20;

/// The smallest buffer the pool keeps: a 64 KiB extent's (a qemu cycle of scattered
/// blocks reads one per dirty block). The heap reuses smaller and such buffers without
/// faults, but a read's buffer from the heap is zeroed first (`vec![0; len]`): a GiB of
/// 64 KiB extents cost the sender 0.2 CPU-s of `memset` per cycle (session 16, Q).
pub const POOL_MIN: usize = 64 << 10;

/// Idle buffers, and their capacities summed.
struct Idle {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

static IDLE: Mutex<Idle> = Mutex::new(Idle {
    bufs: Vec::new(),
    bytes: 0,
});

fn idle() -> std::sync::MutexGuard<'static, Idle> {
    // The lists stay consistent whatever a panicking holder did: a push or a swap_remove.
    IDLE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An idle buffer with room for `cap` bytes and at most twice that (a larger one would hold
/// pages the extent does not need), the smallest that fits.
fn take(cap: usize) -> Option<Vec<u8>> {
    if cap < POOL_MIN {
        return None;
    }
    let mut st = idle();
    let (i, _) = st
        .bufs
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= cap && b.capacity() / 2 <= cap)
        .min_by_key(|(_, b)| b.capacity())?;
    let b = st.bufs.swap_remove(i);
    st.bytes -= b.capacity();
    Some(b)
}

/// Keeps `b` for reuse if it is large and the pool has room; frees it otherwise.
fn give(b: Vec<u8>) {
    if b.capacity() < POOL_MIN {
        return;
    }
    let mut st = idle();
    if st.bytes + b.capacity() <= MAX_IDLE {
        st.bytes += b.capacity();
        st.bufs.push(b);
    }
    // Otherwise `b` is freed on return, after the guard: parameters drop after locals.
}

/// Bytes of idle buffers the pool holds now (for tests and the memory bound).
pub fn idle_bytes() -> usize {
    idle().bytes
}

/// A buffer that goes back to the pool when dropped. It derefs to a `Vec<u8>`; its
/// capacity never changes through the pool, only its length.
#[derive(Debug, Default)]
pub struct PooledBuf(Vec<u8>);

impl PooledBuf {
    /// An empty buffer with room for at least `cap` bytes, to append to.
    pub fn with_capacity(cap: usize) -> Self {
        match take(cap) {
            Some(mut b) => {
                b.clear();
                PooledBuf(b)
            }
            None => PooledBuf(Vec::with_capacity(cap)),
        }
    }

    /// A buffer of `len` bytes to be overwritten in place (a read's destination). What it
    /// holds before that is unspecified: zeros, or bytes an earlier extent left. Only the
    /// part past an earlier user's length is written here (with zeros), so a reused buffer
    /// costs no pass over its bytes.
    pub fn for_overwrite(len: usize) -> Self {
        match take(len) {
            Some(mut b) => {
                if b.len() >= len {
                    b.truncate(len);
                } else {
                    b.resize(len, 0);
                }
                PooledBuf(b)
            }
            None => PooledBuf(vec![0; len]),
        }
    }

    /// The buffer as shared bytes; the pool gets it back when the last slice is dropped.
    /// Small buffers become plain `Bytes` (they never enter the pool).
    pub fn freeze(mut self) -> Bytes {
        if self.0.capacity() < POOL_MIN {
            return Bytes::from(std::mem::take(&mut self.0));
        }
        Bytes::from_owner(self)
    }
}

impl Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for PooledBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MMAP_THRESHOLD;

    /// The pool is process-wide: tests that count its contents run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn drain() {
        let mut st = idle();
        st.bufs.clear();
        st.bytes = 0;
    }

    #[test]
    fn a_dropped_large_buffer_is_handed_to_the_next_extent_with_its_pages() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        drain();
        let mut a = PooledBuf::for_overwrite(MMAP_THRESHOLD);
        a[7] = 42;
        let ptr = a.as_ptr();
        let bytes = a.freeze();
        let slice = bytes.slice(1..10);
        drop(bytes);
        assert_eq!(idle_bytes(), 0, "a slice still holds the buffer");
        drop(slice);
        assert_eq!(idle_bytes(), MMAP_THRESHOLD);
        // The same allocation comes back, its bytes as the last user left them.
        let b = PooledBuf::for_overwrite(MMAP_THRESHOLD);
        assert_eq!((b.as_ptr(), b.len(), b[7]), (ptr, MMAP_THRESHOLD, 42));
        assert_eq!(idle_bytes(), 0);
        drop(b);
        // Appending starts empty, with the capacity kept.
        let c = PooledBuf::with_capacity(MMAP_THRESHOLD);
        assert_eq!((c.as_ptr(), c.len()), (ptr, 0));
        assert!(c.capacity() >= MMAP_THRESHOLD);
        drop(c);
        drain();
    }

    #[test]
    fn small_buffers_stay_out_and_idle_bytes_are_capped() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        drain();
        drop(PooledBuf::for_overwrite(POOL_MIN - 1).freeze());
        assert_eq!(idle_bytes(), 0);
        // A 64 KiB extent's buffer is kept, and handed back without zeroing.
        let mut e = PooledBuf::for_overwrite(POOL_MIN);
        e[0] = 3;
        drop(e.freeze());
        assert_eq!(idle_bytes(), POOL_MIN);
        assert_eq!(PooledBuf::for_overwrite(POOL_MIN)[0], 3);
        drain();
        let bufs: Vec<_> = (0..MAX_IDLE / MMAP_THRESHOLD + 3)
            .map(|_| PooledBuf::for_overwrite(MMAP_THRESHOLD))
            .collect();
        drop(bufs);
        assert_eq!(idle_bytes(), MAX_IDLE);
        // A buffer more than twice the size asked for is not handed out.
        drain();
        drop(PooledBuf::for_overwrite(4 * MMAP_THRESHOLD));
        let small = PooledBuf::for_overwrite(MMAP_THRESHOLD);
        assert_eq!(small.capacity(), MMAP_THRESHOLD);
        assert_eq!(idle_bytes(), 4 * MMAP_THRESHOLD);
        drop(small);
        drain();
    }

    #[test]
    fn a_reused_buffer_grows_with_zeros_past_its_last_length() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        drain();
        let mut a = PooledBuf::with_capacity(2 * MMAP_THRESHOLD);
        a.extend_from_slice(&vec![9u8; MMAP_THRESHOLD]);
        drop(a);
        let b = PooledBuf::for_overwrite(MMAP_THRESHOLD + 10);
        assert_eq!(b.len(), MMAP_THRESHOLD + 10);
        assert_eq!(b[MMAP_THRESHOLD - 1], 9);
        assert!(b[MMAP_THRESHOLD..].iter().all(|&x| x == 0));
        drop(b);
        drain();
    }
}

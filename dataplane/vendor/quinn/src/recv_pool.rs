//! vdrep: the endpoint's receive buffers, handed to the datagrams they receive.
//!
//! Upstream receives every `recvmmsg` batch into one fixed buffer and copies each message (a
//! GRO batch of up to 64 datagrams) into a new `BytesMut` before decoding it: on a receiver
//! of bulk data that copy touches every byte once more than needed (with the copy of the
//! frame bodies, 11 % of vdrep's receiver at compression level 0 on loopback;
//! `bench/results/ANALYSIS.md`, session 12, C21R). Here each of the batch's message slots is
//! the unused tail of an *arena*, a `BytesMut` of at least 128 KiB ([`MIN_ARENA_SIZE`]); a
//! received message is split off the front of its slot and becomes the datagrams' buffer as
//! it is, so its bytes are next read by the decryption. A slot whose tail is shorter than a
//! message's receive buffer takes a fresh arena; the old one is freed by the allocator when
//! the last datagram or stream chunk carved from it is dropped.
//!
//! **The receive buffer.** Upstream gives each message the largest datagram × 64 GRO
//! segments (1 MiB for vdrep's receiver, which accepts 16 KiB datagrams from a sender on
//! the same host), but Linux merges at most 64 KiB into one message unless `gro_max_size`
//! is raised (and a GSO send is at most one UDP payload). A slot's buffer is therefore
//! 64 KiB ([`USUAL_MSG_SIZE`]) and an arena holds 2 of them. A message that fills its
//! buffer may have been cut short by the kernel (its tail is lost like datagrams dropped on
//! the way, and QUIC sends them again); from then on every buffer is upstream's size.
//!
//! **Memory.** A datagram's stream data, held in quinn's assembler until the application
//! reads it, keeps its whole arena alive, where upstream's copy kept only its message (at
//! most 64 KiB on the links vdrep meets). So the arenas given away and still referenced are
//! counted ([`RecvPool::live_bytes`]): past [`LIVE_LIMIT`] (64 MiB) the pool stops giving its
//! arenas away and copies each message into a buffer of its own size, as upstream does,
//! until enough of them are dropped. The memory held by received data is therefore at most:
//! the slots' own arenas (32 × 128 KiB, of which only the pages written are touched; upstream
//! had one 32 MiB buffer), the live limit plus one arena per slot (at most 32 retire at
//! once), and upstream's bound for the copied messages. A receiver that reads its streams as
//! they arrive holds about the data in flight, in arenas of 2 messages each.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

/// The default bound on the bytes of arenas given away and still referenced.
pub(crate) const LIVE_LIMIT: usize = 64 << 20;

/// The largest message Linux's UDP GRO and GSO make with their default limits
/// (`gro_max_size`, the 16-bit IP length): a message this long may have been truncated.
pub(crate) const USUAL_MSG_SIZE: usize = 64 << 10;

/// The least size of an arena: 2 messages of [`USUAL_MSG_SIZE`]. Larger arenas take fewer
/// allocations but let one datagram still held keep more memory alive: a receiver's peak
/// RSS on the bench's veth link was 46–52 MiB with upstream's copies, 57–60 with arenas of
/// 2 messages, 68–73 with 4, and 108 on loopback with 15 (ANALYSIS.md, session 13). Below
/// the 1 MiB from which vdrep's allocator settings map a block on its own
/// (`dataplane/src/memory/mod.rs`), where every arena would cost an `mmap`, its pages'
/// faults and an `munmap`.
pub(crate) const MIN_ARENA_SIZE: usize = 2 * USUAL_MSG_SIZE;

/// Message slots of a `recvmmsg` batch, each the unused tail of an arena of its own.
pub(crate) struct RecvPool {
    slots: Vec<BytesMut>,
    /// The receive buffer of each slot: [`USUAL_MSG_SIZE`], or `max_msg` once a message
    /// filled it (a kernel that merges more: the rest of that message was cut off, as a
    /// datagram lost on the way, and later ones fit).
    msg_size: usize,
    /// The most a message may take: the largest datagram × the GRO segments per message.
    max_msg: usize,
    /// The size of each slot's arena.
    arenas: Vec<usize>,
    /// An empty handle on every arena a slot has let go of while others still held it,
    /// with its size.
    retired: Vec<(Bytes, usize)>,
    live_limit: usize,
    /// Set by `iovs` while the retired arenas still held exceed `live_limit`.
    copying: bool,
    /// Messages copied (not given their slot's arena) because of the live limit.
    copied: u64,
}

impl RecvPool {
    /// A pool of `slots` message slots for messages of at most `max_msg` bytes.
    pub(crate) fn new(slots: usize, max_msg: usize, live_limit: usize) -> Self {
        let max_msg = max_msg.max(1);
        let msg_size = max_msg.min(USUAL_MSG_SIZE);
        let mut pool = Self {
            slots: Vec::new(),
            arenas: Vec::new(),
            msg_size,
            max_msg,
            retired: Vec::new(),
            live_limit,
            copying: false,
            copied: 0,
        };
        let arena_size = pool.arena_size();
        pool.slots = (0..slots)
            .map(|_| BytesMut::with_capacity(arena_size))
            .collect();
        pool.arenas = vec![arena_size; slots];
        pool
    }

    /// The size of a fresh arena.
    fn arena_size(&self) -> usize {
        (2 * self.msg_size).max(MIN_ARENA_SIZE)
    }

    /// The receive buffers of the next `recvmmsg`: `msg_size` bytes of every slot.
    ///
    /// A slot too short for another message first takes a fresh arena (its old one is
    /// retired: counted while anything else still holds it).
    pub(crate) fn iovs<const N: usize>(&mut self) -> [IoSliceMut<'_>; N] {
        assert!(N <= self.slots.len(), "more buffers asked than slots");
        let arena_size = self.arena_size();
        for (slot, arena) in self.slots[..N].iter_mut().zip(&mut self.arenas) {
            if slot.capacity() < self.msg_size {
                let old = std::mem::replace(slot, BytesMut::with_capacity(arena_size));
                let old_size = std::mem::replace(arena, arena_size);
                // `old` is empty (every message was split off it) and shares the arena
                // with what was split off: frozen, it is a handle that tells when the
                // rest is gone.
                let handle = old.freeze();
                if !handle.is_unique() {
                    self.retired.push((handle, old_size));
                }
            }
        }
        let live = self.live_bytes();
        let copying = live > self.live_limit;
        if copying != self.copying {
            tracing::debug!(
                live,
                limit = self.live_limit,
                copying,
                "receive arenas still held past the limit: messages are copied while so"
            );
        }
        self.copying = copying;
        let msg_size = self.msg_size;
        let mut slots = self.slots.iter_mut();
        std::array::from_fn(|_| {
            let slot = slots.next().expect("N slots checked above");
            let spare: &mut [MaybeUninit<u8>] = &mut slot.spare_capacity_mut()[..msg_size];
            // SAFETY: the kernel only writes into a receive buffer, and `take` exposes only
            // the bytes it reports written; `[MaybeUninit<u8>]` and `[u8]` have the same
            // layout. (tokio's `UdpSocket::recv_buf` hands spare capacity to `recv` alike.)
            let bytes = unsafe { &mut *(spare as *mut [MaybeUninit<u8>] as *mut [u8]) };
            IoSliceMut::new(bytes)
        })
    }

    /// The message of `len` bytes the last receive wrote into slot `i`: its slot's arena
    /// split off, or a copy while the arenas given away exceed the live limit.
    pub(crate) fn take(&mut self, i: usize, len: usize) -> BytesMut {
        let len = len.min(self.msg_size);
        if len == self.msg_size && self.msg_size < self.max_msg {
            // Perhaps cut off: from the next receive on, every slot takes the most a
            // message may be (`iovs` renews the slots now too short).
            self.msg_size = self.max_msg;
        }
        let slot = &mut self.slots[i];
        debug_assert!(slot.is_empty());
        // SAFETY: the receive wrote `len` bytes (at most the spare capacity it was given,
        // see `iovs`) at the start of the slot's spare capacity; the slot is empty, so they
        // are its first `len` bytes.
        unsafe { slot.set_len(len) };
        if self.copying {
            self.copied += 1;
            let copy = BytesMut::from(&slot[..]);
            slot.clear();
            return copy;
        }
        slot.split_to(len)
    }

    /// Bytes of retired arenas that something (a datagram, a stream chunk) still holds;
    /// forgets the others.
    pub(crate) fn live_bytes(&mut self) -> usize {
        self.retired.retain(|(h, _)| !h.is_unique());
        self.retired.iter().map(|(_, size)| size).sum()
    }

    /// Messages copied because of the live limit since the pool was made.
    pub(crate) fn copied(&self) -> u64 {
        self.copied
    }

    /// The receive buffer of each slot.
    #[cfg(test)]
    pub(crate) fn msg_size(&self) -> usize {
        self.msg_size
    }
}

#[cfg(test)]
#[path = "recv_pool_tests.rs"]
mod tests;

//! Reads started ahead of their use: O_DIRECT reads on an io_uring of their own, each into a
//! page-aligned buffer of its own, collected later in any order.
//!
//! A cold source read with O_DIRECT has no kernel read-ahead: a thread that reads 1 MiB and
//! then works on it leaves the device idle while it works, and waits the device's whole
//! latency (5–10 ms per request while the receiver's writeback shares the disk,
//! bench/results/ANALYSIS.md, session 10) for every read. The pipeline's read-ahead stage
//! (`pipeline::readahead`) keeps several reads in flight here instead, and hands the filled
//! buffers to the CPU threads: the bytes go from the device to the buffer that travels to
//! the socket, with no page cache and no copy.
//!
//! Soundness rule, as in [`super::uring`]: the kernel writes a buffer until its completion
//! arrives, so a buffer and the file it is read from stay in the queue until then, and
//! dropping the queue waits for every read in flight. If the ring itself fails with reads in
//! flight, which a valid ring never does, the process aborts.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};

use super::direct::DIRECT_ALIGN;
use crate::memory::PooledBuf;

/// One read in flight or completed.
struct Slot {
    /// Keeps the descriptor open while the kernel reads from it.
    _file: Arc<File>,
    /// The destination; its first `pad` bytes align the read to [`DIRECT_ALIGN`].
    buf: PooledBuf,
    pad: usize,
    len: usize,
    /// The completion's result, once it arrived.
    result: Option<i32>,
}

/// A queue of O_DIRECT reads, each identified by the ticket [`DirectQueue::start`] returned.
pub struct DirectQueue {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    in_flight: usize,
}

impl DirectQueue {
    /// A queue for up to `depth` reads at once.
    pub fn new(depth: u32) -> io::Result<Self> {
        let depth = depth.clamp(1, 256);
        Ok(DirectQueue {
            ring: IoUring::new(depth)?,
            slots: (0..depth).map(|_| None).collect(),
            in_flight: 0,
        })
    }

    /// Reads (started, not collected) the queue holds; at most its depth.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// True if the queue holds no read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts reading `len` bytes at `offset` of `file`, an O_DIRECT descriptor; `offset`
    /// and `len` must be multiples of [`DIRECT_ALIGN`]. Returns the read's ticket, or `None`
    /// when every slot is taken or the read cannot be started (the caller then reads the
    /// range the ordinary way).
    pub fn start(&mut self, file: &Arc<File>, offset: u64, len: usize) -> Option<usize> {
        let align = DIRECT_ALIGN as u64;
        if len == 0
            || len > u32::MAX as usize
            || !offset.is_multiple_of(align)
            || !len.is_multiple_of(DIRECT_ALIGN)
        {
            return None;
        }
        let ticket = self.slots.iter().position(|s| s.is_none())?;
        let mut buf = PooledBuf::for_overwrite(len + DIRECT_ALIGN);
        let pad = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let dest = buf[pad..pad + len].as_mut_ptr();
        let sqe = opcode::Read::new(types::Fd(file.as_raw_fd()), dest, len as u32)
            .offset(offset)
            .build()
            .user_data(ticket as u64);
        // The slot owns the buffer and the file before the kernel sees the request.
        self.slots[ticket] = Some(Slot {
            _file: file.clone(),
            buf,
            pad,
            len,
            result: None,
        });
        // SAFETY: the buffer and the descriptor live in the slot until the completion has
        // been reaped (`finish` and `Drop` wait for it).
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.slots[ticket] = None;
            return None;
        }
        if let Err(e) = self.ring.submit() {
            // Submission failed as a whole: the request may still be queued in the ring;
            // keep the slot so that the completion, if any, finds its buffer.
            tracing::debug!(error = %e, "read-ahead submission failed");
        }
        self.in_flight += 1;
        Some(ticket)
    }

    /// Waits for the read of `ticket` and returns its bytes: `None` if it failed or came
    /// back short (the end of the file, an error), so that the caller reads the range the
    /// ordinary way and reports what that finds.
    pub fn finish(&mut self, ticket: usize) -> Option<Bytes> {
        loop {
            match self.slots.get(ticket)? {
                None => return None,
                Some(slot) if slot.result.is_some() => break,
                Some(_) => self.reap(true),
            }
        }
        let slot = self.slots[ticket].take()?;
        match slot.result {
            Some(n) if n >= 0 && n as usize == slot.len => {
                let (pad, len) = (slot.pad, slot.len);
                Some(slot.buf.freeze().slice(pad..pad + len))
            }
            _ => None,
        }
    }

    /// Records the completions that arrived; with `wait`, waits for at least one first.
    fn reap(&mut self, wait: bool) {
        if wait && self.in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY) => {}
                    _ => {
                        eprintln!("vdrep: io_uring failed with read-ahead in flight ({e}); aborting to keep memory safe");
                        std::process::abort();
                    }
                }
            }
        }
        for cqe in self.ring.completion() {
            if let Some(Some(slot)) = self.slots.get_mut(cqe.user_data() as usize) {
                if slot.result.is_none() {
                    slot.result = Some(cqe.result());
                    self.in_flight -= 1;
                }
            }
        }
    }
}

impl Drop for DirectQueue {
    fn drop(&mut self) {
        while self.in_flight > 0 {
            self.reap(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_come_back_whole_in_any_order_and_short_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(3 << 20) + 8192).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let file = Arc::new(super::super::direct::open_direct(&path).unwrap());
        let mut q = DirectQueue::new(4).unwrap();
        let mib = 1usize << 20;
        let a = q.start(&file, 0, mib).unwrap();
        let b = q.start(&file, mib as u64, mib).unwrap();
        let c = q.start(&file, (3 * mib) as u64, mib).unwrap(); // only 8 KiB left there
        assert_eq!(q.len(), 3);
        assert!(q.start(&file, 5, 4096).is_none(), "unaligned");
        let got_b = q.finish(b).unwrap();
        assert!(got_b[..] == data[mib..2 * mib]);
        assert_eq!(got_b.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert!(q.finish(a).unwrap()[..] == data[..mib]);
        assert!(q.finish(c).is_none(), "a short read is no read-ahead");
        assert!(q.is_empty());
        // A queue dropped with reads in flight waits for them.
        for i in 0..4 {
            q.start(&file, (i * mib) as u64, mib).unwrap();
        }
        assert!(q.start(&file, 0, mib).is_none(), "full");
        drop(q);
    }
}

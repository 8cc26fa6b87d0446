//! The memory half of a cycle's spool (`super::spool`): the drain's reads kept in buffers
//! the process reuses cycle after cycle, up to a bound, instead of written into the spool
//! file; what does not fit goes to the file as before.
//!
//! Why: a spool file is new page cache every cycle — a GiB of dirty data is a GiB of pages
//! the kernel hands out, fills and frees again when the file goes. On a virtual machine
//! whose host takes freed memory back (virtio-balloon free page reporting, as on the bench
//! machine of session 15) every such page faults in the host when first written: writing
//! the spool cost the drain thread 1.8 CPU-s per GiB in `copy_folio_from_iter_atomic`, more
//! than half its time (`bench/results/ANALYSIS.md`, session 15, C). Buffers the process
//! keeps stay backed; a buffer read by the shipping goes back to the pool for the next read.
//!
//! A buffer is given back once the shipping has read all its bytes: a range read a second
//! time (a resend of extents the receiver refused) is refused as a transient error when its
//! buffer went back, as a view refuses a range it gave back to qemu — the next round reads
//! it from a new view. A read in the file is released the same way once read whole (the
//! spool frees its pages: `super::spool`).
//!
//! The bound is process-wide ([`MEMORY_ENV`], MiB; default [`DEFAULT_MEMORY`]): the buffers
//! of every spool and the pool's free ones together. `0` turns the memory half off.

use std::collections::BTreeMap;
use std::io::{Error, ErrorKind};
use std::sync::{Mutex, OnceLock};

/// The environment variable that sets the bound in MiB (`0`: every byte goes to the file).
pub const MEMORY_ENV: &str = "VDREP_QEMU_SPOOL_MEMORY";

/// The default bound: 128 MiB, twice the prepared budget of a pass (`PREPARED_BUDGET`).
pub const DEFAULT_MEMORY: u64 = 128 << 20;

/// The process's bound, read once.
pub fn bound() -> u64 {
    static BOUND: OnceLock<u64> = OnceLock::new();
    *BOUND.get_or_init(|| {
        std::env::var(MEMORY_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_MEMORY, |mib| mib << 20)
    })
}

/// The buffers the process keeps: `held` counts the capacity of every buffer in a slot of
/// any spool and in `free`.
#[derive(Default)]
struct Pool {
    free: Vec<Vec<u8>>,
    held: u64,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// Gives `buf` back to the pool (it stays counted), or drops it when the pool is over
/// `bound`.
fn give_back(buf: Vec<u8>, bound: u64) {
    if let Ok(mut p) = pool().lock() {
        if p.held <= bound {
            p.free.push(buf);
        } else {
            p.held = p.held.saturating_sub(buf.capacity() as u64);
        }
    }
}

/// Where the bytes of one drain read are.
enum Slot {
    /// In memory; `read` bytes of it were read by the shipping.
    Mem { buf: Vec<u8>, read: u64 },
    /// In the spool file; `read` bytes of it were read by the shipping, and `busy` reads of
    /// it are under way (it is released only once none is: no read finds a hole).
    File { read: u64, busy: u32 },
    /// All zero: kept nowhere, read as zeros (as often as asked).
    Zero,
    /// Read whole and given back.
    Gone,
}

/// A spool's drain reads, by their position in the spool file.
pub struct Slots {
    map: Mutex<BTreeMap<u64, (u64, Slot)>>,
    bound: u64,
}

impl Default for Slots {
    fn default() -> Self {
        Slots::with_bound(bound())
    }
}

impl Slots {
    /// Slots that keep at most `bound` bytes of buffers in the process.
    pub fn with_bound(bound: u64) -> Slots {
        Slots {
            map: Mutex::new(BTreeMap::new()),
            bound,
        }
    }

    /// Keeps the drain's read `data` (its bytes go to file position `at`) in memory when
    /// the pool allows, leaving a buffer from the pool (or an empty one) in its place, and
    /// says whether it did; else the caller writes it to the file and calls
    /// [`Slots::in_file`].
    pub fn keep(&self, at: u64, data: &mut Vec<u8>) -> bool {
        if self.bound == 0 {
            return false;
        }
        let len = data.len() as u64;
        let cap = data.capacity() as u64;
        let replacement = {
            let Ok(mut p) = pool().lock() else {
                return false;
            };
            match p.free.pop() {
                Some(b) => {
                    p.held = (p.held + cap).saturating_sub(b.capacity() as u64);
                    b
                }
                None if p.held + cap <= self.bound => {
                    p.held += cap;
                    Vec::new()
                }
                None => return false,
            }
        };
        let buf = std::mem::replace(data, replacement);
        if let Ok(mut m) = self.map.lock() {
            m.insert(at, (len, Slot::Mem { buf, read: 0 }));
            true
        } else {
            // Poisoned: the bytes are gone; nothing reads this spool any more.
            false
        }
    }

    /// Records that the read of `len` bytes at file position `at` is in the file.
    pub fn in_file(&self, at: u64, len: u64) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(at, (len, Slot::File { read: 0, busy: 0 }));
        }
    }

    /// Records that the read of `len` bytes at file position `at` is all zero: neither
    /// kept nor written, and read back as zeros.
    pub fn zeros(&self, at: u64, len: u64) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(at, (len, Slot::Zero));
        }
    }

    /// Fills `buf` with the bytes from file position `at`, from memory or through `file`
    /// (`file(pos, out)` reads the file). A buffer read whole goes back to the pool; a
    /// read's bytes in the file read whole are handed to `release(pos, len)` (the spool
    /// frees their pages) and, like a buffer given back, cannot be read again.
    pub fn read(
        &self,
        at: u64,
        buf: &mut [u8],
        mut file: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
        mut release: impl FnMut(u64, u64),
    ) -> std::io::Result<()> {
        let poisoned = || Error::other("the spool's slots lock is poisoned");
        let mut done = 0usize;
        while done < buf.len() {
            let pos = at + done as u64;
            let mut back = None;
            let (n, from_file) = {
                let mut m = self.map.lock().map_err(|_| poisoned())?;
                let Some((&key, (len, slot))) = m.range_mut(..=pos).next_back() else {
                    return Err(not_drained(pos));
                };
                if pos >= key + *len {
                    return Err(not_drained(pos));
                }
                let n = ((key + *len - pos) as usize).min(buf.len() - done);
                match slot {
                    Slot::Mem { buf: b, read } => {
                        let from = (pos - key) as usize;
                        buf[done..done + n].copy_from_slice(&b[from..from + n]);
                        *read += n as u64;
                        if *read >= *len {
                            if let Slot::Mem { buf: b, .. } = std::mem::replace(slot, Slot::Gone) {
                                back = Some(b);
                            }
                        }
                        (n, false)
                    }
                    Slot::File { busy, .. } => {
                        *busy += 1;
                        (n, true)
                    }
                    Slot::Zero => {
                        buf[done..done + n].fill(0);
                        (n, false)
                    }
                    Slot::Gone => {
                        return Err(Error::new(
                            ErrorKind::Interrupted,
                            format!(
                                "spool position {pos}: read already and given back (a new view reads it)"
                            ),
                        ))
                    }
                }
            };
            if let Some(b) = back {
                give_back(b, self.bound);
            }
            if from_file {
                let r = file(pos, &mut buf[done..done + n]);
                // Counted once the bytes are in hand (a failed read can be tried again), and
                // released once read whole with no other read of it under way.
                let mut gone = None;
                {
                    let mut m = self.map.lock().map_err(|_| poisoned())?;
                    if let Some((&key, (len, slot))) = m.range_mut(..=pos).next_back() {
                        if let Slot::File { read, busy } = slot {
                            *busy = busy.saturating_sub(1);
                            if r.is_ok() {
                                *read += n as u64;
                            }
                            if *read >= *len && *busy == 0 {
                                gone = Some((key, *len));
                                *slot = Slot::Gone;
                            }
                        }
                    }
                }
                if let Some((key, len)) = gone {
                    release(key, len);
                }
                r?;
            }
            done += n;
        }
        Ok(())
    }
}

fn not_drained(pos: u64) -> Error {
    Error::other(format!("spool position {pos} was never drained"))
}

impl Drop for Slots {
    /// The buffers still held go back to the pool.
    fn drop(&mut self) {
        let map = match self.map.get_mut() {
            Ok(m) => std::mem::take(m),
            Err(_) => return,
        };
        for (_, (_, slot)) in map {
            if let Slot::Mem { buf, .. } = slot {
                give_back(buf, self.bound);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_reads_are_served_from_memory_and_the_rest_from_the_file_each_once() {
        let slots = Slots::with_bound(1 << 20);
        let mut a = vec![1u8; 4096];
        assert!(slots.keep(0, &mut a));
        assert!(a.is_empty(), "the drain gets a buffer back, not the bytes");
        slots.in_file(4096, 4096);
        slots.in_file(8192, 4096);
        let mut files = Vec::new();
        let mut released = Vec::new();
        let mut out = vec![0u8; 8192];
        let mut rel = |pos, len| released.push((pos, len));
        slots
            .read(
                0,
                &mut out,
                |pos, b| {
                    files.push((pos, b.len()));
                    b.fill(2);
                    Ok(())
                },
                &mut rel,
            )
            .unwrap();
        assert!(out[..4096].iter().all(|&x| x == 1));
        assert!(out[4096..].iter().all(|&x| x == 2));
        assert_eq!(files, vec![(4096, 4096)]);
        // A failed file read counts nothing: the range is read again, and released once
        // read whole, in two halves.
        let fail = |_, _: &mut [u8]| Err(Error::other("EIO"));
        assert!(slots.read(8192, &mut out[..2048], fail, &mut rel).is_err());
        slots
            .read(8192, &mut out[..2048], |_, _| Ok(()), &mut rel)
            .unwrap();
        slots
            .read(10240, &mut out[..2048], |_, _| Ok(()), &mut rel)
            .unwrap();
        assert_eq!(released, vec![(4096, 4096), (8192, 4096)]);
        // The memory read was given back and the file's reads released: a second read of
        // either is refused, transiently (a new view reads it).
        for at in [0, 4096, 8192] {
            let e = slots
                .read(at, &mut out[..10], |_, _| Ok(()), |_, _| {})
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Interrupted);
        }
        // Half a buffer read keeps it; the other half gives it back.
        let mut c = vec![3u8; 4096];
        assert!(slots.keep(16384, &mut c));
        slots
            .read(16384, &mut out[..2048], |_, _| Ok(()), |_, _| {})
            .unwrap();
        slots
            .read(18432, &mut out[..2048], |_, _| Ok(()), |_, _| {})
            .unwrap();
        assert!(slots
            .read(16384, &mut out[..1], |_, _| Ok(()), |_, _| {})
            .is_err());
        // Never drained: an error, not zeros.
        assert!(slots
            .read(1 << 30, &mut out[..1], |_, _| Ok(()), |_, _| {})
            .is_err());
    }

    #[test]
    fn zero_reads_come_back_as_zeros_without_the_file_and_as_often_as_asked() {
        let slots = Slots::with_bound(1 << 20);
        slots.zeros(0, 4096);
        let mut a = vec![9u8; 4096];
        assert!(slots.keep(4096, &mut a));
        let mut out = vec![7u8; 8192];
        slots
            .read(
                0,
                &mut out,
                |_, _| panic!("nothing is in the file"),
                |_, _| {},
            )
            .unwrap();
        assert!(out[..4096].iter().all(|&x| x == 0));
        assert!(out[4096..].iter().all(|&x| x == 9));
        out.fill(7);
        slots
            .read(
                1024,
                &mut out[..2048],
                |_, _| panic!("nothing is in the file"),
                |_, _| {},
            )
            .unwrap();
        assert!(out[..2048].iter().all(|&x| x == 0));
    }

    #[test]
    fn a_file_read_is_released_only_once_no_other_read_of_it_is_under_way() {
        // A resend may read a range again while its first read is still in the file: the
        // second read completing the count must not free the pages under the first.
        let slots = Slots::with_bound(0);
        slots.in_file(0, 4096);
        let inner = std::cell::RefCell::new(Vec::new());
        let mut outer = Vec::new();
        let mut out = vec![0u8; 4096];
        slots
            .read(
                0,
                &mut out,
                |_, b| {
                    let mut again = vec![0u8; 4096];
                    slots
                        .read(
                            0,
                            &mut again,
                            |_, _| Ok(()),
                            |p, l| inner.borrow_mut().push((p, l)),
                        )
                        .unwrap();
                    assert!(inner.borrow().is_empty(), "freed under a read in progress");
                    b.fill(5);
                    Ok(())
                },
                |p, l| outer.push((p, l)),
            )
            .unwrap();
        assert_eq!(outer, vec![(0, 4096)], "released when the last read ended");
        assert!(out.iter().all(|&x| x == 5));
        assert!(slots.read(0, &mut out, |_, _| Ok(()), |_, _| {}).is_err());
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let slots = Slots::with_bound(0);
        let mut a = vec![1u8; 4096];
        assert!(!slots.keep(0, &mut a));
        assert_eq!(a.len(), 4096, "the bytes stay with the caller for the file");
    }
}

//! One byte budget for the prepared extents of every disk a sender copies at once.
//!
//! Each disk pass has its own queue between the CPU threads and the streams, bounded in
//! items; with several VMs copying at once, per-pass bounds add up: eight VMs on a slow link
//! held 377 MiB (sender peak RSS, 100 Mbit/s, 8 × 512 MiB), past the 256 MiB every process
//! must stay under whatever it copies. A ticket for an extent's payload is taken before the
//! extent enters its queue and given back when the stream has handed it to QUIC (whose own
//! buffer the send window bounds), so the bytes waiting between compression and the link
//! stay within one budget however many disks, VMs and streams there are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes of prepared payload a sender holds at most, across all its disks.
pub const PREPARED_BUDGET: u64 = 64 << 20;

/// The budget while the compression controller warms up ([`super::WARMUP`]): the CPU
/// threads fill any budget within milliseconds, at the configured level, before the
/// controller has seen the link; a small one keeps that first batch small.
pub const WARMUP_BUDGET: u64 = 4 << 20;

/// How often a thread waiting for the budget checks whether its pass was cancelled.
const RECHECK: Duration = Duration::from_millis(100);

/// The budget; shared by the disks of a run.
#[derive(Debug)]
pub struct MemoryBudget {
    total: AtomicU64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes taken from a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl MemoryBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            total: AtomicU64::new(total),
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        // A counter: consistent after every statement.
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `bytes` fit (an item larger than the whole budget waits for an empty
    /// budget, then takes all of it) and takes them. Returns `None` once `cancelled` says
    /// so, so a pass that was given up does not wait on other disks' extents.
    pub fn acquire(self: &Arc<Self>, bytes: u64, cancelled: impl Fn() -> bool) -> Option<Ticket> {
        let mut used = self.lock();
        let fits = |used: u64| {
            let total = self.total.load(Ordering::Relaxed);
            let bytes = bytes.min(total);
            (used + bytes <= total).then_some(bytes)
        };
        let bytes = loop {
            if let Some(b) = fits(*used) {
                break b;
            }
            if cancelled() {
                return None;
            }
            used = self
                .freed
                .wait_timeout(used, RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        *used += bytes;
        Some(Ticket {
            budget: self.clone(),
            bytes,
        })
    }

    /// Changes the budget; tickets already taken stay valid (a smaller budget then waits
    /// until enough of them are given back).
    pub fn set_total(&self, total: u64) {
        let _used = self.lock();
        self.total.store(total, Ordering::Relaxed);
        self.freed.notify_all();
    }

    /// Bytes taken now.
    pub fn used(&self) -> u64 {
        *self.lock()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        *self.budget.lock() -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    #[test]
    fn takers_wait_for_room_and_never_hold_more_than_the_budget_together() {
        let b = MemoryBudget::new(10);
        let peak = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (b, peak) = (&b, &peak);
                s.spawn(move || {
                    for i in 0..200 {
                        let t = b.acquire(1 + (t + i) % 7, || false).unwrap();
                        peak.fetch_max(b.used(), Ordering::Relaxed);
                        std::thread::yield_now();
                        drop(t);
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 10);
        assert_eq!(b.used(), 0, "every ticket was given back");
    }

    #[test]
    fn a_grown_budget_lets_a_waiter_in_at_once_and_a_shrunk_one_holds_new_takers() {
        let b = MemoryBudget::new(4);
        let first = b.acquire(4, || false).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let t0 = crate::clock::std_now();
                (b.acquire(3, || false), t0.elapsed())
            });
            std::thread::sleep(Duration::from_millis(20));
            b.set_total(8);
            let (t, waited) = waiter.join().unwrap();
            assert!(t.is_some());
            assert!(
                waited < RECHECK,
                "woken by the change, not the recheck: {waited:?}"
            );
            assert_eq!(b.used(), 7);
        });
        // Shrunk below what is taken: nothing more until enough is given back.
        b.set_total(4);
        drop(first);
        assert_eq!(b.used(), 0);
        let t = b.acquire(4, || false).unwrap();
        assert!(b.acquire(1, || true).is_none());
        drop(t);
    }

    #[test]
    fn an_item_larger_than_the_budget_takes_all_of_it_and_a_cancelled_wait_returns() {
        let b = MemoryBudget::new(10);
        let big = b.acquire(25, || false).unwrap();
        assert_eq!(b.used(), 10);
        let cancel = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| b.acquire(1, || cancel.load(Ordering::Relaxed)));
            std::thread::sleep(Duration::from_millis(150));
            cancel.store(true, Ordering::Relaxed);
            assert!(
                waiter.join().unwrap().is_none(),
                "a cancelled wait takes nothing"
            );
        });
        drop(big);
        assert_eq!(b.used(), 0);
        assert!(b.acquire(10, || false).is_some());
    }
}

//! The read-ahead stage of a disk pass, between the planner and the CPU threads.
//!
//! A cold source is read with O_DIRECT (`io::uring::DirectMode::WhenCold`): no page cache to
//! fill, charge, reclaim and copy out of on the cores the pipeline needs. O_DIRECT has no
//! kernel read-ahead either, so a CPU thread that reads its next item itself waits the
//! device's whole latency for it, and the device idles while the thread works. This stage
//! keeps up to [`READ_AHEAD`] reads in flight ahead of the CPU threads ([`DirectQueue`]) and
//! hands each item on with its bytes, in plan order. Items it cannot read ahead (a cached
//! range, a clear, a disk format that does not map onto one file, a failed or short read)
//! go on without bytes, and the CPU thread reads them as before: warm reads stay spread over
//! the CPU threads, and every read error is reported by the ordinary read.
//!
//! A disk that keeps reads in flight itself ([`VirtualDisk::read_queue`]: a qemu view over
//! NBD, whose every read is a round trip to qemu) has all its reads started here, on its
//! queue, up to the queue's depth.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::{AdaptiveLevel, MemoryBudget, Ticket, WorkItem};
use crate::disk::VirtualDisk;

/// Reads in flight at most per disk pass: 32 MiB of 1 MiB items. The device's latency under
/// the receiver's writeback was 5–10 ms per request (session 10), and the source's device is
/// shared with other writers (a hypervisor's guests; the bench's receiver, whose durable
/// checkpoints write to the same disk): with 8 MiB in flight an 8 GiB cold copy on the
/// veth link ran at 247–262 MB/s, with 32 MiB at 259–272 MB/s, faster in each of four
/// alternated pairs (session 21, `bench/results/ANALYSIS.md`). The memory it holds is
/// bounded across passes by [`READ_AHEAD_BUDGET`].
pub const READ_AHEAD: u32 = 32;

/// Bytes of reads in flight at most across every disk pass of the process: a host that
/// copies many cold disks at once keeps its device busy with two passes' worth, and stays
/// within its memory bound (256 MiB) however many passes run.
pub const READ_AHEAD_BUDGET: u64 = 2 * READ_AHEAD as u64 * (1 << 20);

fn budget() -> &'static Arc<MemoryBudget> {
    static BUDGET: OnceLock<Arc<MemoryBudget>> = OnceLock::new();
    BUDGET.get_or_init(|| MemoryBudget::new(READ_AHEAD_BUDGET))
}

/// A work item and, if the read-ahead stage read it, its bytes.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The item.
    pub item: WorkItem,
    /// Its bytes, exactly `len` of them, for a read done ahead.
    pub data: Option<Bytes>,
}

impl Loaded {
    /// An item the CPU thread reads itself.
    pub fn plain(item: WorkItem) -> Self {
        Loaded { item, data: None }
    }
}

/// One item on its way through the stage, in plan order; a read holds its bytes of the
/// process's read-ahead budget until it is handed on.
enum Entry {
    Ready(Loaded),
    Reading(WorkItem, usize, Ticket),
    /// A read in flight on the disk's own queue ([`VirtualDisk::read_queue`]).
    Queued(WorkItem, u64, Ticket),
}

/// Runs the stage until `rx` is closed and drained or `tx` is closed. A disk with a read
/// queue of its own ([`VirtualDisk::read_queue`]: an NBD view) has its reads kept in flight
/// there, up to the queue's depth; otherwise cold ranges are read on an io_uring of the
/// stage's own. Without either every item passes through unread.
pub fn run(
    disk: &dyn VirtualDisk,
    level: &AdaptiveLevel,
    rx: async_channel::Receiver<WorkItem>,
    tx: async_channel::Sender<Loaded>,
) {
    let mut own = disk.read_queue();
    let depth = own
        .as_ref()
        .map_or(READ_AHEAD as usize, |q| q.depth().max(1));
    #[cfg(target_os = "linux")]
    let mut queue = match own {
        Some(_) => None,
        None => crate::io::ahead::DirectQueue::new(READ_AHEAD).ok(),
    };
    let mut order: VecDeque<Entry> = VecDeque::new();
    let mut open = true;
    loop {
        // Take items while a read may start (never more than the queue's depth on their way,
        // so that an item is never passed on unread for want of a slot): wait for one only
        // when nothing is on its way.
        while open && order.len() < depth {
            let got = if order.is_empty() {
                rx.recv_blocking().ok()
            } else {
                match rx.try_recv() {
                    Ok(i) => Some(i),
                    Err(async_channel::TryRecvError::Empty) => break,
                    Err(async_channel::TryRecvError::Closed) => None,
                }
            };
            let Some(item) = got else {
                open = false;
                break;
            };
            // On a slow link (or under a CPU budget) the CPU threads join reads into larger
            // frames (see JOIN_FROM_LEVEL, AdaptiveLevel::joins) and the device is not what
            // they wait for: no read-ahead.
            let joining = level.joins();
            if let (WorkItem::Read { offset, len }, Some(q), false) = (item, own.as_mut(), joining)
            {
                // Never waits for the budget: without it, the CPU thread reads the item.
                let started = budget()
                    .acquire(len as u64, || true)
                    .and_then(|t| Some((q.start(offset, len as usize)?, t)));
                if let Some((ticket, t)) = started {
                    order.push_back(Entry::Queued(item, ticket, t));
                    continue;
                }
            }
            #[cfg(target_os = "linux")]
            if let (WorkItem::Read { offset, len }, Some(q), false) =
                (item, queue.as_mut(), joining)
            {
                let started = disk
                    .cold_direct(offset, len as usize)
                    .and_then(|(file, at)| {
                        let t = budget().acquire(len as u64, || true)?;
                        Some((q.start(&file, at, len as usize)?, t))
                    });
                if let Some((ticket, t)) = started {
                    order.push_back(Entry::Reading(item, ticket, t));
                    continue;
                }
            }
            let _ = (disk, joining);
            order.push_back(Entry::Ready(Loaded::plain(item)));
        }
        let Some(front) = order.pop_front() else {
            if open {
                continue;
            }
            return;
        };
        let loaded = match front {
            Entry::Ready(l) => l,
            #[cfg(target_os = "linux")]
            Entry::Reading(item, ticket, _budget) => Loaded {
                item,
                data: queue.as_mut().and_then(|q| q.finish(ticket)),
            },
            #[cfg(not(target_os = "linux"))]
            Entry::Reading(item, _, _) => Loaded::plain(item),
            Entry::Queued(item, ticket, _budget) => Loaded {
                item,
                data: own.as_mut().and_then(|q| q.finish(ticket)),
            },
        };
        if tx.send_blocking(loaded).is_err() {
            return;
        }
    }
}

/// [`super::join_reads`] for items that may carry bytes: an item read ahead is never joined
/// (its bytes are the extent); it ends a join and is handed back like any other item that
/// cannot be joined.
pub fn join_loaded(
    first: Loaded,
    max: u32,
    mut next: impl FnMut() -> Option<Loaded>,
) -> (Loaded, Option<Loaded>) {
    if first.data.is_some() {
        return (first, None);
    }
    let mut stopped = None;
    let (joined, rest) = super::join_reads(first.item, max, || match next()? {
        l if l.data.is_none() => Some(l.item),
        l => {
            stopped = Some(l);
            None
        }
    });
    (Loaded::plain(joined), rest.map(Loaded::plain).or(stopped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops `[offset, offset + len)` of `f` from the page cache.
    #[cfg(target_os = "linux")]
    fn evict(f: &std::fs::File, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: fadvise on a valid descriptor has no memory-safety preconditions.
        let rc = unsafe {
            libc::posix_fadvise(
                f.as_raw_fd(),
                offset as i64,
                len as i64,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cold_reads_come_with_their_bytes_in_plan_order_and_the_rest_without() {
        use crate::io::uring::{DirectMode, UringFile, UringOptions};
        use rand::{RngCore, SeedableRng};
        use std::io::Write;
        use std::os::unix::fs::FileExt;

        let mib = 1usize << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let mut data = vec![0u8; 4 * mib];
        rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut data);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        let plain = std::fs::File::open(&path).unwrap();
        // MiB 2 cached, the others cold.
        evict(&plain, 0, 0);
        plain
            .read_exact_at(&mut vec![0; mib], 2 * mib as u64)
            .unwrap();
        evict(&plain, 3 * mib as u64, mib as u64);
        let opts = UringOptions {
            direct: DirectMode::WhenCold,
            ..Default::default()
        };
        let file = UringFile::open_with(&path, opts).unwrap();
        assert!(file.is_direct(), "TMPDIR must allow O_DIRECT");
        let disk = crate::disk::raw::RawDisk::new(Box::new(file)).unwrap();

        let read = |m: usize| WorkItem::Read {
            offset: (m * mib) as u64,
            len: mib as u32,
        };
        let clear = WorkItem::Clear {
            offset: 0,
            len: 4096,
        };
        let items = vec![read(0), read(1), clear, read(2), read(3)];
        let (wtx, wrx) = async_channel::bounded(16);
        for &i in &items {
            wtx.send_blocking(i).unwrap();
        }
        wtx.close();
        let (ltx, lrx) = async_channel::bounded(16);
        run(&disk, &AdaptiveLevel::new(0, false), wrx, ltx);
        let out: Vec<Loaded> = std::iter::from_fn(|| lrx.try_recv().ok()).collect();
        assert_eq!(
            out.iter().map(|l| l.item).collect::<Vec<_>>(),
            items,
            "plan order"
        );
        let read_ahead: Vec<bool> = out.iter().map(|l| l.data.is_some()).collect();
        assert_eq!(read_ahead, vec![true, true, false, false, true]);
        for (l, m) in out.iter().zip([0, 1, 9, 9, 3]) {
            if let Some(d) = &l.data {
                assert!(d[..] == data[m * mib..(m + 1) * mib], "MiB {m}");
            }
        }
    }

    #[test]
    fn a_read_ahead_item_ends_a_join_and_is_handed_back() {
        let mib = 1u32 << 20;
        let r = |o: u64| WorkItem::Read {
            offset: o << 20,
            len: mib,
        };
        let with = |o| Loaded {
            item: r(o),
            data: Some(Bytes::from(vec![0u8; mib as usize])),
        };
        let mut q = vec![Loaded::plain(r(1)), with(2), Loaded::plain(r(3))].into_iter();
        let (j, rest) = join_loaded(Loaded::plain(r(0)), 4 * mib, || q.next());
        assert_eq!(
            j.item,
            WorkItem::Read {
                offset: 0,
                len: 2 * mib
            }
        );
        assert!(j.data.is_none());
        let rest = rest.unwrap();
        assert_eq!((rest.item, rest.data.is_some()), (r(2), true));
        // An item that was read ahead goes on alone.
        let (j, rest) = join_loaded(with(5), 4 * mib, || panic!("not asked"));
        assert_eq!(
            (j.item, j.data.is_some(), rest.is_none()),
            (r(5), true, true)
        );
    }
}

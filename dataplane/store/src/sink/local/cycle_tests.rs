//! The open cycle's pre-images: how often they ask the replica where its holes are.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::super::fs::{DataFile, RealFs};
use super::super::DiskPaths;
use super::OpenCycle;
use crate::sink::DiskKey;

const MIB: u64 = 1 << 20;

/// A replica holding data over `[0, data_end)` and a hole after it, up to `size`, that
/// counts the `SEEK_HOLE`s it is asked (tmpfs answers each by walking the data's pages).
struct Replica {
    data_end: u64,
    size: u64,
    hole_asks: AtomicUsize,
}

impl DataFile for Replica {
    fn write_at(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = if offset + (i as u64) < self.data_end {
                7
            } else {
                0
            };
        }
        Ok(())
    }
    fn zero_range(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok((offset < self.data_end).then_some(offset))
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        self.hole_asks.fetch_add(1, Ordering::Relaxed);
        Ok(if offset < self.data_end {
            self.data_end
        } else {
            offset
        })
    }
}

#[test]
fn a_cycle_of_scattered_writes_over_data_asks_for_the_next_hole_once() {
    let dir = tempfile::tempdir().unwrap();
    let paths = DiskPaths::new(dir.path(), &DiskKey::new("vm", "d").unwrap());
    std::fs::create_dir_all(&paths.dir).unwrap();
    let replica = Replica {
        data_end: 64 * MIB,
        size: 256 * MIB,
        hole_asks: AtomicUsize::new(0),
    };
    let mut c = OpenCycle::new(&paths, 1);
    // 500 scattered 4 KiB writes, out of order, all over the data.
    for i in 0..500u64 {
        let off = (i * 7919 % 16_000) * 4096;
        c.save_pre_image(&RealFs, &paths, &replica, off, 4096)
            .unwrap();
    }
    assert_eq!(replica.hole_asks.load(Ordering::Relaxed), 1);
    // A write across the end of the data: its data part is saved up to the hole the hint
    // gives, and past it the replica is asked again (no data there: no new SEEK_HOLE).
    c.save_pre_image(&RealFs, &paths, &replica, 64 * MIB - 4096, 8192)
        .unwrap();
    assert_eq!(replica.hole_asks.load(Ordering::Relaxed), 1);
    // Every byte written has its pre-image covered.
    assert!(c
        .covered
        .gaps_in(64 * MIB - 4096, 64 * MIB + 4096)
        .is_empty());
    // A write before the hint's start asks again.
    let mut c2 = OpenCycle::new(&paths, 2);
    c2.save_pre_image(&RealFs, &paths, &replica, 10 * MIB, 4096)
        .unwrap();
    c2.save_pre_image(&RealFs, &paths, &replica, 5 * MIB, 4096)
        .unwrap();
    assert_eq!(replica.hole_asks.load(Ordering::Relaxed), 3);
}

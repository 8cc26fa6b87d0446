//! In-memory log replay: a [`ReadAt`] that shows the file as it would be after replaying the
//! VHDX log, without writing a byte of it.
//!
//! Hyper-V leaves log entries behind when a host crashes; until they are replayed, the BAT and
//! metadata on disk may be stale. vdrep never writes source images (a replica must not change
//! the VM's disk), so it keeps the replayed 4 KiB sectors and zeroed ranges in memory and
//! lays them over the file's bytes on every read. The log is at most a few MiB, so this stays
//! small.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use vdrep_proto::formats::vhdx::log::{ActiveSequence, LogOp, LOG_SECTOR};
use vdrep_proto::RangeSet;

use crate::io::ReadAt;

/// The file as it reads after replay.
pub struct ReplayedFile {
    inner: Box<dyn ReadAt>,
    inner_len: u64,
    /// Replayed sectors by file offset (4 KiB aligned), newest write wins.
    sectors: BTreeMap<u64, Box<[u8]>>,
    /// Zeroed file ranges, never overlapping `sectors`.
    zeros: RangeSet,
    len: u64,
}

impl ReplayedFile {
    /// Applies `seq` (oldest entry first) over `inner`. The file's length after replay is the
    /// largest of its length, the head entry's LastFileOffset and the end of any replayed
    /// write ([MS-VHDX] 2.3.3: the file is extended when it is shorter).
    pub fn new(inner: Box<dyn ReadAt>, inner_len: u64, seq: &ActiveSequence) -> Self {
        let mut f = ReplayedFile {
            inner,
            inner_len,
            sectors: BTreeMap::new(),
            zeros: RangeSet::new(),
            len: inner_len,
        };
        if let Some(h) = seq.head() {
            f.len = f.len.max(h.last_file_offset);
        }
        for (_, e) in &seq.entries {
            for op in &e.ops {
                match op {
                    LogOp::Data { file_offset, data } => {
                        let end = file_offset.saturating_add(LOG_SECTOR as u64);
                        f.zeros.remove(*file_offset, end);
                        f.sectors
                            .insert(*file_offset, data.clone().into_boxed_slice());
                        f.len = f.len.max(end);
                    }
                    LogOp::Zero {
                        file_offset,
                        length,
                    } => {
                        let end = file_offset.saturating_add(*length);
                        let keys: Vec<u64> = f
                            .sectors
                            .range(*file_offset..end)
                            .map(|(k, _)| *k)
                            .collect();
                        for k in keys {
                            f.sectors.remove(&k);
                        }
                        f.zeros.insert(*file_offset, end);
                        f.len = f.len.max(end);
                    }
                }
            }
        }
        f
    }

    /// How many sectors and ranges the replay changed (for `tracing`).
    pub fn changes(&self) -> (usize, usize) {
        (self.sectors.len(), self.zeros.range_count())
    }
}

impl ReadAt for ReplayedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset} passes the end of the file ({} bytes \
                         after log replay)",
                        buf.len(),
                        self.len
                    ),
                )
            })?;
        // The file's own bytes, zeros past its physical end.
        let phys_end = end.min(self.inner_len).max(offset);
        let n = (phys_end - offset) as usize;
        if n > 0 {
            self.inner.read_exact_at(&mut buf[..n], offset)?;
        }
        buf[n..].fill(0);
        for z in self.zeros.clipped(offset, end).iter() {
            buf[(z.start - offset) as usize..(z.end - offset) as usize].fill(0);
        }
        let first = offset - offset % LOG_SECTOR as u64;
        for (&so, data) in self.sectors.range(first..end) {
            let se = so + data.len() as u64;
            let s = so.max(offset);
            let e = se.min(end);
            if s >= e {
                continue;
            }
            buf[(s - offset) as usize..(e - offset) as usize]
                .copy_from_slice(&data[(s - so) as usize..(e - so) as usize]);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn path(&self) -> &Path {
        self.inner.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use vdrep_proto::formats::vhdx::log::LogEntry;
    use vdrep_proto::Guid;

    struct Mem(Vec<u8>, PathBuf);
    impl ReadAt for Mem {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let s = offset as usize;
            let src = self
                .0
                .get(s..s + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn path(&self) -> &Path {
            &self.1
        }
    }

    fn entry(seq: u64, ops: Vec<LogOp>, last: u64) -> (u32, LogEntry) {
        (
            0,
            LogEntry {
                sequence_number: seq,
                tail: 0,
                entry_length: 4096,
                log_guid: Guid([1; 16]),
                flushed_file_offset: 0,
                last_file_offset: last,
                ops,
            },
        )
    }

    #[test]
    fn later_ops_win_and_file_grows_to_last_file_offset() {
        let base = vec![0x11u8; 5 * 4096];
        let seq = ActiveSequence {
            entries: vec![
                entry(
                    1,
                    vec![
                        LogOp::Data {
                            file_offset: 4096,
                            data: vec![0xaa; 4096],
                        },
                        LogOp::Zero {
                            file_offset: 8192,
                            length: 8192,
                        },
                    ],
                    0,
                ),
                entry(
                    2,
                    vec![
                        LogOp::Zero {
                            file_offset: 4096,
                            length: 4096,
                        },
                        LogOp::Data {
                            file_offset: 12288,
                            data: vec![0xbb; 4096],
                        },
                    ],
                    8 * 4096,
                ),
            ],
        };
        let f = ReplayedFile::new(Box::new(Mem(base, "m".into())), 5 * 4096, &seq);
        assert_eq!(f.len().unwrap(), 8 * 4096);
        let mut all = vec![0u8; 8 * 4096];
        f.read_exact_at(&mut all, 0).unwrap();
        assert!(all[..4096].iter().all(|&b| b == 0x11));
        assert!(all[4096..12288].iter().all(|&b| b == 0));
        assert!(all[12288..16384].iter().all(|&b| b == 0xbb));
        assert!(all[16384..20480].iter().all(|&b| b == 0x11));
        assert!(all[20480..].iter().all(|&b| b == 0));
        // Unaligned partial read through a replayed sector.
        let mut part = vec![0u8; 10];
        f.read_exact_at(&mut part, 12288 - 5).unwrap();
        assert_eq!(&part, &[0, 0, 0, 0, 0, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb]);
        assert!(f.read_exact_at(&mut part, 8 * 4096 - 5).is_err());
    }
}

//! A closed change log seen as a disk: the coalesced extents of the log, readable at their
//! disk offsets, so a cycle runs through the same pipeline as an initial copy.

use std::sync::Arc;

use bytes::Bytes;

use crate::disk::{DiskError, DiskInfo, Extent, ExtentKind, VirtualDisk};
use crate::hrl::{CoalescedExtent, HrlLog};

/// The bytes a cycle ships.
pub struct LogImage {
    log: Arc<HrlLog>,
    extents: Vec<CoalescedExtent>,
    info: DiskInfo,
}

impl LogImage {
    /// Wraps a log and its coalesced extents; `info` is the source disk's (the image has its
    /// virtual size so offsets are checked the same way).
    pub fn new(log: HrlLog, extents: Vec<CoalescedExtent>, info: DiskInfo) -> Self {
        LogImage {
            log: Arc::new(log),
            extents,
            info,
        }
    }

    fn hrl_err(&self, offset: u64, e: crate::hrl::HrlError) -> DiskError {
        DiskError::corrupt(self.log.path(), "HRL data", offset, e)
    }

    /// The extent holding `[offset, offset+len)` entirely, if any.
    fn covering(&self, offset: u64, len: u64) -> Option<&CoalescedExtent> {
        let i = self.extents.partition_point(|e| e.end() <= offset);
        self.extents
            .get(i)
            .filter(|e| e.offset <= offset && offset + len <= e.end())
    }
}

impl VirtualDisk for LogImage {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        Ok(self
            .extents
            .iter()
            .filter(|e| e.end() > start && e.offset < end)
            .map(|e| {
                let s = e.offset.max(start);
                Extent {
                    offset: s,
                    length: e.end().min(end) - s,
                    kind: ExtentKind::Data,
                }
            })
            .collect())
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let len = buf.len() as u64;
        let e = self
            .covering(offset, len)
            .ok_or_else(|| DiskError::OutOfRange {
                path: self.log.path().to_path_buf(),
                offset,
                len,
                size: self.info.virtual_size,
            })?;
        // Walk the extent's pieces to the requested window.
        let mut at = e.offset;
        let mut filled = 0usize;
        for p in &e.pieces {
            let (ps, pe) = (at, at + p.length);
            at = pe;
            if pe <= offset || ps >= offset + len {
                continue;
            }
            let s = ps.max(offset);
            let t = pe.min(offset + len);
            let b = self
                .log
                .read_range(p.file_offset + (s - ps), (t - s) as usize)
                .map_err(|er| self.hrl_err(s, er))?;
            buf[filled..filled + b.len()].copy_from_slice(&b);
            filled += b.len();
        }
        Ok(())
    }

    /// One piece covering the read is returned as read from the log, without a copy.
    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, DiskError> {
        if let Some(e) = self.covering(offset, len as u64) {
            let mut at = e.offset;
            for p in &e.pieces {
                if at <= offset && offset + len as u64 <= at + p.length {
                    return self
                        .log
                        .read_range(p.file_offset + (offset - at), len)
                        .map_err(|er| self.hrl_err(offset, er));
                }
                at += p.length;
            }
        }
        let mut b = bytes::BytesMut::zeroed(len);
        self.read_into(offset, &mut b)?;
        Ok(b.freeze())
    }
}

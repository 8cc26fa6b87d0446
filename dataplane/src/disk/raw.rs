//! Raw images: the file is the disk. Holes of a sparse file are unallocated ranges.

use super::{DiskError, DiskFormat, DiskInfo, Extent, ExtentKind, VirtualDisk};
use crate::io::ReadAt;

/// A raw image.
pub struct RawDisk {
    file: Box<dyn ReadAt>,
    info: DiskInfo,
}

impl RawDisk {
    /// Wraps an opened file.
    pub fn new(file: Box<dyn ReadAt>) -> Result<Self, DiskError> {
        let size = file.len().map_err(|e| DiskError::io(file.path(), 0, e))?;
        let info = DiskInfo {
            path: file.path().to_path_buf(),
            format: DiskFormat::Raw,
            virtual_size: size,
            logical_sector_size: 512,
            physical_sector_size: 512,
            block_size: None,
            parent: None,
            identity: None,
            disk_id: None,
        };
        Ok(RawDisk { file, info })
    }
}

/// Checks that `[offset, offset+len)` is inside a disk of `size` bytes.
pub(crate) fn check_range(info: &DiskInfo, offset: u64, len: usize) -> Result<(), DiskError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= info.virtual_size => Ok(()),
        _ => Err(DiskError::OutOfRange {
            path: info.path.clone(),
            offset,
            len: len as u64,
            size: info.virtual_size,
        }),
    }
}

impl VirtualDisk for RawDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        let end = end.min(self.info.virtual_size);
        let ranges = self
            .file
            .data_ranges(start, end)
            .map_err(|e| DiskError::io(&self.info.path, start, e))?;
        Ok(ranges
            .iter()
            .map(|r| Extent {
                offset: r.start,
                length: r.end - r.start,
                kind: ExtentKind::Data,
            })
            .collect())
    }

    fn cold_direct(&self, offset: u64, len: usize) -> Option<(std::sync::Arc<std::fs::File>, u64)> {
        check_range(&self.info, offset, len).ok()?;
        Some((self.file.cold_direct(offset, len)?, offset))
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(&self.info, offset, buf.len())?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| DiskError::io(&self.info.path, offset, e))
    }
}

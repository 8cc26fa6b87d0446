//! VHD reader (fixed, dynamic, differencing). TODO(helper): implement.

use super::{DiskError, DiskInfo, Extent, OpenContext, VirtualDisk};
use crate::io::ReadAt;

/// A VHD image.
pub struct VhdDisk {
    info: DiskInfo,
}

impl VhdDisk {
    /// Opens a VHD whose footer was detected.
    pub fn open(file: Box<dyn ReadAt>, _ctx: &mut OpenContext) -> Result<Self, DiskError> {
        Err(DiskError::Unsupported {
            path: file.path().to_path_buf(),
            what: "VHD reader not implemented yet".into(),
        })
    }
}

impl VirtualDisk for VhdDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }
    fn extents_in(&self, _start: u64, _end: u64) -> Result<Vec<Extent>, DiskError> {
        Ok(vec![])
    }
    fn read_into(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), DiskError> {
        Ok(())
    }
}

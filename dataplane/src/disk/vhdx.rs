//! VHDX reader (fixed, dynamic, differencing). TODO(helper): implement.

use super::{DiskError, DiskInfo, Extent, OpenContext, VirtualDisk};
use crate::io::ReadAt;

/// A VHDX image.
pub struct VhdxDisk {
    info: DiskInfo,
}

impl VhdxDisk {
    /// Opens a VHDX whose identifier was detected.
    pub fn open(file: Box<dyn ReadAt>, _ctx: &mut OpenContext) -> Result<Self, DiskError> {
        Err(DiskError::Unsupported {
            path: file.path().to_path_buf(),
            what: "VHDX reader not implemented yet".into(),
        })
    }
}

impl VirtualDisk for VhdxDisk {
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

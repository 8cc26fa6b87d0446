//! The disks the pipeline reads besides a view itself ([`super::NbdView`]): the same view
//! read for a cycle's digest without counting its reads ([`Uncounted`]), a view whose reads
//! feed the digest as they ship ([`HashingView`]), and a qemu disk between switches, which
//! has a size and a name but no bytes until a switch's view ([`QemuDisk`]). Wrappers that
//! decide what a read counts as and where it goes, apart from how a view reads qemu.

use std::path::PathBuf;

use super::super::digest::PieceTee;
use super::NbdView;
use crate::disk::{DiskError, DiskFormat, DiskInfo, Extent, ReadQueue, VirtualDisk};

/// The same view read for a cycle's digest: its reads are not the cycle's
/// ([`NbdView::read_bytes`] counts what shipping read, against the dirty bytes).
pub struct Uncounted<'a>(pub &'a NbdView);

impl VirtualDisk for Uncounted<'_> {
    fn info(&self) -> &DiskInfo {
        self.0.info()
    }

    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        self.0.extents_in(start, end)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.0.read_uncounted(offset, buf)
    }
}

/// A cycle's view whose reads also feed the cycle's digest ([`PieceTee`]): the pipeline
/// reads each dirty piece once, for shipping and hashing both.
pub struct HashingView {
    /// The view.
    pub view: std::sync::Arc<NbdView>,
    /// Where the pieces' chaining values go.
    pub tee: std::sync::Arc<PieceTee>,
}

impl VirtualDisk for HashingView {
    fn info(&self) -> &DiskInfo {
        self.view.info()
    }

    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        self.view.extents_in(start, end)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.view.read_into(offset, buf)?;
        self.tee.record(offset, buf);
        Ok(())
    }

    fn read_queue(&self) -> Option<Box<dyn ReadQueue + '_>> {
        self.view.read_queue()
    }

    fn read_ahead_taken(&self, offset: u64, data: &[u8]) {
        self.tee.record(offset, data);
    }
}

/// A qemu disk between switches: its size and name are known (status, jobs, health show
/// them), its bytes are read only through a switch's view ([`NbdView`]).
pub struct QemuDisk {
    info: DiskInfo,
}

impl QemuDisk {
    /// Disk `node` of `size` bytes, image `file`.
    pub fn new(node: &str, file: &str, size: u64) -> QemuDisk {
        QemuDisk {
            info: DiskInfo {
                path: PathBuf::from(format!("qemu:{node} ({file})")),
                format: DiskFormat::Raw,
                virtual_size: size,
                logical_sector_size: 512,
                physical_sector_size: 512,
                block_size: None,
                parent: None,
                identity: None,
                disk_id: None,
            },
        }
    }

    fn no_view(&self) -> DiskError {
        DiskError::Unsupported {
            path: self.info.path.clone(),
            what: "a running qemu disk is read through a fleecing view of a switch".into(),
        }
    }
}

impl VirtualDisk for QemuDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn extents_in(&self, _start: u64, _end: u64) -> Result<Vec<Extent>, DiskError> {
        Err(self.no_view())
    }

    fn read_into(&self, _offset: u64, _buf: &mut [u8]) -> Result<(), DiskError> {
        Err(self.no_view())
    }
}

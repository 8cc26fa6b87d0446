//! Virtual-disk readers: what the guest sees, byte for byte, from raw, VHD and VHDX images and
//! their differencing chains.
//!
//! Every reader answers two questions through [`VirtualDisk`]: which ranges hold something
//! (so the pipeline reads only those), and what the bytes at any offset are. Formats are
//! detected by content, never by file name ([`open`]).

mod chain;
mod error;
pub mod extent;
mod overlay;
pub mod raw;
pub mod vhd;
pub mod vhdx;

#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Serialize;
use vdrep_proto::Guid;

use crate::io::ReadAt;

pub use chain::{resolve_parent_path, OpenContext};
pub use error::DiskError;
pub use extent::{all_extents, merge_overlay, normalize, Extent, ExtentKind, ExtentWalker};
pub use overlay::read_overlay;

/// The image formats vdrep reads, as `inspect` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    /// A plain image: the file is the disk.
    Raw,
    /// VHD with type 2.
    VhdFixed,
    /// VHD with type 3.
    VhdDynamic,
    /// VHD with type 4.
    VhdDifferencing,
    /// VHDX whose blocks are all fully present.
    VhdxFixed,
    /// VHDX with a BAT that allocates on demand.
    VhdxDynamic,
    /// VHDX with a parent.
    VhdxDifferencing,
}

impl DiskFormat {
    /// The name `inspect` prints.
    pub fn as_str(&self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::VhdFixed => "vhd-fixed",
            DiskFormat::VhdDynamic => "vhd-dynamic",
            DiskFormat::VhdDifferencing => "vhd-differencing",
            DiskFormat::VhdxFixed => "vhdx-fixed",
            DiskFormat::VhdxDynamic => "vhdx-dynamic",
            DiskFormat::VhdxDifferencing => "vhdx-differencing",
        }
    }
}

/// What a reader knows about its virtual disk.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// The image file.
    pub path: PathBuf,
    /// Detected format.
    pub format: DiskFormat,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Logical sector size (512, or 4096 for 4Kn VHDX disks).
    pub logical_sector_size: u32,
    /// Physical sector size (4096 for 512e disks).
    pub physical_sector_size: u32,
    /// Allocation unit of dynamic and differencing formats.
    pub block_size: Option<u64>,
    /// Resolved absolute path of the parent image.
    pub parent: Option<PathBuf>,
    /// The image's own identity (VHD unique id, VHDX data write GUID), checked by children.
    pub identity: Option<Guid>,
    /// The virtual disk's identity that writes never change (VHD unique id, VHDX
    /// `VirtualDiskId`): the receiver ties a replica to it. A VHDX's `DataWriteGuid`
    /// (`identity`) changes at the first write of every session, so a sender restarted after
    /// the guest wrote would otherwise be refused as another disk.
    pub disk_id: Option<Guid>,
}

/// A readable virtual disk.
///
/// Implementations are shared between pipeline workers, hence `&self` everywhere.
pub trait VirtualDisk: Send + Sync {
    /// Static facts about the disk.
    fn info(&self) -> &DiskInfo;

    /// The ranges intersecting `[start, end)` that hold something, clipped to the window, in
    /// offset order, never overlapping, adjacent ranges of one kind merged. Windows keep memory
    /// bounded on multi-TiB disks: callers walk a disk with [`ExtentWalker`].
    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError>;

    /// Fills `buf` with the virtual disk's bytes at `offset`: every byte of it, zeros
    /// included, whatever `buf` held before ([`VirtualDisk::read_at`] hands in reused buffers
    /// that hold an earlier extent's bytes). Reads past the virtual size are errors, never
    /// silently zero.
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;

    /// The O_DIRECT file and its offset holding `[offset, offset + len)` of the virtual disk
    /// in one piece, if the disk's reader would read that range with O_DIRECT now (see
    /// [`crate::io::ReadAt::cold_direct`]): the pipeline's read-ahead reads it early. Only a
    /// raw image maps virtual ranges onto its file one to one; the default says no.
    fn cold_direct(
        &self,
        _offset: u64,
        _len: usize,
    ) -> Option<(std::sync::Arc<std::fs::File>, u64)> {
        None
    }

    /// A queue of reads kept in flight from one thread, if this disk's reads are worth
    /// overlapping that way (a network source: an NBD view answers requests sent ahead of
    /// their replies). The pipeline's read-ahead stage starts its next items' reads there
    /// before the CPU threads ask for them. The default has none.
    fn read_queue(&self) -> Option<Box<dyn ReadQueue + '_>> {
        None
    }

    /// Bytes at `offset` that the read-ahead stage read through [`VirtualDisk::read_queue`],
    /// as a CPU thread takes them: a disk that watches its reads (a qemu cycle's digest,
    /// which hashes every piece shipping reads) sees them here, on the CPU threads, not on
    /// the one read-ahead thread. The default ignores them.
    fn read_ahead_taken(&self, _offset: u64, _data: &[u8]) {}

    /// Reads `len` bytes into a buffer of their own. This is the one place a payload is
    /// materialised on the sender: the file's bytes land directly in the `Bytes` that travels
    /// to the socket. Reads of 1 MiB and more reuse the pages of an earlier extent's buffer
    /// ([`crate::memory::pool`]): a fresh mapping per read cost 20 % of the sender's CPU.
    /// Large reads start at a page-aligned address, so that an O_DIRECT read of a cold
    /// source (`crate::io::uring::DirectMode`) lands in place rather than through a bounce
    /// buffer and a copy; the alignment costs one page of address space per buffer.
    fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, DiskError> {
        use crate::io::direct::{COLD_DIRECT_MIN, DIRECT_ALIGN};
        if len < COLD_DIRECT_MIN {
            let mut buf = crate::memory::PooledBuf::for_overwrite(len);
            self.read_into(offset, &mut buf)?;
            return Ok(buf.freeze());
        }
        let mut buf = crate::memory::PooledBuf::for_overwrite(len + DIRECT_ALIGN);
        let pad = buf.as_ptr().align_offset(DIRECT_ALIGN);
        self.read_into(offset, &mut buf[pad..pad + len])?;
        Ok(buf.freeze().slice(pad..pad + len))
    }
}

/// Reads in flight from one thread ([`VirtualDisk::read_queue`]), collected in whatever
/// order the caller chooses.
pub trait ReadQueue: Send {
    /// Most reads in flight at once.
    fn depth(&self) -> usize;

    /// Starts reading `len` bytes at `offset`: its ticket, or `None` when the read cannot
    /// start here (the caller reads the range the ordinary way, which reports any error).
    fn start(&mut self, offset: u64, len: usize) -> Option<u64>;

    /// The bytes of a started read, exactly its length; `None` when it failed (read it the
    /// ordinary way).
    fn finish(&mut self, ticket: u64) -> Option<Bytes>;
}

/// How [`open`] treats disks that vdrep can read but not replicate.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open 4096-byte-logical-sector disks (for `inspect`); replication refuses them because
    /// Azure page blobs only take 512-byte sectors.
    pub allow_4k_logical: bool,
}

/// Opens any supported image, detecting the format by content and resolving parents.
pub fn open(path: &Path, opts: OpenOptions) -> Result<Box<dyn VirtualDisk>, DiskError> {
    check_sectors(open_with(path, &mut OpenContext::default())?, path, opts)
}

/// Opens an image from an already opened source (an in-memory image in tests and fuzz targets,
/// or a caller's own [`ReadAt`] backend), detecting the format by content like [`open`].
/// Parents of differencing images are still looked up on the file system, relative to
/// [`ReadAt::path`].
pub fn open_from(
    file: Box<dyn ReadAt>,
    opts: OpenOptions,
) -> Result<Box<dyn VirtualDisk>, DiskError> {
    let path = file.path().to_path_buf();
    let mut ctx = OpenContext::default();
    ctx.enter(&path)?;
    check_sectors(detect(file, &path, &mut ctx)?, &path, opts)
}

fn check_sectors(
    disk: Box<dyn VirtualDisk>,
    path: &Path,
    opts: OpenOptions,
) -> Result<Box<dyn VirtualDisk>, DiskError> {
    let info = disk.info();
    if info.logical_sector_size != 512 && !opts.allow_4k_logical {
        return Err(DiskError::Unsupported {
            path: path.to_path_buf(),
            what: format!(
                "logical sector size {} bytes: Azure page blobs take only 512-byte logical \
                 sectors (512e disks are fine); convert the disk to 512-byte sectors first",
                info.logical_sector_size
            ),
        });
    }
    Ok(disk)
}

/// Opens `path` as part of a chain walk (`ctx` detects cycles and limits depth).
pub(crate) fn open_with(
    path: &Path,
    ctx: &mut OpenContext,
) -> Result<Box<dyn VirtualDisk>, DiskError> {
    ctx.enter(path)?;
    let file = crate::io::open(path).map_err(|e| DiskError::io(path, 0, e))?;
    detect(file, path, ctx)
}

/// Picks the reader by the file's content: `vhdxfile` at 0, `conectix` at the end (or at 0),
/// raw otherwise.
fn detect(
    file: Box<dyn ReadAt>,
    path: &Path,
    ctx: &mut OpenContext,
) -> Result<Box<dyn VirtualDisk>, DiskError> {
    let len = file.len().map_err(|e| DiskError::io(path, 0, e))?;
    let mut head = [0u8; 8];
    if len >= 8 {
        file.read_exact_at(&mut head, 0)
            .map_err(|e| DiskError::io(path, 0, e))?;
    }
    if &head == b"vhdxfile" {
        return Ok(Box::new(vhdx::VhdxDisk::open(file, ctx)?));
    }
    if len >= 512 {
        let mut tail = [0u8; 8];
        file.read_exact_at(&mut tail, len - 512)
            .map_err(|e| DiskError::io(path, len - 512, e))?;
        // Some old writers leave a 511-byte footer; the spec's copy at offset 0 also says VHD.
        if &tail == b"conectix" || &head == b"conectix" {
            return Ok(Box::new(vhd::VhdDisk::open(file, ctx)?));
        }
    }
    Ok(Box::new(raw::RawDisk::new(file)?))
}

//! VHD reader: fixed (type 2), dynamic (3) and differencing (4) disks.
//!
//! - The footer at the end of the file is authoritative; dynamic disks fall back to the copy
//!   at offset 0 with a warning ([`layout::read_footer`]).
//! - The guest-visible size follows `Footer::virtual_size` (Virtual PC images by CHS).
//! - Metadata is validated when the disk is opened (BAT inside the file, blocks disjoint and
//!   clear of the header, BAT, locators and footer), so reads never chase a corrupt pointer.
//! - A differencing disk's parent is found by its locators, opened through the chain walker
//!   (cycles and depth are refused there), and must carry the unique id the child's header
//!   names; any mismatch is a broken chain, which never heals by itself.
//! - Sector-level semantics (bitmaps, qemu parity) are documented in [`sparse`].

mod layout;
mod sparse;

use vdrep_proto::formats::vhd::dynamic::SECTOR;
use vdrep_proto::formats::vhd::{DiskType, FOOTER_SIZE};

use super::raw::check_range;
use super::{
    resolve_parent_path, DiskError, DiskFormat, DiskInfo, Extent, ExtentKind, OpenContext,
    VirtualDisk,
};
use crate::io::ReadAt;

use sparse::{ParentView, Sparse};

/// A VHD image (and, for differencing disks, its opened parent chain).
pub struct VhdDisk {
    file: Box<dyn ReadAt>,
    info: DiskInfo,
    /// `None` for fixed disks: the data is the file's first `virtual_size` bytes.
    sparse: Option<Sparse>,
}

impl VhdDisk {
    /// Opens a VHD whose footer (or footer copy) was detected, following parents through
    /// `ctx`.
    pub fn open(file: Box<dyn ReadAt>, ctx: &mut OpenContext) -> Result<Self, DiskError> {
        let path = file.path().to_path_buf();
        let len = file.len().map_err(|e| DiskError::io(&path, 0, e))?;
        let fat = layout::read_footer(file.as_ref(), len)?;
        let footer = &fat.footer;
        let virtual_size = footer.virtual_size();
        let mut info = DiskInfo {
            path: path.clone(),
            format: DiskFormat::VhdFixed,
            virtual_size,
            logical_sector_size: SECTOR as u32,
            physical_sector_size: SECTOR as u32,
            block_size: None,
            parent: None,
            identity: Some(footer.unique_id),
            disk_id: Some(footer.unique_id),
        };
        if footer.disk_type == DiskType::Fixed {
            let data = len - FOOTER_SIZE as u64;
            if virtual_size > data {
                return Err(DiskError::corrupt(
                    &path,
                    "VHD footer",
                    fat.offset + 48,
                    format!(
                        "fixed disk of {virtual_size} bytes, but only {data} bytes precede the \
                         footer (truncated file?)"
                    ),
                ));
            }
            return Ok(VhdDisk {
                file,
                info,
                sparse: None,
            });
        }
        let meta = layout::read_sparse(file.as_ref(), len, &fat, virtual_size)?;
        let block_size = meta.header.block_size as u64;
        info.block_size = Some(block_size);
        info.format = DiskFormat::VhdDynamic;
        let mut parent = None;
        if footer.disk_type == DiskType::Differencing {
            info.format = DiskFormat::VhdDifferencing;
            let candidates = layout::parent_candidates(file.as_ref(), len, &meta.header);
            let ppath = resolve_parent_path(&path, &candidates)?;
            let p = crate::disk::open_with(&ppath, ctx)?;
            let want = meta.header.parent_unique_id;
            if p.info().identity != Some(want) {
                return Err(DiskError::BrokenChain {
                    path,
                    problem: format!(
                        "parent {} has unique id {}, but this disk's dynamic header (parent \
                         unique id at offset {}) expects {want}; the parent was replaced or \
                         modified",
                        ppath.display(),
                        p.info()
                            .identity
                            .map_or_else(|| "(none)".to_string(), |g| g.to_string()),
                        meta.header_offset + 40,
                    ),
                });
            }
            let mut pinfo = p.info().clone();
            pinfo.virtual_size = pinfo.virtual_size.max(virtual_size);
            info.parent = Some(ppath);
            parent = Some(Box::new(ParentView {
                inner: p,
                info: pinfo,
            }) as Box<dyn VirtualDisk>);
        }
        Ok(VhdDisk {
            file,
            info,
            sparse: Some(Sparse {
                bat: meta.bat,
                block_size,
                parent,
            }),
        })
    }
}

impl VirtualDisk for VhdDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn extents_in(&self, start: u64, end: u64) -> Result<Vec<Extent>, DiskError> {
        let end = end.min(self.info.virtual_size);
        if start >= end {
            return Ok(Vec::new());
        }
        match &self.sparse {
            Some(s) => s.extents_in(self.file.as_ref(), start, end),
            // A fixed disk's holes (sparse file) are unallocated; the rest is data.
            None => Ok(self
                .file
                .data_ranges(start, end)
                .map_err(|e| DiskError::io(&self.info.path, start, e))?
                .iter()
                .map(|r| Extent {
                    offset: r.start,
                    length: r.end - r.start,
                    kind: ExtentKind::Data,
                })
                .collect()),
        }
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_range(&self.info, offset, buf.len())?;
        match &self.sparse {
            Some(s) => s.read_into(self.file.as_ref(), offset, buf),
            None => self
                .file
                .read_exact_at(buf, offset)
                .map_err(|e| DiskError::io(&self.info.path, offset, e)),
        }
    }
}

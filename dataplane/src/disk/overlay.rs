//! Reading a differencing disk: sectors the child holds come from the child, every other byte
//! from the parent. Shared by the VHD and VHDX differencing readers.

use vdrep_proto::RangeSet;

use super::{DiskError, VirtualDisk};

/// Fills `buf` (virtual offset `offset`) from the child where `present` (the virtual ranges
/// the child holds itself) says so and from `parent` everywhere else. `read_own(virtual_offset, dst)` reads the child's copy.
pub fn read_overlay(
    offset: u64,
    buf: &mut [u8],
    present: &RangeSet,
    mut read_own: impl FnMut(u64, &mut [u8]) -> Result<(), DiskError>,
    parent: &dyn VirtualDisk,
) -> Result<(), DiskError> {
    let end = offset + buf.len() as u64;
    let mut cur = offset;
    for r in present.iter() {
        let s = r.start.max(offset);
        let e = r.end.min(end);
        if s >= e {
            continue;
        }
        if s > cur {
            parent.read_into(
                cur,
                &mut buf[(cur - offset) as usize..(s - offset) as usize],
            )?;
        }
        read_own(s, &mut buf[(s - offset) as usize..(e - offset) as usize])?;
        cur = e;
    }
    if cur < end {
        parent.read_into(cur, &mut buf[(cur - offset) as usize..])?;
    }
    Ok(())
}

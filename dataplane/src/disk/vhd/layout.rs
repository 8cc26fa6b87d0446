//! Reading and validating the metadata of a VHD file: the footer (with the copy at offset 0
//! as a fallback), the dynamic header, the BAT, and the parent locators. Every check names
//! the file, the absolute offset of the bad field, and what is wrong, so an operator can
//! tell a truncated copy from a corrupt image.

use std::path::Path;

use vdrep_proto::formats::vhd::dynamic::{
    bitmap_bytes, decode_bat, decode_locator_path, DynamicHeader, PlatformCode, BAT_ABSENT,
    HEADER_SIZE, SECTOR,
};
use vdrep_proto::formats::vhd::{DiskType, Footer, FOOTER_SIZE};

use crate::disk::DiskError;
use crate::io::ReadAt;

/// Most BAT entries vdrep loads: 4 Mi entries is 8 TiB at the default 2 MiB block size (VHD
/// itself stops at 2040 GiB), and keeps the BAT plus its validation under 64 MiB of memory.
pub(super) const MAX_BAT_ENTRIES: u64 = 1 << 22;

/// Longest parent locator data vdrep reads (a Windows long path is at most 32767 UTF-16
/// units).
const MAX_LOCATOR_BYTES: u32 = 64 << 10;

/// The footer in effect and where it was found.
pub(super) struct FooterAt {
    pub footer: Footer,
    /// File offset of the footer that was used (end of file, or 0 for the copy).
    pub offset: u64,
    /// Whether the footer at the end of the file is valid (it then occupies the last 512
    /// bytes, which no block may overlap).
    pub at_end: bool,
}

fn read(file: &dyn ReadAt, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| DiskError::io(file.path(), offset, e))?;
    Ok(buf)
}

/// Reads the footer at the end of the file. Dynamic and differencing disks carry a copy at
/// offset 0; if the end one is bad (a torn write, a truncated copy) the copy is used and a
/// warning says so, as Hyper-V and qemu's repair do.
pub(super) fn read_footer(file: &dyn ReadAt, len: u64) -> Result<FooterAt, DiskError> {
    let path = file.path();
    if len < FOOTER_SIZE as u64 {
        return Err(DiskError::corrupt(
            path,
            "VHD footer",
            0,
            format!("file of {len} bytes is too short for a 512-byte VHD footer"),
        ));
    }
    let end_at = len - FOOTER_SIZE as u64;
    let end_err = match Footer::decode(&read(file, end_at, FOOTER_SIZE)?) {
        Ok(footer) => {
            return Ok(FooterAt {
                footer,
                offset: end_at,
                at_end: true,
            })
        }
        Err(e) => e,
    };
    if end_at > 0 {
        if let Ok(footer) = Footer::decode(&read(file, 0, FOOTER_SIZE)?) {
            if footer.disk_type != DiskType::Fixed {
                tracing::warn!(
                    path = %path.display(),
                    offset = end_at,
                    error = %end_err,
                    "VHD footer at the end of the file is bad; using its copy at offset 0"
                );
                return Ok(FooterAt {
                    footer,
                    offset: 0,
                    at_end: false,
                });
            }
        }
    }
    Err(DiskError::format(path, end_at, end_err))
}

/// The validated metadata of a dynamic or differencing disk.
pub(super) struct SparseMeta {
    pub header: DynamicHeader,
    /// File offset of the dynamic header.
    pub header_offset: u64,
    /// One entry per block of the virtual disk (entries past the virtual size are dropped).
    pub bat: Vec<u32>,
}

/// Reads the dynamic header and the BAT and checks that every allocated block lies inside
/// the file without overlapping another block or the metadata.
pub(super) fn read_sparse(
    file: &dyn ReadAt,
    len: u64,
    fat: &FooterAt,
    virtual_size: u64,
) -> Result<SparseMeta, DiskError> {
    let path = file.path();
    let ho = fat.footer.data_offset;
    let header_end = ho.checked_add(HEADER_SIZE as u64).filter(|&e| e <= len);
    if header_end.is_none() {
        return Err(DiskError::corrupt(
            path,
            "VHD footer",
            fat.offset + 16,
            format!(
                "data offset {ho} does not leave room for the 1024-byte dynamic header in a \
                 file of {len} bytes"
            ),
        ));
    }
    let header = DynamicHeader::decode(&read(file, ho, HEADER_SIZE)?)
        .map_err(|e| DiskError::format(path, ho, e))?;
    let bs = header.block_size as u64;
    let needed = virtual_size.div_ceil(bs);
    let entries = header.max_table_entries as u64;
    if entries < needed {
        return Err(DiskError::corrupt(
            path,
            "VHD dynamic header",
            ho + 28,
            format!(
                "max table entries {entries} × block size {bs} cover {} bytes, less than the \
                 virtual size {virtual_size}",
                entries * bs
            ),
        ));
    }
    if needed > MAX_BAT_ENTRIES {
        return Err(DiskError::Unsupported {
            path: path.to_path_buf(),
            what: format!(
                "{needed} blocks of {bs} bytes (more than {MAX_BAT_ENTRIES}); convert the disk \
                 with a larger block size"
            ),
        });
    }
    let to = header.table_offset;
    let bat_len = entries * 4;
    if to.checked_add(bat_len).is_none_or(|e| e > len) {
        return Err(DiskError::corrupt(
            path,
            "VHD BAT",
            to,
            format!(
                "{entries} entries ({bat_len} bytes) at offset {to} reach past the end of the \
                 file ({len} bytes)"
            ),
        ));
    }
    let bat = decode_bat(&read(file, to, (needed * 4) as usize)?, needed as usize)
        .map_err(|e| DiskError::format(path, to, e))?;

    // Metadata the blocks must not overlap; entries past `needed` are ignored, but the
    // table itself is reserved in full.
    let mut meta: Vec<(u64, u64, &str)> = vec![
        (0, FOOTER_SIZE as u64, "footer copy"),
        (ho, ho + HEADER_SIZE as u64, "dynamic header"),
        (to, to + bat_len, "BAT"),
    ];
    if fat.at_end {
        meta.push((fat.offset, len, "footer"));
    }
    for loc in &header.parent_locators {
        if loc.platform_code != PlatformCode::None && loc.data_length > 0 {
            if let Some(e) = loc.data_offset.checked_add(loc.data_length as u64) {
                meta.push((loc.data_offset, e, "parent locator data"));
            }
        }
    }
    meta.sort_unstable();
    for w in meta.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(DiskError::corrupt(
                path,
                "VHD metadata",
                w[1].0,
                format!(
                    "the {} at [{}, {}) overlaps the {} at [{}, {})",
                    w[1].2, w[1].0, w[1].1, w[0].2, w[0].0, w[0].1
                ),
            ));
        }
    }
    check_blocks(path, len, fat, &header, to, virtual_size, &bat, &meta)?;
    Ok(SparseMeta {
        header,
        header_offset: ho,
        bat,
    })
}

/// File range `[start, end)` of block `i` (bitmap plus the part of the data inside the
/// virtual size), or `None` when the block is not allocated.
pub(super) fn block_span(bat: &[u32], i: usize, bs: u64, virtual_size: u64) -> Option<(u64, u64)> {
    let e = *bat.get(i)?;
    if e == BAT_ABSENT {
        return None;
    }
    let start = e as u64 * SECTOR;
    let vstart = i as u64 * bs;
    let used = bs.min(virtual_size.saturating_sub(vstart));
    Some((start, start + bitmap_bytes(bs) + used))
}

#[allow(clippy::too_many_arguments)]
fn check_blocks(
    path: &Path,
    len: u64,
    fat: &FooterAt,
    header: &DynamicHeader,
    table_offset: u64,
    virtual_size: u64,
    bat: &[u32],
    meta: &[(u64, u64, &str)],
) -> Result<(), DiskError> {
    let bs = header.block_size as u64;
    let limit = if fat.at_end { fat.offset } else { len };
    let entry_at = |i: u32| table_offset + 4 * i as u64;
    // (start sector, index): 8 bytes per allocated block keeps the sort small.
    let mut blocks: Vec<(u32, u32)> = Vec::new();
    for (i, &e) in bat.iter().enumerate() {
        let Some((start, end)) = block_span(bat, i, bs, virtual_size) else {
            continue;
        };
        if end > limit {
            return Err(DiskError::corrupt(
                path,
                "VHD BAT",
                entry_at(i as u32),
                format!(
                    "entry {i} points to sector {e} (offset {start}); the block ends at {end}, \
                     past the end of the file's data at {limit}"
                ),
            ));
        }
        blocks.push((e, i as u32));
    }
    blocks.sort_unstable();
    let span =
        |&(_, i): &(u32, u32)| block_span(bat, i as usize, bs, virtual_size).unwrap_or((0, 0));
    for w in blocks.windows(2) {
        let (a, b) = (span(&w[0]), span(&w[1]));
        if b.0 < a.1 {
            return Err(DiskError::corrupt(
                path,
                "VHD BAT",
                entry_at(w[1].1),
                format!(
                    "entries {} and {} overlap: blocks at file offsets [{}, {}) and [{}, {})",
                    w[0].1, w[1].1, a.0, a.1, b.0, b.1
                ),
            ));
        }
    }
    // Blocks are disjoint and sorted, so their ends are sorted too.
    for &(ms, me, what) in meta {
        let k = blocks.partition_point(|b| span(b).1 <= ms);
        if let Some(b) = blocks.get(k) {
            let (s, e) = span(b);
            if s < me {
                return Err(DiskError::corrupt(
                    path,
                    "VHD BAT",
                    entry_at(b.1),
                    format!(
                        "entry {} puts a block at file offsets [{s}, {e}), overlapping the \
                         {what} at [{ms}, {me})",
                        b.1
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The parent's possible locations, most trusted first: `W2ru` (relative) locators, then
/// `W2ku` (absolute), then the bare file name from the header as a last resort. Unreadable
/// locators are skipped with a warning; the chain fails later if nothing resolves.
pub(super) fn parent_candidates(
    file: &dyn ReadAt,
    len: u64,
    header: &DynamicHeader,
) -> Vec<String> {
    let path = file.path();
    let mut out = Vec::new();
    for want in [PlatformCode::W2ru, PlatformCode::W2ku] {
        for loc in header
            .parent_locators
            .iter()
            .filter(|l| l.platform_code == want)
        {
            let fits = loc
                .data_offset
                .checked_add(loc.data_length as u64)
                .is_some_and(|e| e <= len);
            if loc.data_length == 0 || loc.data_length > MAX_LOCATOR_BYTES || !fits {
                tracing::warn!(path = %path.display(), offset = loc.data_offset,
                    length = loc.data_length, "skipping a parent locator outside the file");
                continue;
            }
            let decoded = read(file, loc.data_offset, loc.data_length as usize).and_then(|b| {
                decode_locator_path(&b).map_err(|e| DiskError::format(path, loc.data_offset, e))
            });
            match decoded {
                Ok(s) if !s.is_empty() => out.push(s),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable parent locator"),
            }
        }
    }
    if !header.parent_name.is_empty() {
        out.push(header.parent_name.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_block_spans_only_the_part_inside_the_virtual_size() {
        let bat = [4u32, BAT_ABSENT, 9000];
        let mib = 1u64 << 20;
        assert_eq!(
            block_span(&bat, 0, mib, 2 * mib + 512),
            Some((2048, 2048 + 512 + mib))
        );
        assert_eq!(block_span(&bat, 1, mib, 2 * mib + 512), None);
        assert_eq!(
            block_span(&bat, 2, mib, 2 * mib + 512),
            Some((9000 * 512, 9000 * 512 + 512 + 512))
        );
        assert_eq!(block_span(&bat, 3, mib, 2 * mib + 512), None);
    }
}

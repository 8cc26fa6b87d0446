//! Opening a VHDX: identifier, headers, log replay, region table, metadata and a validation
//! pass over the BAT. Every problem is reported with the file, the absolute offset and what is
//! wrong.

use std::path::Path;

use vdrep_proto::formats::vhdx::{
    bat::{BatEntry, BatGeometry, PayloadState, SB_BLOCK_PRESENT},
    header::{current_header, decode_identifier, Header, HEADER_SIZE},
    log::find_active_sequence,
    metadata::{decode_metadata, VhdxMetadata},
    region::{decode_region_table, Regions, REGION_TABLE_SIZE},
    HEADER_OFFSETS, MIB, REGION_TABLE_OFFSETS,
};

use super::replay::ReplayedFile;
use crate::disk::DiskError;
use crate::io::ReadAt;

/// Largest log vdrep replays in memory (Hyper-V and qemu write 1 MiB logs).
const MAX_LOG: u64 = 64 * MIB;
/// Largest metadata region read (items beyond are reported as out of range).
const MAX_METADATA: u64 = 32 * MIB;
/// BAT entries read per step of the validation pass (1 MiB).
const BAT_PAGE_ENTRIES: u64 = 128 * 1024;

/// Everything a reader needs, validated.
pub(super) struct Layout {
    pub file: Box<dyn ReadAt>,
    pub header: Header,
    pub meta: VhdxMetadata,
    pub geo: BatGeometry,
    pub bat_offset: u64,
    /// Sectors and ranges the log replay changed (0, 0 without replay).
    pub replayed: (usize, usize),
}

fn read(
    file: &dyn ReadAt,
    path: &Path,
    off: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, DiskError> {
    let mut b = vec![0u8; len as usize];
    file.read_exact_at(&mut b, off).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            DiskError::corrupt(
                path,
                what,
                off,
                format!("{len} bytes at offset {off} pass the end of the file: truncated"),
            )
        } else {
            DiskError::io(path, off, e)
        }
    })?;
    Ok(b)
}

/// Parses and validates the image behind `file`.
pub(super) fn open_layout(file: Box<dyn ReadAt>) -> Result<Layout, DiskError> {
    let path = file.path().to_path_buf();
    let p = path.as_path();
    let file_len = file.len().map_err(|e| DiskError::io(p, 0, e))?;
    let id = read(
        file.as_ref(),
        p,
        0,
        8.min(file_len),
        "VHDX file type identifier",
    )?;
    decode_identifier(&id).map_err(|e| DiskError::format(p, 0, e))?;
    let min = REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE as u64;
    if file_len < min {
        return Err(DiskError::corrupt(
            p,
            "VHDX header section",
            file_len,
            format!(
                "file is {file_len} bytes, shorter than the VHDX header section \
                 ({min} bytes at least): truncated"
            ),
        ));
    }
    let h1 = read(
        file.as_ref(),
        p,
        HEADER_OFFSETS[0],
        HEADER_SIZE as u64,
        "VHDX header",
    )?;
    let h2 = read(
        file.as_ref(),
        p,
        HEADER_OFFSETS[1],
        HEADER_SIZE as u64,
        "VHDX header",
    )?;
    let (header, which) = current_header(&h1, &h2).map_err(|e| DiskError::format(p, 0, e))?;
    tracing::debug!(path = %p.display(), header = which + 1, seq = header.sequence_number, "VHDX current header");

    // Log replay, in memory.
    let mut file = file;
    let mut replayed = (0, 0);
    if !header.log_guid.is_nil() && header.log_length > 0 {
        let lo = header.log_offset;
        let ll = u64::from(header.log_length);
        if ll > MAX_LOG {
            return Err(DiskError::Unsupported {
                path: path.clone(),
                what: format!(
                    "the log at offset {lo} is {ll} bytes; vdrep replays logs up to {MAX_LOG} \
                     bytes in memory. Open the disk once in Hyper-V to replay it"
                ),
            });
        }
        let log = read(file.as_ref(), p, lo, ll, "VHDX log")?;
        if let Some(seq) = find_active_sequence(&log, header.log_guid) {
            let head = seq
                .head()
                .map(|h| (h.flushed_file_offset, h.sequence_number));
            if let Some((flushed, hseq)) = head {
                if flushed > file_len {
                    return Err(DiskError::corrupt(
                        p,
                        "VHDX log entry",
                        lo + u64::from(seq.entries.last().map(|(o, _)| *o).unwrap_or(0)) + 48,
                        format!(
                            "log entry {hseq} says the file was at least {flushed} bytes \
                             (FlushedFileOffset) but it is {file_len}: truncated"
                        ),
                    ));
                }
            }
            let r = ReplayedFile::new(file, file_len, &seq);
            replayed = r.changes();
            tracing::info!(path = %p.display(), entries = seq.entries.len(), sectors = replayed.0,
                zero_ranges = replayed.1, "replayed the VHDX log in memory (the file is unchanged)");
            file = Box::new(r);
        }
    }
    let len = file.len().map_err(|e| DiskError::io(p, 0, e))?;

    // Region table, or its copy.
    let rt1 = read(
        file.as_ref(),
        p,
        REGION_TABLE_OFFSETS[0],
        REGION_TABLE_SIZE as u64,
        "VHDX region table",
    )?;
    let regions: Regions = match decode_region_table(&rt1) {
        Ok(r) => r,
        Err(e1) => {
            let rt2 = read(
                file.as_ref(),
                p,
                REGION_TABLE_OFFSETS[1],
                REGION_TABLE_SIZE as u64,
                "VHDX region table",
            )?;
            match decode_region_table(&rt2) {
                Ok(r) => {
                    tracing::warn!(path = %p.display(), error = %e1, "first VHDX region table is bad; using its copy at 256 KiB");
                    r
                }
                Err(e2) => {
                    return Err(DiskError::corrupt(
                        p,
                        "VHDX region tables",
                        REGION_TABLE_OFFSETS[0] + e1.offset,
                        format!(
                            "both copies are invalid: at {}: {}; at {}: {}",
                            REGION_TABLE_OFFSETS[0] + e1.offset,
                            e1.problem,
                            REGION_TABLE_OFFSETS[1] + e2.offset,
                            e2.problem
                        ),
                    ))
                }
            }
        }
    };
    for (name, r) in [("BAT", regions.bat), ("metadata", regions.metadata)] {
        if r.end() > len {
            return Err(DiskError::corrupt(
                p,
                "VHDX region table",
                REGION_TABLE_OFFSETS[0],
                format!(
                    "{name} region [{}, {}) passes the end of the {len}-byte file: truncated",
                    r.file_offset,
                    r.end()
                ),
            ));
        }
    }
    let lo = header.log_offset;
    let le = lo.saturating_add(u64::from(header.log_length));
    for (name, r) in [("BAT", regions.bat), ("metadata", regions.metadata)] {
        if header.log_length > 0 && r.file_offset < le && lo < r.end() {
            return Err(DiskError::corrupt(
                p,
                "VHDX header",
                HEADER_OFFSETS[which] + 72,
                format!(
                    "log [{lo}, {le}) overlaps the {name} region [{}, {})",
                    r.file_offset,
                    r.end()
                ),
            ));
        }
    }

    // Metadata.
    let mo = regions.metadata.file_offset;
    let mlen = u64::from(regions.metadata.length).min(MAX_METADATA);
    let mbuf = read(file.as_ref(), p, mo, mlen, "VHDX metadata region")?;
    let meta = decode_metadata(&mbuf).map_err(|e| DiskError::format(p, mo, e))?;
    let geo = BatGeometry::new(
        u64::from(meta.block_size),
        u64::from(meta.logical_sector_size),
        meta.virtual_size,
        meta.has_parent,
    )
    .map_err(|e| DiskError::format(p, mo, e))?;
    let need = geo.total_entries().saturating_mul(8);
    if need > u64::from(regions.bat.length) {
        return Err(DiskError::corrupt(
            p,
            "VHDX BAT region",
            regions.bat.file_offset,
            format!(
                "{} bytes hold {} entries, but a {}-byte disk with {}-byte blocks needs {} \
                 ({need} bytes)",
                regions.bat.length,
                regions.bat.length / 8,
                meta.virtual_size,
                meta.block_size,
                geo.total_entries()
            ),
        ));
    }
    validate_bat(file.as_ref(), p, len, &header, &regions, &geo)?;
    Ok(Layout {
        file,
        header,
        meta,
        geo,
        bat_offset: regions.bat.file_offset,
        replayed,
    })
}

/// What occupies each MiB of the file, to find blocks that overlap each other or a region.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Free,
    Headers,
    Log,
    Metadata,
    Bat,
    Payload(u64),
    Bitmap(u64),
}

impl Owner {
    fn describe(self) -> String {
        match self {
            Owner::Free => "nothing".into(),
            Owner::Headers => "the header section".into(),
            Owner::Log => "the log".into(),
            Owner::Metadata => "the metadata region".into(),
            Owner::Bat => "the BAT region".into(),
            Owner::Payload(b) => format!("payload block {b}"),
            Owner::Bitmap(c) => format!("the sector bitmap of chunk {c}"),
        }
    }
}

/// Walks the whole BAT once, page by page: states must be defined, allocated blocks must lie
/// inside the file and overlap nothing. Returns whether every payload block is fully present.
/// Memory: one page of entries plus one byte per MiB of file.
fn validate_bat(
    file: &dyn ReadAt,
    p: &Path,
    len: u64,
    header: &Header,
    regions: &Regions,
    geo: &BatGeometry,
) -> Result<(), DiskError> {
    let units = len.div_ceil(MIB) as usize;
    let mut owner = vec![Owner::Free; units];
    let mut mark = |s: u64, e: u64, who: Owner| -> Result<(), Owner> {
        for u in s / MIB..e.div_ceil(MIB) {
            let Some(slot) = owner.get_mut(u as usize) else {
                continue;
            };
            if *slot != Owner::Free {
                return Err(*slot);
            }
            *slot = who;
        }
        Ok(())
    };
    let _ = mark(0, MIB, Owner::Headers);
    if header.log_length > 0 {
        let _ = mark(
            header.log_offset,
            header.log_offset + u64::from(header.log_length),
            Owner::Log,
        );
    }
    let _ = mark(
        regions.metadata.file_offset,
        regions.metadata.end(),
        Owner::Metadata,
    );
    let _ = mark(regions.bat.file_offset, regions.bat.end(), Owner::Bat);

    let total = geo.total_entries();
    let mut i = 0u64;
    while i < total {
        let n = (total - i).min(BAT_PAGE_ENTRIES);
        let base = regions.bat.file_offset + i * 8;
        let page = read(file, p, base, n * 8, "VHDX BAT")?;
        for (k, raw) in page.chunks_exact(8).enumerate() {
            let idx = i + k as u64;
            let at = base + k as u64 * 8;
            let mut b8 = [0u8; 8];
            b8.copy_from_slice(raw);
            let e = BatEntry::from_le(b8);
            let (who, span) = match geo.block_of_index(idx) {
                None => {
                    let chunk = idx / (geo.chunk_ratio() + 1);
                    match e.state_code() {
                        0 => continue,
                        SB_BLOCK_PRESENT if geo.has_parent => (Owner::Bitmap(chunk), MIB),
                        SB_BLOCK_PRESENT => continue, // never read outside differencing disks
                        s => {
                            return Err(DiskError::corrupt(
                                p,
                                "VHDX BAT",
                                at,
                                format!(
                                    "sector bitmap entry of chunk {chunk} has undefined state {s}"
                                ),
                            ))
                        }
                    }
                }
                Some(block) => {
                    if block >= geo.data_blocks() {
                        continue; // padding entries of the last chunk
                    }
                    let span = geo
                        .block_size
                        .min(geo.virtual_size - block * geo.block_size);
                    match e.payload_state() {
                        PayloadState::FullyPresent => (Owner::Payload(block), span),
                        PayloadState::PartiallyPresent if geo.has_parent => {
                            (Owner::Payload(block), span)
                        }
                        PayloadState::PartiallyPresent => {
                            return Err(DiskError::corrupt(
                                p,
                                "VHDX BAT",
                                at,
                                format!(
                                    "payload block {block} is partially present, which only \
                                 differencing disks may be"
                                ),
                            ))
                        }
                        PayloadState::Reserved(s) => {
                            return Err(DiskError::corrupt(
                                p,
                                "VHDX BAT",
                                at,
                                format!("payload block {block} has reserved state {s}"),
                            ))
                        }
                        _ => {
                            continue;
                        }
                    }
                }
            };
            let off = e.file_offset();
            let end = off.saturating_add(span);
            if end > len {
                return Err(DiskError::corrupt(
                    p,
                    "VHDX BAT",
                    at,
                    format!(
                        "{} at file offset {off} (+{span} bytes) passes the end of the \
                     {len}-byte file: truncated or corrupt BAT",
                        who.describe()
                    ),
                ));
            }
            if let Err(other) = mark(off, end, who) {
                return Err(DiskError::corrupt(
                    p,
                    "VHDX BAT",
                    at,
                    format!(
                        "{} at file offset {off} overlaps {}",
                        who.describe(),
                        other.describe()
                    ),
                ));
            }
        }
        i += n;
    }
    Ok(())
}

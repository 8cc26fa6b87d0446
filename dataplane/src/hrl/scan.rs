//! Recovering the valid prefix of a log that was not closed (`EOLLocation` 0).
//!
//! The default reader refuses such logs ([`HrlError::NotClosed`]): shipping a torn log as if
//! it were a whole cycle would lose writes silently. After a crash, though, an operator (or
//! the change tracker reopening its own log) wants what was completely written. Because a
//! metadata block *follows* its data, nothing says where the next block starts; the scan
//! therefore tries every 512-byte boundary after the last accepted block and accepts a
//! candidate only if its header checksum is right, its `PreviousMetadataLocation` points
//! exactly at the last accepted block, every entry verifies, its entries' lengths fill the
//! gap exactly, and every recorded `DataChecksum` matches. The result says explicitly that
//! the log was not closed, so no caller mistakes a prefix for a complete cycle.

use std::path::Path;
use std::sync::Arc;

use vdrep_proto::formats::hrl::{decode_block, MetadataEntry, HEADER_SIZE};

use super::error::HrlError;
use super::reader::{
    block_header_ok, effective_disk_size, place_block, read_exact, read_header, stream_sum, HrlLog,
    LogEntry, ReadOptions, READ_CHUNK,
};
use crate::io::ReadAt;

/// A log read as far as it is valid.
#[derive(Debug, Clone)]
pub struct ScannedLog {
    /// The verified entries (the whole log when `closed`).
    pub log: HrlLog,
    /// True when the writer closed the log: the prefix is the whole log.
    pub closed: bool,
    /// Bytes after the last valid block (a torn append, or preallocated space).
    pub trailing_bytes: u64,
}

/// Reads a log, accepting an unclosed one up to its last completely written block. A closed
/// log is read exactly as [`HrlLog::open`] reads it (and fails the same way).
pub fn scan_valid_prefix(path: &Path, opts: &ReadOptions) -> Result<ScannedLog, HrlError> {
    let file: Arc<dyn ReadAt> =
        Arc::from(crate::io::open(path).map_err(|e| HrlError::io(path, "open", 0, e))?);
    let (header, file_len) = read_header(path, file.as_ref())?;
    if header.eol_location != 0 {
        let log = HrlLog::open_with(path, file, opts)?;
        let trailing_bytes = file_len.saturating_sub(log.valid_end);
        return Ok(ScannedLog {
            log,
            closed: true,
            trailing_bytes,
        });
    }
    let disk_size = effective_disk_size(&header, opts);
    let m = header.metadata_size as u64;
    let capacity = header.block_capacity();
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut region_start = HEADER_SIZE as u64;
    let mut last_block: Option<u64> = None;
    let mut pos = region_start;
    // A window of the file, so candidates cost no syscall each.
    let mut window: (u64, bytes::BytesMut) = (0, bytes::BytesMut::new());
    while pos.checked_add(m).is_some_and(|e| e <= file_len) {
        let in_window = pos >= window.0 && pos + 32 <= window.0 + window.1.len() as u64;
        if !in_window {
            let n = (file_len - pos).min(READ_CHUNK as u64) as usize;
            window = (pos, read_exact(path, file.as_ref(), pos, n)?);
        }
        let rel = (pos - window.0) as usize;
        let hdr = window
            .1
            .get(rel..rel + 32)
            .and_then(|b| block_header_ok(b, capacity));
        let prev_ok = |d: u64| match last_block {
            None => d == 0,
            Some(lb) => d == pos - lb,
        };
        if hdr.is_some_and(|h| prev_ok(h.previous_metadata_location)) {
            let block = accept(
                path,
                file.as_ref(),
                pos,
                region_start,
                m,
                header.metadata_size,
                disk_size,
            )?;
            if let Some(block) = block {
                place_block(path, pos, region_start, &block, &mut entries)?;
                region_start = pos + m;
                last_block = Some(pos);
                pos = region_start;
                continue;
            }
        }
        pos += 512;
    }
    let log = HrlLog {
        path: path.to_path_buf(),
        file,
        header,
        entries,
        closed: false,
        valid_end: region_start,
    };
    // `accept` already verified every recorded DataChecksum of the accepted blocks.
    Ok(ScannedLog {
        trailing_bytes: file_len.saturating_sub(region_start),
        log,
        closed: false,
    })
}

/// Decodes the candidate block at `pos` and checks that it fills the gap after the last
/// accepted block exactly and that its recorded data checksums match.
fn accept(
    path: &Path,
    file: &dyn ReadAt,
    pos: u64,
    region_start: u64,
    m: u64,
    metadata_size: u32,
    disk_size: Option<u64>,
) -> Result<Option<Vec<MetadataEntry>>, HrlError> {
    let buf = read_exact(path, file, pos, m as usize)?;
    let Ok((_, block)) = decode_block(&buf, metadata_size, disk_size) else {
        return Ok(None);
    };
    let described: u64 = block.iter().map(|e| e.data_length as u64).sum();
    if described != pos - region_start {
        return Ok(None);
    }
    let mut at = region_start;
    for e in &block {
        if e.data_checksum != 0
            && stream_sum(path, file, at, e.data_length as u64)? != e.data_checksum
        {
            return Ok(None);
        }
        at += e.data_length as u64;
    }
    Ok(Some(block))
}

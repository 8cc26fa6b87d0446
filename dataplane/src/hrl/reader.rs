//! Reading a closed HRL log: verify the header, walk the metadata blocks back from
//! `EOLLocation`, then replay forward, so entries come out oldest first with the file
//! position of their data. Data are read lazily (and checksummed in bounded chunks), so
//! memory stays proportional to the number of entries, never to the size of the log.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use vdrep_proto::formats::hrl::{
    decode_block, BlockHeader, ByteSum, Defect, LogHeader, MetadataEntry, Structure, COOKIE,
    HEADER_SIZE,
};

use super::error::HrlError;
use crate::io::ReadAt;

/// Largest read the reader issues, so checksumming a huge entry stays within bounded memory.
pub const READ_CHUNK: usize = 1 << 20;

/// How to read a log.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Size of the virtual disk the log belongs to: entries reaching past it are corrupt.
    /// `None` uses the header's `CurrentSize` when it is non-zero.
    pub disk_size: Option<u64>,
    /// Verify every non-zero `DataChecksum` while opening (reads all data once).
    pub verify_data: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            disk_size: None,
            verify_data: true,
        }
    }
}

/// One write recorded in a log, in replay order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    /// 1-based position in the log: entry `n` happened before entry `n + 1`.
    pub seq: u64,
    /// Disk offset written.
    pub disk_offset: u64,
    /// Bytes written (a non-zero multiple of 512).
    pub length: u32,
    /// Where the data lie in the log file.
    pub file_offset: u64,
    /// Time of the write, seconds since 2000-01-01 UTC.
    pub timestamp: u32,
    /// Checksum of the data; 0 = not recorded.
    pub data_checksum: u32,
    /// File offset of the metadata block holding the entry.
    pub block_offset: u64,
    /// Slot of the entry in its block.
    pub slot: u32,
}

/// A log whose structure has been verified. Cheap to clone (the file is shared).
#[derive(Clone)]
pub struct HrlLog {
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn ReadAt>,
    pub(crate) header: LogHeader,
    pub(crate) entries: Vec<LogEntry>,
    pub(crate) closed: bool,
    pub(crate) valid_end: u64,
}

impl std::fmt::Debug for HrlLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HrlLog")
            .field("path", &self.path)
            .field("unique_id", &self.header.unique_id)
            .field("entries", &self.entries.len())
            .field("closed", &self.closed)
            .finish()
    }
}

/// True when the first bytes of a file are the HRL cookie, so `inspect` can tell logs from
/// disk images by content.
pub fn has_hrl_cookie(first_bytes: &[u8]) -> bool {
    first_bytes.get(..COOKIE.len()) == Some(COOKIE.as_slice())
}

impl HrlLog {
    /// Opens and verifies a closed log. A log with `EOLLocation` 0 is refused with
    /// [`HrlError::NotClosed`]: its tail may be torn, and shipping part of a cycle as if it
    /// were all of it would corrupt the replica silently.
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<HrlLog, HrlError> {
        let file: Arc<dyn ReadAt> =
            Arc::from(crate::io::open(path).map_err(|e| HrlError::io(path, "open", 0, e))?);
        Self::open_with(path, file, opts)
    }

    /// Like [`HrlLog::open`], on an already opened file (tests inject backends here).
    pub fn open_with(
        path: &Path,
        file: Arc<dyn ReadAt>,
        opts: &ReadOptions,
    ) -> Result<HrlLog, HrlError> {
        let (header, file_len) = read_header(path, file.as_ref())?;
        if header.eol_location == 0 {
            return Err(HrlError::NotClosed {
                path: path.to_path_buf(),
            });
        }
        let disk_size = effective_disk_size(&header, opts);
        let m = header.metadata_size as u64;
        let eol = header.eol_location;
        let min = HEADER_SIZE as u64 + m;
        if eol < min {
            return Err(HrlError::corrupt(
                path,
                44,
                Defect::OutsideFile {
                    what: "EOLLocation",
                    location: eol,
                    min,
                    max: file_len,
                },
            ));
        }
        if eol > file_len {
            return Err(HrlError::corrupt(
                path,
                file_len,
                Defect::Truncated {
                    need: eol,
                    len: file_len,
                },
            ));
        }
        // Walk back from the last block to the first.
        let mut blocks: Vec<(u64, Vec<MetadataEntry>)> = Vec::new();
        let mut pos = eol - m;
        loop {
            let buf = read_exact(path, file.as_ref(), pos, m as usize)?;
            let (h, entries) = decode_block(&buf, header.metadata_size, disk_size)
                .map_err(|(off, d)| HrlError::corrupt(path, pos + off, d))?;
            blocks.push((pos, entries));
            let d = h.previous_metadata_location;
            if d == 0 {
                break;
            }
            match pos.checked_sub(d) {
                Some(prev) if d >= m && prev >= HEADER_SIZE as u64 => pos = prev,
                _ => {
                    return Err(HrlError::corrupt(
                        path,
                        pos,
                        Defect::OutsideFile {
                            what: "PreviousMetadataLocation",
                            location: pos.wrapping_sub(d),
                            min: HEADER_SIZE as u64,
                            max: pos.saturating_sub(m),
                        },
                    ))
                }
            }
        }
        blocks.reverse();
        let mut entries = Vec::new();
        let mut region_start = HEADER_SIZE as u64;
        for (pos, block) in &blocks {
            place_block(path, *pos, region_start, block, &mut entries)?;
            region_start = pos + m;
        }
        let found = entries.len() as u64;
        if found != header.total_metadata_entries {
            return Err(HrlError::corrupt(
                path,
                96,
                Defect::EntryCountMismatch {
                    header: header.total_metadata_entries,
                    found,
                },
            ));
        }
        let log = HrlLog {
            path: path.to_path_buf(),
            file,
            header,
            entries,
            closed: true,
            valid_end: eol,
        };
        if opts.verify_data {
            for e in &log.entries {
                log.verify_entry_data(e)?;
            }
        }
        Ok(log)
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The verified header.
    pub fn header(&self) -> &LogHeader {
        &self.header
    }
    /// Entries in replay order (oldest first).
    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }
    /// Whether the writer closed the log (always true for [`HrlLog::open`]).
    pub fn closed(&self) -> bool {
        self.closed
    }
    /// End of the last verified metadata block.
    pub fn valid_end(&self) -> u64 {
        self.valid_end
    }
    /// Sum of the entries' lengths.
    pub fn data_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.length as u64).sum()
    }

    /// Reads `len` bytes of the log file at `file_offset` (a piece of an entry's data, as
    /// [`crate::hrl::coalesce`] hands them out). Callers keep `len` bounded.
    pub fn read_range(&self, file_offset: u64, len: usize) -> Result<Bytes, HrlError> {
        Ok(read_exact(&self.path, self.file.as_ref(), file_offset, len)?.freeze())
    }

    /// Fills `buf` from the log file at `file_offset`, without allocating (the digest
    /// refresh assembles 1 MiB blocks from many pieces).
    pub fn read_range_into(&self, file_offset: u64, buf: &mut [u8]) -> Result<(), HrlError> {
        read_into(&self.path, self.file.as_ref(), file_offset, buf)
    }

    /// Reads one entry's data and checks its `DataChecksum` when recorded. The whole entry is
    /// held in memory: use [`HrlLog::read_range`] for bounded pieces of large entries.
    pub fn read_data(&self, e: &LogEntry) -> Result<Bytes, HrlError> {
        let b = self.read_range(e.file_offset, e.length as usize)?;
        if e.data_checksum != 0 {
            let mut s = ByteSum::default();
            s.update(&b);
            check_data(&self.path, e, s.finish())?;
        }
        Ok(b)
    }

    /// Streams an entry's data in bounded chunks and checks its `DataChecksum`.
    pub fn verify_entry_data(&self, e: &LogEntry) -> Result<(), HrlError> {
        if e.data_checksum == 0 {
            return Ok(());
        }
        let computed = stream_sum(
            &self.path,
            self.file.as_ref(),
            e.file_offset,
            e.length as u64,
        )?;
        check_data(&self.path, e, computed)
    }
}

pub(crate) fn effective_disk_size(header: &LogHeader, opts: &ReadOptions) -> Option<u64> {
    opts.disk_size
        .or((header.current_size != 0).then_some(header.current_size))
}

/// Reads and validates only the header of the log at `path`, without scanning its
/// entries: a log switch prepares the next log from the active one's `UniqueId` without the
/// tracking lock (appends never rewrite the header; only closing does).
pub fn read_log_header(path: &Path) -> Result<LogHeader, HrlError> {
    let file = crate::io::PreadFile::open(path).map_err(|e| HrlError::io(path, "open", 0, e))?;
    Ok(read_header(path, &file)?.0)
}

/// Reads and validates the header; returns it with the file length.
pub(crate) fn read_header(path: &Path, file: &dyn ReadAt) -> Result<(LogHeader, u64), HrlError> {
    let len = file.len().map_err(|e| HrlError::io(path, "stat", 0, e))?;
    let have = len.min(HEADER_SIZE as u64) as usize;
    let buf = read_exact(path, file, 0, have)?;
    if !has_hrl_cookie(&buf) {
        let shown = buf.get(..8).unwrap_or(&buf);
        return Err(HrlError::corrupt(
            path,
            0,
            Defect::BadCookie(String::from_utf8_lossy(shown).into_owned()),
        ));
    }
    if have < HEADER_SIZE {
        return Err(HrlError::corrupt(
            path,
            len,
            Defect::Truncated {
                need: HEADER_SIZE as u64,
                len,
            },
        ));
    }
    let h = LogHeader::parse(&buf).map_err(|e| {
        HrlError::corrupt(
            path,
            e.offset,
            Defect::Truncated {
                need: HEADER_SIZE as u64,
                len,
            },
        )
    })?;
    h.validate(&buf)
        .map_err(|(off, d)| HrlError::corrupt(path, off, d))?;
    Ok((h, len))
}

/// Assigns file offsets to a block's entries: their data lie back to back, in slot order,
/// between `region_start` (the previous block's end, or the header's) and the block.
pub(crate) fn place_block(
    path: &Path,
    block_pos: u64,
    region_start: u64,
    block: &[MetadataEntry],
    out: &mut Vec<LogEntry>,
) -> Result<(), HrlError> {
    let region = block_pos.saturating_sub(region_start);
    let described: u64 = block.iter().map(|e| e.data_length as u64).sum();
    if described != region || block_pos < region_start {
        return Err(HrlError::corrupt(
            path,
            block_pos,
            Defect::DataSizeMismatch { described, region },
        ));
    }
    let mut at = region_start;
    for (slot, e) in block.iter().enumerate() {
        out.push(LogEntry {
            seq: out.len() as u64 + 1,
            disk_offset: e.byte_offset,
            length: e.data_length,
            file_offset: at,
            timestamp: e.timestamp,
            data_checksum: e.data_checksum,
            block_offset: block_pos,
            slot: slot as u32,
        });
        at += e.data_length as u64;
    }
    Ok(())
}

fn check_data(path: &Path, e: &LogEntry, computed: u32) -> Result<(), HrlError> {
    if computed != e.data_checksum {
        return Err(HrlError::corrupt(
            path,
            e.file_offset,
            Defect::Checksum {
                structure: Structure::Data { slot: e.slot },
                stored: e.data_checksum,
                computed,
            },
        ));
    }
    Ok(())
}

/// Byte-sum checksum of `len` bytes at `offset`, read in chunks of at most [`READ_CHUNK`].
pub(crate) fn stream_sum(
    path: &Path,
    file: &dyn ReadAt,
    offset: u64,
    len: u64,
) -> Result<u32, HrlError> {
    let mut s = ByteSum::default();
    let mut buf = vec![0u8; (len as usize).min(READ_CHUNK)];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(READ_CHUNK);
        let chunk = &mut buf[..n];
        read_into(path, file, offset + done, chunk)?;
        s.update(chunk);
        done += n as u64;
    }
    Ok(s.finish())
}

pub(crate) fn read_into(
    path: &Path,
    file: &dyn ReadAt,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), HrlError> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            let len = file.len().unwrap_or(0);
            HrlError::corrupt(
                path,
                offset,
                Defect::Truncated {
                    need: offset.saturating_add(buf.len() as u64),
                    len,
                },
            )
        } else {
            HrlError::io(path, "read", offset, e)
        }
    })
}

pub(crate) fn read_exact(
    path: &Path,
    file: &dyn ReadAt,
    offset: u64,
    len: usize,
) -> Result<BytesMut, HrlError> {
    let mut b = BytesMut::zeroed(len);
    read_into(path, file, offset, &mut b)?;
    Ok(b)
}

/// Parses only a block header at `buf` (used by the forward scan).
pub(crate) fn block_header_ok(buf: &[u8], capacity: u32) -> Option<BlockHeader> {
    let h = BlockHeader::parse(buf).ok()?;
    h.validate(buf, capacity).ok()?;
    Some(h)
}

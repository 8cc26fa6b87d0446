//! Writing HRL logs the way Hyper-V's change tracker does: a header, an empty first metadata
//! block, then for every append the data followed by the metadata block(s) describing it.
//!
//! Crash safety: while the log is open its header says `EOLLocation` 0 and is not touched
//! again, so a crash can only tear the tail (data or a block after the last completed
//! append). Every block carries checksums and every entry a `DataChecksum`, so a torn tail is
//! detected and [`crate::hrl::scan_valid_prefix`] recovers exactly the completed appends.
//! `close` rewrites only the header's first 512-byte sector (where `Checksum`,
//! `EOLLocation`, `LastModifiedTimeStamp` and `TotalMetadataEntries` live; the rest of the
//! header is unchanged), and a sector write is atomic on the disks Hyper-V supports.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use vdrep_proto::formats::hrl::{
    data_checksum, encode_block, timestamp_from_unix, LogHeader, MetadataEntry,
    DEFAULT_METADATA_SIZE, HEADER_SIZE, OP_WRITE, VERSION_1, VERSION_2,
};
use vdrep_proto::Guid;

use super::error::HrlError;

/// Largest data one entry carries; larger writes are split into several entries.
pub const MAX_ENTRY_BYTES: usize = 1 << 30;

/// What a new log records about itself.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// [`VERSION_2`] (default) or [`VERSION_1`].
    pub version: u32,
    /// This log's id.
    pub unique_id: Guid,
    /// The log this one continues (nil for the first).
    pub previous_unique_id: Guid,
    /// Size of the tracked virtual disk (`OriginalSize` and `CurrentSize`).
    pub disk_size: u64,
    /// Size of each metadata block (default 4096).
    pub metadata_size: u32,
    /// `Vhd2DataWriteGuid` (version 2 only).
    pub vhd2_data_write_guid: Option<Guid>,
    /// Record a `DataChecksum` per entry (default true; the spec's example has none).
    pub data_checksums: bool,
    /// Creation time.
    pub now: SystemTime,
}

impl WriterOptions {
    /// Version 2, 4096-byte metadata blocks, data checksums on.
    pub fn new(unique_id: Guid, previous_unique_id: Guid, disk_size: u64, now: SystemTime) -> Self {
        WriterOptions {
            version: VERSION_2,
            unique_id,
            previous_unique_id,
            disk_size,
            metadata_size: DEFAULT_METADATA_SIZE,
            vhd2_data_write_guid: None,
            data_checksums: true,
            now,
        }
    }
}

/// An open log being appended to.
#[derive(Debug)]
pub struct HrlWriter {
    path: PathBuf,
    file: File,
    header: LogHeader,
    data_checksums: bool,
    /// Where the next data go: the end of the last block.
    end: u64,
    last_block: u64,
    total_entries: u64,
}

fn hrl_time(t: SystemTime) -> u32 {
    timestamp_from_unix(
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

impl HrlWriter {
    /// Creates (or replaces) `path` with an open, empty log: header with `EOLLocation` 0 and
    /// an empty first metadata block, both durable when this returns.
    pub fn create(path: &Path, opts: &WriterOptions) -> Result<HrlWriter, HrlError> {
        let ms = opts.metadata_size;
        if ms < 512 || ms & 511 != 0 || ms > 16 << 20 {
            return Err(HrlError::InvalidWrite {
                path: path.to_path_buf(),
                problem: format!("metadata size {ms} is not a multiple of 512 in 512..=16 MiB"),
            });
        }
        if opts.version != VERSION_1 && opts.version != VERSION_2 {
            return Err(HrlError::InvalidWrite {
                path: path.to_path_buf(),
                problem: format!("log format version {:#x} is not 1.0 or 2.0", opts.version),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| HrlError::io(path, "create", 0, e))?;
        let ts = hrl_time(opts.now);
        let mut header = LogHeader {
            version: opts.version,
            timestamp: ts,
            creator_application: *b"ct\0\0",
            creator_version: 0x0001_0000,
            original_size: opts.disk_size,
            current_size: opts.disk_size,
            checksum: 0,
            eol_location: 0,
            error_code: 0,
            metadata_size: ms,
            unique_id: opts.unique_id,
            previous_unique_id: opts.previous_unique_id,
            last_modified_timestamp: ts,
            total_metadata_entries: 0,
            file_type: 0,
            flags: [0, 0],
            vhd2_data_write_guid: (opts.version == VERSION_2)
                .then_some(opts.vhd2_data_write_guid.unwrap_or_default()),
        };
        let w = HrlWriter {
            path: path.to_path_buf(),
            file,
            data_checksums: opts.data_checksums,
            end: HEADER_SIZE as u64 + ms as u64,
            last_block: HEADER_SIZE as u64,
            total_entries: 0,
            header: header.clone(),
        };
        w.write_at(&header.encode(), 0)?;
        w.write_at(&encode_block(0, &mut [], ms), HEADER_SIZE as u64)?;
        w.sync()?;
        Ok(w)
    }

    /// Reopens an open (not closed) log to append to it, as another process left it: the
    /// valid prefix is kept and a torn append after it is cut off, so the log stays valid.
    /// A closed log is refused: appending after `EOLLocation` would lose writes.
    pub fn reopen(path: &Path, disk_size: Option<u64>) -> Result<HrlWriter, HrlError> {
        let scanned = super::scan_valid_prefix(
            path,
            &super::ReadOptions {
                disk_size,
                ..Default::default()
            },
        )?;
        if scanned.closed {
            return Err(HrlError::InvalidWrite {
                path: path.to_path_buf(),
                problem: "the log is closed (EOLLocation set); writes go to the next log".into(),
            });
        }
        let header = scanned.log.header().clone();
        let end = scanned.log.valid_end();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| HrlError::io(path, "open", 0, e))?;
        if scanned.trailing_bytes > 0 {
            file.set_len(end)
                .map_err(|e| HrlError::io(path, "truncate torn append", end, e))?;
        }
        Ok(HrlWriter {
            path: path.to_path_buf(),
            file,
            data_checksums: true,
            last_block: end - header.metadata_size as u64,
            total_entries: scanned.log.entries().len() as u64,
            end,
            header,
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// This log's id (the next log's `PreviousUniqueId`).
    pub fn unique_id(&self) -> Guid {
        self.header.unique_id
    }
    /// Entries written so far.
    pub fn total_entries(&self) -> u64 {
        self.total_entries
    }

    /// Appends `writes` (disk offset, data), oldest first: their data, then metadata blocks
    /// of at most `(MetadataSize - 32) / 32` entries each. Durable when this returns. Each
    /// write must be a non-empty multiple of 512 bytes inside the disk.
    pub fn append(&mut self, writes: &[(u64, Bytes)], now: SystemTime) -> Result<(), HrlError> {
        let ts = hrl_time(now);
        let mut split: Vec<(u64, Bytes)> = Vec::with_capacity(writes.len());
        for (off, data) in writes {
            self.check_write(*off, data.len())?;
            let mut at = 0usize;
            while at < data.len() {
                let n = (data.len() - at).min(MAX_ENTRY_BYTES);
                split.push((off + at as u64, data.slice(at..at + n)));
                at += n;
            }
        }
        let cap = self.header.block_capacity().max(1) as usize;
        for batch in split.chunks(cap) {
            let mut entries = Vec::with_capacity(batch.len());
            let mut pos = self.end;
            for (off, data) in batch {
                self.write_at(data, pos)?;
                pos += data.len() as u64;
                entries.push(MetadataEntry {
                    byte_offset: *off,
                    checksum: 0,
                    data_length: data.len() as u32,
                    timestamp: ts,
                    meta_operation: OP_WRITE,
                    data_checksum: if self.data_checksums {
                        data_checksum(data)
                    } else {
                        0
                    },
                    location: 0,
                });
            }
            let block = encode_block(
                pos - self.last_block,
                &mut entries,
                self.header.metadata_size,
            );
            self.write_at(&block, pos)?;
            self.last_block = pos;
            self.end = pos + self.header.metadata_size as u64;
            self.total_entries += entries.len() as u64;
        }
        self.header.last_modified_timestamp = ts;
        self.sync()
    }

    /// Closes the log: records `EOLLocation`, `TotalMetadataEntries` and the modification
    /// time, recomputes the header checksum, and makes it durable. Returns `EOLLocation`.
    pub fn close(mut self, now: SystemTime) -> Result<u64, HrlError> {
        self.header.eol_location = self.end;
        self.header.total_metadata_entries = self.total_entries;
        self.header.last_modified_timestamp = hrl_time(now);
        let h = self.header.encode();
        // Only the first sector changed: write it alone so the update is atomic.
        self.write_at(&h[..512], 0)?;
        self.file
            .set_len(self.end)
            .map_err(|e| HrlError::io(&self.path, "truncate", self.end, e))?;
        self.sync()?;
        Ok(self.end)
    }

    fn check_write(&self, off: u64, len: usize) -> Result<(), HrlError> {
        let bad = |problem: String| {
            Err(HrlError::InvalidWrite {
                path: self.path.clone(),
                problem,
            })
        };
        if len == 0 || len & 511 != 0 {
            return bad(format!("write of {len} bytes at disk offset {off} is not a non-empty multiple of 512 bytes"));
        }
        let end = off.checked_add(len as u64);
        if end.is_none_or(|e| e > self.header.current_size) {
            return bad(format!(
                "write of {len} bytes at disk offset {off} ends past the disk's {} bytes",
                self.header.current_size
            ));
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), HrlError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| HrlError::io(&self.path, "write", offset, e))
    }

    fn sync(&self) -> Result<(), HrlError> {
        self.file
            .sync_data()
            .map_err(|e| HrlError::io(&self.path, "sync", 0, e))
    }
}

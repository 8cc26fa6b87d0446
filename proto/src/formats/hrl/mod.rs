//! [MS-HRL] Hyper-V Replica Log files, little-endian, as Hyper-V Replica writes them to track
//! the writes a VM makes between two replication cycles.
//!
//! Layout of a log (sizes in bytes; `M` = the header's `MetadataSize`, 4096 by default):
//!
//! ```text
//! 0      header (4096)
//! 4096   data of block 1's entries, back to back, in slot order
//!        metadata block 1 (M): 32-byte block header, then 32-byte entries
//!        data of block 2's entries
//!        metadata block 2 (M) ...
//! EOL    = end of the last metadata block (the header's EOLLocation; 0 while the log is open)
//! ```
//!
//! A metadata block *follows* the data it describes, so a reader starts at
//! `EOLLocation - M`, walks back through `PreviousMetadataLocation` (a distance in bytes, 0
//! for the first block) and then replays forward. Hyper-V begins every log with an empty
//! block right after the header (the spec's example: header at 0, empty block at 4096, data
//! 8192..328192, a 58-entry block at 328192, EOL 332288).
//!
//! Slot order: the spec's example prints a block's entries from the last slot to the first
//! (69 empty rows, then ids 58 down to 1), and its ids are chronological (id 1 has the
//! earliest timestamp). vdrep therefore reads slots `0..n` as entries `1..n`, oldest first,
//! and lays their data out in that order. Later entries overwrite earlier ones.
//!
//! - [`checksum`]: the inverted 32-bit byte sum every structure uses.
//! - [`header`]: the 4096-byte log header.
//! - [`metadata`]: metadata block headers and entries.
//! - [`Defect`]: every way an HRL structure can be wrong, for the IO layer to attach a file
//!   name and an absolute offset to.

pub mod checksum;
pub mod header;
pub mod metadata;

pub use checksum::{checksum_skipping, data_checksum, ByteSum};
pub use header::{LogHeader, COOKIE, HEADER_SIZE, VERSION_1, VERSION_2};
pub use metadata::{
    decode_block, encode_block, BlockHeader, MetadataEntry, BLOCK_HEADER_SIZE,
    DEFAULT_METADATA_SIZE, ENTRY_SIZE, OP_WRITE,
};

/// Seconds between the Unix epoch and the HRL epoch (2000-01-01 00:00:00 UTC), which HRL
/// timestamps count from, like VHD's.
pub const HRL_EPOCH_UNIX: u64 = 946_684_800;

/// Converts Unix seconds to an HRL timestamp, saturating outside 2000..2136, so callers with
/// a clock (the data plane) never hand this crate a time it cannot store.
pub fn timestamp_from_unix(unix_secs: u64) -> u32 {
    unix_secs
        .saturating_sub(HRL_EPOCH_UNIX)
        .min(u32::MAX as u64) as u32
}

/// Which structure a checksum belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// The 4096-byte log header.
    Header,
    /// The 32-byte header of a metadata block.
    BlockHeader,
    /// The metadata entry in this slot (0-based) of its block.
    Entry {
        /// Slot index inside the block.
        slot: u32,
    },
    /// The data described by the entry in this slot of its block.
    Data {
        /// Slot index inside the block.
        slot: u32,
    },
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Structure::Header => write!(f, "log header"),
            Structure::BlockHeader => write!(f, "metadata block header"),
            Structure::Entry { slot } => write!(f, "metadata entry in slot {slot}"),
            Structure::Data { slot } => write!(f, "data of the metadata entry in slot {slot}"),
        }
    }
}

/// Everything that can be wrong with an HRL log. None of these heals by itself: a log with a
/// defect cannot be shipped, and the disk needs a resynchronisation (DESIGN.md §1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Defect {
    /// The first eight bytes are not `msctlog\0`: not an HRL file.
    #[error("cookie is {0:?}, expected \"msctlog\": not a Hyper-V Replica Log")]
    BadCookie(String),
    /// `LogFormatVersion` is neither 1.0 nor 2.0.
    #[error("LogFormatVersion {0:#010x} is not supported (expected 0x00010000 or 0x00020000)")]
    UnsupportedVersion(u32),
    /// A stored checksum does not match the bytes.
    #[error("{structure} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Whose checksum.
        structure: Structure,
        /// The value in the file.
        stored: u32,
        /// The value the bytes give.
        computed: u32,
    },
    /// `MetadataSize` is not a multiple of 512 between 512 bytes and 16 MiB.
    #[error("MetadataSize {0} is not a multiple of 512 between 512 and 16 MiB")]
    BadMetadataSize(u32),
    /// The writer recorded an error in the header: the log may miss writes.
    #[error("the log's ErrorCode is {0:#010x}: its writer failed, the log may miss writes (resynchronise the disk)")]
    LoggedError(i32),
    /// More valid entries than a block holds.
    #[error("{count} valid entries, but a block of this size holds at most {capacity}")]
    TooManyEntries {
        /// `ValidMetadataEntries`.
        count: u32,
        /// `(MetadataSize - 32) / 32`.
        capacity: u32,
    },
    /// An entry that writes nothing.
    #[error("metadata entry in slot {slot} has DataLength 0")]
    ZeroLength {
        /// Slot index.
        slot: u32,
    },
    /// Writes are whole sectors; anything else is corruption.
    #[error("metadata entry in slot {slot} has DataLength {length}, not a multiple of 512")]
    UnalignedLength {
        /// Slot index.
        slot: u32,
        /// The length.
        length: u32,
    },
    /// The write reaches past the end of the virtual disk.
    #[error("metadata entry in slot {slot} writes {length} bytes at disk offset {offset}, past the disk's end at {disk_size}")]
    PastDiskEnd {
        /// Slot index.
        slot: u32,
        /// Disk offset.
        offset: u64,
        /// Length.
        length: u32,
        /// Size of the virtual disk.
        disk_size: u64,
    },
    /// `MetaOperation` other than 1 (write).
    #[error(
        "metadata entry in slot {slot} has unknown MetaOperation {op} (only 1 = write is defined)"
    )]
    UnknownOperation {
        /// Slot index.
        slot: u32,
        /// The value.
        op: u8,
    },
    /// A metadata block (or `EOLLocation`) points before the first data byte or past the end.
    #[error("{what} {location} points outside the log (valid range {min}..={max})")]
    OutsideFile {
        /// Which pointer.
        what: &'static str,
        /// Where it points (absolute).
        location: u64,
        /// Lowest valid value.
        min: u64,
        /// Highest valid value.
        max: u64,
    },
    /// The file ends before a structure the header says exists.
    #[error("the file is truncated: {need} bytes needed, it has {len}")]
    Truncated {
        /// Bytes the structures need.
        need: u64,
        /// File length.
        len: u64,
    },
    /// The entries of a block describe more or less data than lies before the block.
    #[error("the block's entries describe {described} bytes of data, but {region} bytes lie between it and the previous block")]
    DataSizeMismatch {
        /// Sum of `DataLength`.
        described: u64,
        /// Gap between the previous block's end and this block.
        region: u64,
    },
    /// The header's `TotalMetadataEntries` disagrees with the blocks.
    #[error("header says TotalMetadataEntries {header}, the blocks hold {found}")]
    EntryCountMismatch {
        /// Header value.
        header: u64,
        /// Sum over blocks.
        found: u64,
    },
}

//! Hyper-V Replica Log ([MS-HRL]) files in the data plane: reading closed logs (and the
//! valid prefix of unclosed ones), writing logs as the change tracker does, ordering logs
//! into chains, and coalescing a cycle's writes into the extents to ship.
//!
//! The on-disk structures and their checksums are decoded by
//! [`vdrep_proto::formats::hrl`]; this module adds files, offsets and policy.
//!
//! Decisions:
//! - **Slot order**: a block's slots `0..n` are entries `1..n`, oldest first, and their data
//!   lie back to back in that order before the block (see the proto module for why).
//! - **Unclosed logs**: [`HrlLog::open`] refuses them ([`HrlError::NotClosed`]);
//!   [`scan_valid_prefix`] recovers the completely written prefix and says so explicitly.
//! - **Disk size**: entries past the disk's end are corruption; the size is the caller's,
//!   else the header's `CurrentSize`.
//! - **ErrorCode**: a non-zero `ErrorCode` means the tracker failed and writes may be
//!   missing, so the log is refused (the disk needs a resync).

mod chain;
pub mod coalesce;
mod error;
mod reader;
mod scan;
#[cfg(test)]
mod tests;
mod writer;

pub use chain::HrlChain;
pub use coalesce::{coalesce, coalesce_chain, coalesce_log, CoalescedExtent, SourcePiece, Write};
pub use error::{ChainProblem, HrlError};
pub use reader::{has_hrl_cookie, read_log_header, HrlLog, LogEntry, ReadOptions, READ_CHUNK};
pub use scan::{scan_valid_prefix, ScannedLog};
pub use writer::{HrlWriter, WriterOptions};

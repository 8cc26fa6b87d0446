//! Errors of the HRL reader, writer and chain.

use std::io;
use std::path::{Path, PathBuf};

use vdrep_proto::formats::hrl::Defect;
use vdrep_proto::Guid;

/// Why a log cannot be read, written or chained. Every variant names the file; corruption
/// names the absolute offset of the bad bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HrlError {
    /// The operating system failed a read or write.
    #[error("{}: {op} at offset {offset} failed: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// "read", "write", "sync", "open", ...
        op: &'static str,
        /// Absolute file offset.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A structure of the log is corrupt, truncated or not what vdrep can replay.
    #[error("{}: HRL log corrupt at offset {offset}: {defect}; the log cannot be shipped, resynchronise the disk", path.display())]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// Absolute offset of the bad structure or field.
        offset: u64,
        /// What is wrong.
        defect: Defect,
    },
    /// `EOLLocation` is 0: the writer did not close the log (it crashed or is still
    /// writing). [`crate::hrl::scan_valid_prefix`] recovers what was completely written.
    #[error("{}: HRL log was not closed cleanly (EOLLocation is 0); close it or recover its valid prefix", path.display())]
    NotClosed {
        /// The log file.
        path: PathBuf,
    },
    /// A set of logs does not form one unbroken chain.
    #[error("{}: broken HRL chain: {problem}", path.display())]
    BrokenChain {
        /// The log where the chain breaks.
        path: PathBuf,
        /// What is wrong.
        problem: ChainProblem,
    },
    /// A caller misused the writer (e.g. a write that is not whole sectors).
    #[error("{}: {problem}", path.display())]
    InvalidWrite {
        /// The log file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// How a chain of logs is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainProblem {
    /// Two logs share a UniqueId.
    #[error("UniqueId {0} appears twice")]
    DuplicateId(Guid),
    /// Two logs continue the same log.
    #[error("fork: {first} and {second} both continue log {previous}")]
    Fork {
        /// The shared PreviousUniqueId.
        previous: Guid,
        /// One successor.
        first: Guid,
        /// The other.
        second: Guid,
    },
    /// The chain does not start where the caller expects (the last log already shipped).
    #[error("the first log continues {found}, expected {expected}: a log is missing before it")]
    WrongStart {
        /// PreviousUniqueId the caller expected.
        expected: Guid,
        /// PreviousUniqueId of the first log.
        found: Guid,
    },
    /// More than one log has no predecessor in the set.
    #[error("missing link: log {id} continues {previous}, which is not in the set")]
    MissingLink {
        /// The log whose predecessor is missing.
        id: Guid,
        /// Its PreviousUniqueId.
        previous: Guid,
    },
    /// Every log has a predecessor in the set.
    #[error("the logs form a cycle")]
    Cycle,
}

impl HrlError {
    pub(crate) fn io(path: &Path, op: &'static str, offset: u64, source: io::Error) -> Self {
        HrlError::Io {
            path: path.to_path_buf(),
            op,
            offset,
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, defect: Defect) -> Self {
        HrlError::Corrupt {
            path: path.to_path_buf(),
            offset,
            defect,
        }
    }

    /// The defect, if this is a corruption error (for tests and for callers that decide
    /// between resync and operator attention).
    pub fn defect(&self) -> Option<&Defect> {
        match self {
            HrlError::Corrupt { defect, .. } => Some(defect),
            _ => None,
        }
    }
}

impl crate::error::Classify for HrlError {
    /// Corruption, unclosed logs and broken chains never heal by themselves; transient OS
    /// conditions do.
    fn recovery(&self) -> crate::error::Recovery {
        crate::error::Recovery::transient_if(match self {
            HrlError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::OutOfMemory
                    | io::ErrorKind::StorageFull
            ),
            _ => false,
        })
    }
}

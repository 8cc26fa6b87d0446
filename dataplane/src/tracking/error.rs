//! Why change tracking cannot go on ([`TrackingError`]), and for each failure the one
//! question the sender must answer: does the change history now have a gap that only a
//! resync closes (`needs_resync`), and may it be retried (`Classify`). Apart from the
//! tracker's files and switches, which only raise these.

use std::path::PathBuf;

use super::HashTableError;
use crate::error::{Classify, Recovery};
use crate::hrl::HrlError;

/// Why tracking cannot go on; every variant says whether a resync is needed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackingError {
    /// A log is corrupt, torn or unreadable.
    #[error(transparent)]
    Log(#[from] HrlError),
    /// The lock or a rename failed.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was done.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The block-hash table failed (reading the disk or the table file).
    #[error(transparent)]
    Hashes(#[from] HashTableError),
    /// The block-hash table does not fit the logs beside the disk.
    #[error("{}: {problem}", path.display())]
    Table {
        /// The table or log concerned.
        path: PathBuf,
        /// What does not fit.
        problem: String,
    },
    /// A switch intent (`D.hrl.switch`) cannot be read: torn or corrupt. Its disks' logs
    /// are left as they are; writes to the disk are refused until an operator looks.
    #[error("{}: switch intent unusable: {problem}; a log switch of this disk's VM was interrupted and this file cannot say which disks it concerned: remove it and resynchronise the VM's disks (`vdrep send --resync`)", path.display())]
    Intent {
        /// The intent file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A set switch was asked for something it cannot do.
    #[error("log switch: {problem}")]
    Switch {
        /// What is wrong.
        problem: String,
    },
    /// The active log is missing while protection is on: writes may have gone unrecorded.
    #[error("{}: the active change log is missing: writes since the last switch are unknown; the disk needs a resync", path.display())]
    ActiveMissing {
        /// The expected active log.
        path: PathBuf,
    },
}

impl TrackingError {
    /// Whether the change history has a gap that only a resync can close.
    pub fn needs_resync(&self) -> bool {
        match self {
            TrackingError::Log(e) => !e.is_transient(),
            TrackingError::ActiveMissing { .. } => true,
            TrackingError::Io { .. }
            | TrackingError::Hashes(_)
            | TrackingError::Table { .. }
            | TrackingError::Intent { .. }
            | TrackingError::Switch { .. } => false,
        }
    }
}

impl Classify for TrackingError {
    /// A log or table that failed transiently may be read again; a gap in the history, a
    /// table that does not fit, an unusable switch intent and a failed lock or rename need
    /// the resync or an operator.
    fn recovery(&self) -> Recovery {
        match self {
            TrackingError::Log(e) => e.recovery(),
            TrackingError::Hashes(e) => e.recovery(),
            TrackingError::Io { .. }
            | TrackingError::Table { .. }
            | TrackingError::Intent { .. }
            | TrackingError::Switch { .. }
            | TrackingError::ActiveMissing { .. } => Recovery::Permanent,
        }
    }
}

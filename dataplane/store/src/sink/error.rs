//! The one error type of the sinks. Every variant names the file (or blob), the offset where
//! one applies, and the problem; its [`recovery`](SinkError::recovery) drives the retry schedule and
//! the health state (DESIGN §1: low disk space is recoverable, invalid replica state is not).

use std::io;

use std::path::PathBuf;
use vdrep_proto::Recovery;

use vdrep_proto::Guid;

/// A failure of a replica store or disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// An IO call failed; recoverability follows the OS error (see
    /// its `recovery`).
    #[error("{path}: {op} at offset {offset} failed: {source}{hint}", hint = io_hint(source))]
    Io {
        /// The file or blob.
        path: PathBuf,
        /// What was being done, e.g. "write", "fdatasync", "rename state".
        op: &'static str,
        /// Byte offset concerned (0 for whole-file operations).
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A VM or disk name that cannot be used as a file or blob name.
    #[error("invalid {what} {name:?}: it {problem} (allowed: 1 to 64 of [A-Za-z0-9._-], not starting with a dot)")]
    InvalidName {
        /// "VM name" or "disk name".
        what: &'static str,
        /// The refused name.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// An earlier fdatasync of this disk's files failed on this handle. The kernel may have
    /// dropped the pages it could not write (Linux marks them clean), so a later sync that
    /// succeeds proves nothing about them: nothing written since the last good sync may
    /// count as durable. Recoverable: the disk is opened again and the copy resumes from
    /// the progress of the last good sync.
    #[error("{path}: refused {op}: an earlier fdatasync of this disk failed ({first}); writes since the last good sync may be lost, so this handle records nothing more: the disk is reopened and resumes from the last good sync")]
    SyncLost {
        /// The file whose sync failed.
        path: PathBuf,
        /// The call refused.
        op: &'static str,
        /// The failed sync, as reported then.
        first: String,
    },
    /// A write, clear or read outside the disk, or not 512-byte aligned. Nothing was done.
    #[error("{path}: refused {op} of {len} bytes at offset {offset}: {problem} (disk size {size} bytes)")]
    OutOfRange {
        /// The replica.
        path: PathBuf,
        /// "write", "clear" or "read".
        op: &'static str,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The disk's size.
        size: u64,
        /// Why it was refused.
        problem: &'static str,
    },
    /// The disk was replicated with a different size; resizing a replica is unsupported.
    #[error("{path}: the replica records a disk of {recorded} bytes but the source now has {requested} bytes at offset 0: resizing is unsupported; delete the replica to start over")]
    SizeMismatch {
        /// The state file.
        path: PathBuf,
        /// Size in the replica's state.
        recorded: u64,
        /// Size the sender announced.
        requested: u64,
    },
    /// The replica belongs to a different source disk.
    #[error("{path}: the replica belongs to source disk {recorded} but the sender announced {requested} (offset 0): refusing to mix disks; check the VM/disk mapping")]
    IdentityMismatch {
        /// The state file.
        path: PathBuf,
        /// Source id in the replica's state.
        recorded: Guid,
        /// Source id the sender announced.
        requested: Guid,
    },
    /// A state or format file does not decode, or contradicts the data files.
    #[error("{path}: corrupt replica state at offset {offset}: {problem}; the replica needs an operator (restore the file or delete the disk to resynchronise)")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// Offset of the bad bytes in it.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// The store was written by a different store format version.
    #[error("{path}: store format {found:?} at offset 0 is not supported (this vdrep writes {expected:?}); use a matching vdrep or a new store directory")]
    StoreVersion {
        /// The `FORMAT` file.
        path: PathBuf,
        /// What it says.
        found: String,
        /// What this build writes.
        expected: String,
    },
    /// Another receiver (or another handle in this one) has the disk open.
    #[error("{path}: the disk is in use by another receiver (lock held at offset 0); it is retried once that receiver lets go")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The disk, or the recovery point asked for, does not exist (never replicated, removed,
    /// or pruned by retention).
    #[error("{path}: {problem}")]
    NotFound {
        /// The replica or its state.
        path: PathBuf,
        /// What is missing, and what exists instead.
        problem: String,
    },
    /// The call does not fit the disk's state (e.g. commit before the copy is complete).
    #[error("{path}: {problem} (offset {offset})")]
    InvalidState {
        /// The replica.
        path: PathBuf,
        /// Offset concerned, e.g. the first missing byte.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// The disk cannot be stored by this backend (e.g. larger than a page blob).
    #[error("{path}: unsupported disk at offset {offset}: {problem}")]
    Unsupported {
        /// The replica.
        path: PathBuf,
        /// Offset concerned.
        offset: u64,
        /// What is unsupported.
        problem: String,
    },
    /// A job file does not decode. Jobs are history: replication does not depend on them.
    #[error("{path}: corrupt job record: {problem}; move the file aside to start a new job history (replication does not need it)")]
    CorruptJobs {
        /// The job file.
        path: PathBuf,
        /// What is wrong, with the line and column.
        problem: String,
    },
    /// The store does not implement this operation yet.
    #[error("{store}: {what} is not supported by this store yet")]
    NotSupported {
        /// The store, as [`crate::sink::ReplicaStore::describe`] says.
        store: String,
        /// The operation.
        what: &'static str,
    },
    /// Azure Storage refused a request, or stayed unreachable through the retries. 403
    /// (credentials), 404 (account or container) and 409 (conflicts) are not recoverable;
    /// throttling, server errors and transport failures are.
    #[error("{url}: {op} at offset {offset} failed: {}{problem}{hint}",
        azure_status(*status, code), hint = azure_hint(*status, code))]
    Azure {
        /// The blob or container URL (no credentials).
        url: String,
        /// What was being done, e.g. "put page", "snapshot blob".
        op: &'static str,
        /// Byte offset concerned (0 for whole-blob operations).
        offset: u64,
        /// HTTP status, `None` for transport failures.
        status: Option<u16>,
        /// `x-ms-error-code` (or "Transport").
        code: String,
        /// The service's message.
        problem: String,
        /// Whether retrying later may help.
        recoverable: bool,
    },
}

fn azure_status(status: Option<u16>, code: &str) -> String {
    match status {
        Some(s) => format!("HTTP {s} {code}: "),
        None => format!("{code}: "),
    }
}

/// Advice for Azure answers an operator can act on.
fn azure_hint(status: Option<u16>, code: &str) -> &'static str {
    match (status, code) {
        (Some(403), _) => " (authorisation failed: check the SAS token (expiry, permissions racwdl, resource types sco), the account key, or the identity's role (Storage Blob Data Contributor) and token, and the clock; not retried)",
        (Some(404), "ContainerNotFound") => " (the container does not exist: create it or fix --azure-container; not retried)",
        (Some(404), _) => " (not found: check the account URL and container; not retried)",
        (Some(409), _) => " (conflict with the blob's current state; not retried)",
        (Some(412), c) if c.starts_with("Lease") => " (this receiver lost its lease on the blob: another receiver may have taken the disk; it is reopened and the lease re-acquired on retry)",
        (None, _) => " (Azure Storage unreachable: retried automatically)",
        (Some(500), _) | (Some(503), _) => " (the service is busy or failing: retried automatically with back-off)",
        _ => "",
    }
}

/// Extra advice for IO errors an operator can fix.
fn io_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => {
            " (the store's filesystem is full: free space; retried automatically)"
        }
        Some(libc::EDQUOT) => " (disk quota exceeded: raise the quota; retried automatically)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (check the store directory's permissions)",
        Some(libc::EROFS) => " (the store's filesystem is read-only)",
        _ => "",
    }
}

impl SinkError {
    /// Transient: low space, quota, transient IO, memory pressure, interruptions, and a disk
    /// held by another receiver. Bad names, size or identity mismatches, corrupt state,
    /// version mismatches, range violations and permission problems need an operator or a
    /// fixed caller and are not retried.
    ///
    /// The store sits below `vdrep`, whose `Classify` trait (`vdrep::error`) answers with
    /// this method, as the wire's `ErrorClass::recovery` does for `vdrep-proto`.
    pub fn recovery(&self) -> Recovery {
        Recovery::transient_if(match self {
            SinkError::Io { source, .. } => io_is_recoverable(source),
            SinkError::Locked { .. } | SinkError::SyncLost { .. } => true,
            SinkError::Azure { recoverable, .. } => *recoverable,
            _ => false,
        })
    }

    /// Shorthand for `self.recovery().is_transient()`.
    pub fn is_transient(&self) -> bool {
        self.recovery().is_transient()
    }

    /// Builds an [`SinkError::Io`].
    pub fn io(path: impl Into<PathBuf>, op: &'static str, offset: u64, source: io::Error) -> Self {
        SinkError::Io {
            path: path.into(),
            op,
            offset,
            source,
        }
    }
}

/// Classifies an OS error for retry.
pub fn io_is_recoverable(e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(code) => matches!(
            code,
            libc::ENOSPC
                | libc::EDQUOT
                | libc::EIO
                | libc::EAGAIN
                | libc::EINTR
                | libc::ENOMEM
                | libc::ETIMEDOUT
                | libc::EBUSY
                | libc::ENFILE
                | libc::EMFILE
        ),
        None => matches!(
            e.kind(),
            io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::OutOfMemory
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_space_and_transient_io_are_recoverable_bad_state_is_not() {
        let e = |code| {
            SinkError::io(
                "/s/vm/d.vhd",
                "write",
                4096,
                io::Error::from_raw_os_error(code),
            )
        };
        assert!(e(libc::ENOSPC).is_transient());
        assert!(e(libc::EDQUOT).is_transient());
        assert!(e(libc::EIO).is_transient());
        assert!(!e(libc::EACCES).is_transient());
        assert!(!e(libc::EROFS).is_transient());
        let msg = e(libc::ENOSPC).to_string();
        assert!(
            msg.contains("/s/vm/d.vhd") && msg.contains("4096") && msg.contains("full"),
            "{msg}"
        );
        let corrupt = SinkError::CorruptState {
            path: "/s/vm/d.state".into(),
            offset: 12,
            problem: "bad checksum".into(),
        };
        assert!(!corrupt.is_transient());
        assert!(SinkError::Locked {
            path: "/s/vm/d.lock".into()
        }
        .is_transient());
    }
}

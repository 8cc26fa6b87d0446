//! Errors of the disk readers.

use std::io;
use std::path::{Path, PathBuf};

use vdrep_proto::FormatError;

/// Why a disk cannot be read. Every variant names the file; most name the offset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// The operating system failed a read.
    #[error("{}: read at offset {offset} failed: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Absolute file offset of the failed read.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A structure in the file is corrupt or truncated.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Which structure, at which absolute offset, what is wrong.
        #[source]
        source: FormatError,
    },
    /// The file is valid but uses a feature vdrep does not replicate.
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What and what to do about it.
        what: String,
    },
    /// A differencing chain cannot be resolved: missing or wrong parent, or a cycle.
    #[error("{}: broken differencing chain: {problem}", path.display())]
    BrokenChain {
        /// The child whose parent is wrong.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A caller asked for bytes outside the virtual disk.
    #[error("{}: read of {len} bytes at offset {offset} is outside the virtual disk of {size} bytes", path.display())]
    OutOfRange {
        /// The image.
        path: PathBuf,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Virtual size.
        size: u64,
    },
}

impl DiskError {
    /// Wraps an IO error with its file and offset.
    pub fn io(path: &Path, offset: u64, source: io::Error) -> Self {
        DiskError::Io {
            path: path.to_path_buf(),
            offset,
            source,
        }
    }

    /// Wraps a decoder error; `base` is the file offset of the decoded buffer.
    pub fn format(path: &Path, base: u64, source: FormatError) -> Self {
        DiskError::Format {
            path: path.to_path_buf(),
            source: source.at(base),
        }
    }

    /// A corrupt-structure error built in the data plane.
    pub fn corrupt(
        path: &Path,
        structure: &str,
        offset: u64,
        problem: impl std::fmt::Display,
    ) -> Self {
        DiskError::Format {
            path: path.to_path_buf(),
            source: FormatError::new(structure, offset, problem),
        }
    }
}

impl crate::error::Classify for DiskError {
    /// Corrupt images, broken chains and unsupported features never heal by themselves (the
    /// VM goes Critical); transient OS conditions (out of memory, interrupted, timed out) do,
    /// and so does a lost connection of a disk read over a socket (a qemu view over NBD).
    fn recovery(&self) -> crate::error::Recovery {
        crate::error::Recovery::transient_if(match self {
            DiskError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::OutOfMemory
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        })
    }
}

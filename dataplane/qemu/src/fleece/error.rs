//! What can go wrong taking, reading or removing fleecing views.

use std::path::PathBuf;

use crate::qmp::QmpError;

/// An error of the fleecing layer. [`FleeceError::is_transient`] tells the sender whether to
/// retry on its schedule (Warning) or to stop the disk's protection (Critical / resync).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleeceError {
    /// A QMP command failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The disk's node does not exist in qemu.
    #[error("qemu has no block node {node} (check the node-name, `query-named-block-nodes`)")]
    NodeNotFound {
        /// The node-name asked for.
        node: String,
    },
    /// The scratch directory's filesystem cannot hold a full copy of the disks: the
    /// copy-before-write filter would fail guest writes once its target fills up.
    #[error("{dir}: {available} bytes free, the views need up to {need} (the disks' full size and the scratch images' metadata); free space or choose another scratch directory")]
    NoRoom {
        /// The scratch directory.
        dir: PathBuf,
        /// Bytes the views may need.
        need: u64,
        /// Bytes free for an unprivileged writer.
        available: u64,
    },
    /// A scratch file could not be created or removed, or its filesystem not queried.
    #[error("{path}: {source}")]
    Scratch {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bitmap that tracks the disk's writes is gone or untrustworthy: the writes since
    /// the last switch are unknown, so the disk needs a resync.
    #[error("dirty bitmap {bitmap} on {node} {reason}: writes since the last switch are unknown, the disk needs a resync")]
    BitmapLost {
        /// The disk's node.
        node: String,
        /// The bitmap.
        bitmap: String,
        /// Why it cannot be used.
        reason: super::bitmap::LossReason,
    },
    /// The bitmap a switch would start already exists (a switch whose outcome was not
    /// recorded): the caller must decide with [`super::bitmap_state`] which bitmaps to trust.
    #[error("dirty bitmap {bitmap} already exists on {node}")]
    BitmapExists {
        /// The disk's node.
        node: String,
        /// The bitmap.
        bitmap: String,
    },
    /// qemu could not create the temporary target image.
    #[error("creating the temporary fleecing target {path}: {detail}")]
    TargetCreate {
        /// The image.
        path: PathBuf,
        /// qemu's error.
        detail: String,
    },
    /// qemu's copy of a cycle's dirty blocks (`super::copy`) failed: the next round copies
    /// them again from the same bitmap (the job leaves it as it is).
    #[error("qemu's copy of the dirty blocks of {node} failed: {detail}")]
    CopyFailed {
        /// The disk's node.
        node: String,
        /// qemu's error.
        detail: String,
    },
    /// qemu already runs an NBD server (qemu allows one): give its socket instead.
    #[error(
        "qemu already runs an NBD server; name its socket (--nbd) so vdrep adds its exports there"
    )]
    NbdServerRunning,
    /// The request itself is wrong (no disks, a disk named twice, too many disks).
    #[error("invalid fleecing request: {0}")]
    Invalid(String),
}

impl FleeceError {
    /// True when retrying later may succeed without an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            FleeceError::Qmp(e) => e.is_transient(),
            FleeceError::NoRoom { .. }
            | FleeceError::Scratch { .. }
            | FleeceError::CopyFailed { .. } => true,
            FleeceError::NodeNotFound { .. }
            | FleeceError::BitmapLost { .. }
            | FleeceError::BitmapExists { .. }
            | FleeceError::TargetCreate { .. }
            | FleeceError::NbdServerRunning
            | FleeceError::Invalid(_) => false,
        }
    }
}

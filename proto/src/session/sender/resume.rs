//! What the receiver holds durably, and so what remains to send: the one place the progress
//! of an opened reply (`DiskOpened` for the initial copy, `CycleOpened` for a cycle) is
//! interpreted, so that a change in how progress travels touches only this file.

use crate::ranges::RangeSet;

/// What the receiver holds durably of a copy or a cycle, and so what remains to send: the
/// one place the progress of a `DiskOpened` or `CycleOpened` reply is interpreted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Durable byte ranges: not sent again.
    pub done: RangeSet,
    /// Their total length.
    pub resumed: u64,
}

impl Resume {
    /// The progress of an opened reply (all its pages).
    pub fn from_progress(progress: RangeSet) -> Self {
        Resume {
            resumed: progress.covered_len(),
            done: progress,
        }
    }
}

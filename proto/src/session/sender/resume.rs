//! What the receiver holds durably, and so what remains to send: the one place the progress
//! of an opened reply (`DiskOpened` for the initial copy, `CycleOpened` for a cycle) is
//! interpreted, so that a change in how progress travels touches only this file.

/// What the receiver holds durably of a copy or a cycle, and so what remains to send: the
/// one place the progress of a `DiskOpened` or `CycleOpened` reply is interpreted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Durable byte ranges `[start, end)`: not sent again.
    pub done: Vec<(u64, u64)>,
    /// Their total length.
    pub resumed: u64,
}

impl Resume {
    /// The progress of an opened reply. An inverted range counts for nothing (no underflow
    /// on a peer's bytes).
    pub fn from_progress(progress: Vec<(u64, u64)>) -> Self {
        let resumed = progress
            .iter()
            .map(|&(a, b)| b.saturating_sub(a))
            .fold(0u64, u64::saturating_add);
        Resume {
            done: progress,
            resumed,
        }
    }
}

//! The QMP client: connect, negotiate, run commands, collect events, typed answers.

mod client;
mod error;
mod types;

pub use client::{Event, QemuVersion, Qmp, MAX_LINE, MAX_QUEUED_EVENTS};
pub use error::QmpError;
pub use types::{
    BlockDevice, BlockExport, BlockJob, BlockNode, DirtyBitmap, ImageInfo, Inserted, Job,
};

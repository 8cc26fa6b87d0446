//! The sender's pipeline: extents → chunks → (read, zero-detect, compress, hash) → frames.
//!
//! The CPU stages run on a small pool of threads (one per core) fed by a bounded queue, so the
//! number of chunks in flight — and with it memory — is fixed whatever the disk size. Payloads
//! stay in `bytes::Bytes` from the read to the socket: the read fills the buffer once, zero
//! detection and hashing borrow it, splitting slices it, and only compression produces new
//! bytes (it transforms them). Where the source is cold, a read-ahead stage between the plan
//! and the CPU threads reads their items before they ask ([`readahead`]).

mod adapt;
mod budget;
mod idle;
mod pack;
mod plan;
mod prepare;
pub mod readahead;
mod stats;

pub use adapt::{
    run_controller, tick_after, AdaptiveLevel, Compression, LevelReport, TICK, WARMUP,
};
pub use budget::{MemoryBudget, Ticket, PREPARED_BUDGET, WARMUP_BUDGET};
pub use idle::CpuIdle;
pub use plan::{join_reads, plan_disk, push_split, PlanOptions, WorkItem, JOIN_FROM_LEVEL};
pub use prepare::{prepare, prepare_loaded, Prepared, Zeros, ZERO_BLOCK};
pub use readahead::{join_loaded, Loaded};
pub use stats::Stats;

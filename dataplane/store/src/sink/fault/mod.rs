//! Test backends: [`FaultStore`] fails chosen calls of any store on purpose (retry paths are
//! tested deliberately, as neon does), and [`SimFs`] models durability so crash tests can
//! drop everything a power cut would (as redb does).

mod inject;
mod simfs;

pub use inject::{FaultPlan, FaultStore, Op};
pub use simfs::{Crash, SimFs, SyncHold};

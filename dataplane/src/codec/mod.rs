//! The extent codec both roles share, below them both: zero detection on one grid and the
//! process's zstd contexts. The sender's pipeline encodes with it, the receiver decodes with
//! it; neither role reaches into the other.

pub mod extent_hash;
#[cfg(test)]
pub(crate) mod test_data;
mod zeros;
pub mod zstd_ctx;

pub use extent_hash::{extent_hash, pieces_hash, zero_extent_hash};
pub use zeros::{is_zero, zero_hash, zero_runs, zero_runs_parts, ZERO_BLOCK};

//! The messages of the protocol and their bodies, one file per frame family.

mod control;
mod error;
mod extent;
mod fields;
mod packed;

pub use control::*;
pub use error::ErrorClass;
pub use extent::*;
pub use packed::{PackedMap, PACK_BLOCK};

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

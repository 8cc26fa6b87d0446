//! The messages of the protocol and their bodies, one file per frame family.

mod control;
mod error;
mod extent;

pub use control::*;
pub use error::ErrorClass;
pub use extent::*;

#[cfg(test)]
mod tests;

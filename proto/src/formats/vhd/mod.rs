//! VHD (Microsoft "Virtual Hard Disk Image Format Specification" 1.0): big-endian structures.
//!
//! - [`footer`]: the 512-byte `conectix` footer of every VHD (and the fixed-VHD layout that
//!   Azure page blobs use, which `vdrep convert` and the receiver write).
//! - [`dynamic`]: the `cxsparse` header, BAT, parent locators and sector bitmaps of dynamic
//!   and differencing disks.

pub mod dynamic;
pub mod footer;

pub use footer::{chs_geometry, DiskType, Footer, FOOTER_SIZE};

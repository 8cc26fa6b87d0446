//! On-disk record formats: each module decodes and encodes one format's structures from and
//! to byte buffers. Reading files, following chains and replaying logs is the data plane's job.

pub mod hrl;
pub mod vhd;
pub mod vhdx;

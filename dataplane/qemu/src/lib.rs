//! qemu building blocks for vdrep's qemu change source: a QMP client ([`qmp`]), an NBD client
//! that reads ranges and block status, dirty-bitmap contexts included ([`nbd`]), and
//! fleecing views of a VM's disks taken in one QMP `transaction` ([`fleece`]).
//!
//! Why a crate of its own: it is a lower layer with blocking IO over unix sockets and no
//! tokio, so it builds in seconds, is tested against a real `qemu-storage-daemon`, and the
//! sender drives it from a blocking thread. Why our own QMP and NBD clients: the maintained
//! QMP crates are either tokio-based (`qmp`) or generated from an older QAPI schema
//! (`qapi`), and QMP is JSON lines; the NBD crates on crates.io (`nbd`) speak neither
//! structured replies nor meta contexts, and `libnbd`'s Rust bindings need a newer C
//! library than this Debian ships. Both clients follow the protocol documents (qemu's
//! `docs/interop/qmp-spec.rst`, NBD's `doc/proto.md`).

pub mod fleece;
pub mod nbd;
pub mod qmp;

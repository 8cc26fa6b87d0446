//! qemu building blocks for vdrep's qemu change source: a QMP client ([`qmp`]), an NBD client
//! that reads ranges and block status, dirty-bitmap contexts included ([`nbd`]), and
//! fleecing views of a VM's disks taken in one QMP `transaction` ([`fleece`]).
//!
//! Why a crate of its own: it is a lower layer with blocking IO over unix sockets and no
//! tokio, so it builds in seconds, is tested against a real `qemu-storage-daemon`, and the
//! sender drives it from a blocking thread. Why our own QMP and NBD clients: of the QMP
//! crates, `qmp` is tokio-based and `qapi` brings a code generator over a bundled QAPI
//! schema that has to match the qemu in use, while QMP itself is JSON lines and vdrep uses
//! a dozen commands; the NBD crate `nbd` (0.3) negotiates with `NBD_OPT_EXPORT_NAME` and
//! simple replies only (no structured replies, no metadata contexts, so no block status),
//! and `libnbd`'s Rust bindings need a newer C library than this Debian ships (1.14). Both
//! clients follow the protocol documents (qemu's
//! `docs/interop/qmp-spec.rst`, NBD's `doc/proto.md`).

pub mod fleece;
pub mod nbd;
pub mod qmp;

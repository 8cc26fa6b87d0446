//! The qemu change source: protects a running qemu VM (or qemu-storage-daemon's disks)
//! with qemu's dirty bitmaps and fleecing views, over QMP and NBD (`vdrep-qemu` has the
//! building blocks and the QMP sequences).
//!
//! Every switch — at protection start, then every interval — is one QMP transaction for
//! all the VM's disks: per disk a new bitmap starts, the previous one stops, and a
//! copy-before-write filter makes a point-in-time view, exported over NBD with the previous
//! bitmap. The sender then reads from each view what the disk needs: everything (the
//! initial copy: the view of protection start), the previous bitmap's dirty extents (a
//! cycle, see [`cycle::ViewCycle`]) or a block-checksum resync (a bitmap was lost), and the
//! view and the shipped bitmap go. [`ctl::QemuVm`] holds the QMP session and the state
//! kept across restarts ([`state`]); [`protect::protect`] is the loop.
//!
//! vdrep-qemu is blocking: every QMP and NBD call runs on a blocking thread.

pub mod ctl;
pub mod cycle;
pub mod discover;
pub mod protect;
pub mod state;
pub mod test_hook;
pub mod unprotect;
pub mod view;

use std::path::PathBuf;

pub use ctl::QemuVm;
pub use discover::Drive;

/// One qemu VM to protect, as the command line or config names it.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    /// The VM's name (the receiver authorises senders per VM).
    pub vm: String,
    /// qemu's QMP socket.
    pub qmp: PathBuf,
    /// `--drive NODE[=NAME]`: the nodes to protect (required with qemu-storage-daemon);
    /// empty: the guest's writable block devices.
    pub drives: Vec<Drive>,
    /// The NBD server socket the VM already runs (qemu allows one); `None`: vdrep starts
    /// one on a private socket in its state folder and stops it when done.
    pub nbd: Option<PathBuf>,
}

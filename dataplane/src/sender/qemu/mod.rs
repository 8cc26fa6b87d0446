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
//! view and the shipped bitmap go; once every disk holds its view, the switch is the VM's
//! recovery point ([`point`]). [`ctl::QemuVm`] holds the QMP session and the state
//! kept across restarts ([`state`]); [`protect::protect`] is the loop.
//!
//! vdrep-qemu is blocking: every QMP and NBD call runs on a blocking thread.

pub mod ctl;
pub mod cycle;
pub mod digest;
pub mod discover;
pub mod point;
pub mod protect;
pub mod state;
pub mod test_hook;
pub mod unprotect;
pub mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use ctl::QemuVm;

use super::disk::{DiskJob, Shared};
use super::protect::{Policy, Schedule, OPERATOR_RESYNC};
use super::vmset::{VmEntry, VmSet};
use super::SendError;
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

/// Opens the qemu VMs of `sh.opts.qemu` (enable protection's local checks: QMP reachable,
/// disks found) and adds them to `set`, with their jobs, status and health entries.
pub async fn add_vms(
    sh: &Shared,
    set: &VmSet,
    state: &Path,
    policy: &Policy,
    rpo_threshold: Duration,
) -> Result<(), SendError> {
    for spec in &sh.opts.qemu {
        let (spec, st) = (spec.clone(), state.to_path_buf());
        let q = tokio::task::spawn_blocking(move || QemuVm::open(spec, &st))
            .await
            .map_err(|e| SendError::Internal(format!("qemu task: {e}")))??;
        if sh.opts.resync {
            // `send --resync`: every disk is resynchronised from the first view.
            for d in &q.disks {
                q.state
                    .mark_resync(&d.name, OPERATOR_RESYNC)
                    .map_err(|e| SendError::Internal(format!("{}: {e}", q.name)))?;
            }
        }
        let q = Arc::new(q);
        ctl::register(&q);
        sh.jobs.start_vm(&q.name);
        let jobs: Vec<DiskJob> = q
            .disks
            .iter()
            .map(|d| DiskJob {
                vm: q.name.clone(),
                name: d.name.clone(),
                disk: Arc::new(view::QemuDisk::new(&d.node, &d.file, d.size)),
                progress: Default::default(),
            })
            .collect();
        sh.jobs.disks_checked(&q.name, &jobs);
        for j in &jobs {
            sh.board.add_disk(j, None);
        }
        let names: Vec<String> = q.disks.iter().map(|d| d.name.clone()).collect();
        sh.health.add_vm(&q.name, &names, Some(rpo_threshold));
        set.push(VmEntry {
            name: q.name.clone(),
            paths: Vec::new(),
            disks: Arc::new(Vec::new()),
            sched: Arc::new(Schedule::new(policy.interval)),
            policy: policy.clone(),
            qemu: Some(q),
        });
    }
    Ok(())
}

/// Stops the protection of a VM given up alone (`sender::vm_retry`): what vdrep added in
/// qemu goes if qemu answers again (its bitmaps stay, as at a clean stop).
pub async fn stop_given_up(vm: Arc<QemuVm>) {
    let q = vm.clone();
    match tokio::task::spawn_blocking(move || q.stop()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(vm = %vm.name, error = %e,
            "qemu unreachable: what vdrep added there is removed at the next start"),
        Err(e) => tracing::warn!(vm = %vm.name, error = %e, "qemu stop task failed"),
    }
}

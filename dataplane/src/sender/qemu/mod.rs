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

pub mod checks;
pub mod ctl;
pub mod cycle;
pub mod digest;
pub mod discover;
pub mod point;
pub mod protect;
pub mod spool;
pub mod spool_mem;
pub mod state;
pub mod test_hook;
pub mod unprotect;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use ctl::QemuVm;

use super::disk::{DiskJob, Shared};
use super::protect::{Policy, Schedule, OPERATOR_RESYNC};
use super::vmset::{VmEntry, VmSet};
use super::SendError;
pub use discover::Drive;
use tracing::warn;

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
    /// The consistency group the VM switches with (`None`: alone); a group holds at most
    /// one qemu VM ([`crate::sender::group_qemu`]).
    pub group: Option<String>,
}

/// Opens the qemu VMs of `sh.opts.qemu` and those `added` over the control channel by
/// earlier runs (`STATE/vms.json`), runs enable protection's local checks
/// ([`checks`]: QMP reachable, disks found, bitmaps supported) and adds them to `set`, with
/// their jobs, status and health entries. A command-line VM that fails its checks ends the
/// run with the check's error; an added one is left out with the error logged (as an added
/// VM whose disk image no longer opens: enable it again once fixed).
pub async fn add_vms(
    sh: &Arc<Shared>,
    set: &VmSet,
    added: &[super::vmset::AddedVm],
    policy: &Policy,
    rpo_threshold: Duration,
) -> Result<(), SendError> {
    for spec in &sh.opts.qemu {
        let (sh2, spec2) = (sh.clone(), spec.clone());
        let (q, details) = tokio::task::spawn_blocking(move || open_checked(&sh2, spec2))
            .await
            .map_err(|e| SendError::Internal(format!("qemu task: {e}")))??;
        register(
            sh,
            set,
            q,
            &details,
            policy.clone(),
            rpo_threshold,
            sh.opts.resync,
        )?;
    }
    for a in added.iter().filter(|a| a.qmp.is_some()) {
        if sh.opts.qemu.iter().any(|q| q.vm == a.vm) {
            warn!(vm = %a.vm, "VM added over the control channel is also on the command line; the command line wins");
            continue;
        }
        let spec = match super::vmset::qemu_spec(a) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(vm = %a.vm, error = %e, "a qemu VM enabled through the control channel cannot be protected: its entry in vms.json is invalid; enable it again");
                continue;
            }
        };
        let sh2 = sh.clone();
        let opened = tokio::task::spawn_blocking(move || open_checked(&sh2, spec))
            .await
            .map_err(|e| SendError::Internal(format!("qemu task: {e}")))?;
        match opened {
            Ok((q, details)) => {
                let threshold = a
                    .rpo_threshold_seconds
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| {
                        crate::health::default_rpo_threshold(Duration::from_secs(
                            a.interval_seconds,
                        ))
                    });
                let r = register(
                    sh,
                    set,
                    q,
                    &details,
                    set.policy_for(a),
                    threshold,
                    sh.opts.resync,
                );
                if let Err(e) = r {
                    // As a failed check: this VM is left out, the others go on.
                    sh.jobs.fail_vm(&a.vm, &e);
                    tracing::error!(vm = %a.vm, error = %e,
                        "a qemu VM enabled through the control channel cannot be protected; enable it again once fixed");
                }
            }
            Err(e) => {
                tracing::error!(vm = %a.vm, error = %e,
                    "a qemu VM enabled through the control channel cannot be protected: a prerequisite check failed; enable it again once fixed");
            }
        }
    }
    Ok(())
}

/// Runs a qemu VM's prerequisite checks ([`checks::run`]), recording each in its
/// enable-protection job, and takes the VM over. Blocks (QMP): call it from a blocking
/// thread.
pub fn open_checked(sh: &Shared, spec: QemuSpec) -> Result<(QemuVm, [String; 3]), SendError> {
    let vm = spec.vm.clone();
    sh.jobs.start_qemu_vm(&vm);
    match checks::run(&spec, ctl::QMP_TIMEOUT) {
        Ok(c) => {
            let details = c.details.clone();
            let q = QemuVm::from_checked(spec, &sh.state, c)?;
            Ok((q, details))
        }
        Err(e) => {
            sh.jobs.qemu_check_failed(&vm, &e);
            Err(e.into_send_error(&vm))
        }
    }
}

/// Runs a qemu VM's prerequisite checks for a request over the control channel (the
/// sidecar's enable-protection job) and takes the VM over. Unlike [`open_checked`], a
/// failing check leaves no job behind: the refusal is the request's answer, and the
/// sidecar's job fails with it once and stays listed as failed — as for an image VM whose
/// disk does not open ([`super::vmset::add`]). A failed job kept in the state folder would
/// wait there for a connection of a VM that was never protected, and be reported to the
/// receiver as that VM's job by whichever later run protected it.
pub fn open_requested(sh: &Shared, spec: QemuSpec) -> Result<(QemuVm, [String; 3]), SendError> {
    let vm = spec.vm.clone();
    let c = checks::run(&spec, ctl::QMP_TIMEOUT).map_err(|e| e.into_send_error(&vm))?;
    let details = c.details.clone();
    let q = QemuVm::from_checked(spec, &sh.state, c)?;
    sh.jobs.start_qemu_vm(&vm);
    Ok((q, details))
}

/// Adds a checked qemu VM to `set` under `policy`, in its consistency group if it names
/// one (joining refuses a second qemu VM, another interval, a 17th VM): its disks on the
/// status board, its health entry (RPO threshold `rpo_threshold`), its job's checks;
/// `resync` marks every disk for a resync from the first view (`send --resync`).
pub fn register(
    sh: &Shared,
    set: &VmSet,
    q: QemuVm,
    details: &[String; 3],
    policy: Policy,
    rpo_threshold: Duration,
    resync: bool,
) -> Result<Vec<String>, SendError> {
    let policy = set
        .with_group(&q.name, q.spec.group.as_deref(), true, policy)
        .map_err(SendError::Group)?;
    if resync {
        for d in &q.disks {
            q.state
                .mark_resync(&d.name, OPERATOR_RESYNC)
                .map_err(|e| SendError::Internal(format!("{}: {e}", q.name)))?;
        }
    }
    let q = Arc::new(q);
    ctl::register(&q);
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
    sh.jobs.qemu_checked(&q.name, details, &jobs);
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
        policy,
        qemu: Some(q),
    });
    Ok(names)
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

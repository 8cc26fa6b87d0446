//! Adding a VM to the running set (a protection request over the control channel): the
//! request is checked against the VMs already protected, the disks open (or a qemu VM's
//! checks run), tracking starts, the VM is kept in `STATE/vms.json` and joins the set. A
//! request for a VM protected with the same disks changes its policy instead.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::info;

use super::kept::{record, update};
use super::request::{check_request, qemu_spec};
use super::{AddedVm, VmEntry, VmSet};
use crate::disk::{self as vdisk, OpenOptions};
use crate::sender::disk::{DiskJob, Shared};
use crate::sender::protect::{self, Protected, Schedule};
use crate::sender::SendError;

/// The protected disks of one VM, change tracking started.
pub fn protected_disks(
    jobs: &[DiskJob],
    paths: &[PathBuf],
    force_resync: bool,
) -> Result<Arc<Vec<Arc<Mutex<Protected>>>>, SendError> {
    let mut disks: Vec<Protected> = jobs
        .iter()
        .zip(paths)
        .map(|(j, path)| Protected {
            tracker: crate::tracking::Tracker::new(path, j.disk.info().virtual_size),
            job: j.clone(),
            committed_cycle: None,
            fresh: false,
            force_resync,
            digest_task: None,
            resync_waiting: false,
        })
        .collect();
    protect::start_tracking(&mut disks)?;
    Ok(Arc::new(
        disks.into_iter().map(|d| Arc::new(Mutex::new(d))).collect(),
    ))
}

/// What a protection request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// The VM is protected from now on; its disk names.
    Started(Vec<String>),
    /// The VM was already protected with these disks; its disk names.
    Already(Vec<String>),
}

/// A request for a VM protected with the same disks changes its interval and RPO threshold
/// (a policy change through the API); kept in `STATE/vms.json` when the VM was added there.
fn update_policy(
    sh: &Shared,
    set: &VmSet,
    e: &VmEntry,
    req: &AddedVm,
    names: &[String],
) -> Result<(), String> {
    let interval = Duration::from_secs(req.interval_seconds);
    if let Some(g) = &e.policy.group {
        if g.interval() != interval {
            return Err(format!(
                "VM {} is a member of consistency group {}: its interval stays the group's {} s (members switch together)",
                req.vm,
                g.name(),
                g.interval().as_secs_f64()
            ));
        }
    }
    // No group in the request keeps the VM's (the sidecar may not know a group the command
    // line gave); another group is refused.
    if req.group.is_some() && req.group.as_deref() != e.policy.group.as_ref().map(|g| g.name()) {
        return Err(format!(
            "VM {} is protected {}; a VM changes its consistency group only when its protection is disabled and enabled again",
            req.vm,
            match &e.policy.group {
                Some(g) => format!("in consistency group {}", g.name()),
                None => "outside any consistency group".into(),
            }
        ));
    }
    if e.sched.interval() != interval {
        info!(vm = %req.vm, interval_s = req.interval_seconds, "cycle interval changed over the control channel");
        e.sched.set_interval(interval);
    }
    sh.health.add_vm(&req.vm, names, Some(req.rpo_threshold()));
    let req = &AddedVm {
        group: e.policy.group.as_ref().map(|g| g.name().to_string()),
        ..req.clone()
    };
    update(set, req)
}

/// Handles a protection request: checks it, opens the disks (or runs a qemu VM's checks:
/// QMP reachable, disks found, bitmaps supported), starts tracking, records the VM and
/// wakes the attempt loop. The error is the refusal, said to the operator.
/// Blocks (disk images open, qemu's checks talk QMP): call it from a blocking thread.
pub fn add(sh: &Shared, set: &VmSet, req: AddedVm) -> Result<Added, String> {
    check_request(&req)?;
    let _adding = set.adding.lock().map_err(|_| "add lock poisoned")?;
    if req.qmp.is_some() {
        return add_qemu(sh, set, req);
    }
    let names = crate::sender::disk_names(&req.disks);
    for e in set.list() {
        if let Some(q) = e.qemu.as_ref().filter(|_| e.name == req.vm) {
            return Err(format!(
                "VM {} is protected as a running qemu VM (QMP socket {}): disable its protection first",
                req.vm,
                q.spec.qmp.display()
            ));
        }
        if e.name == req.vm {
            if e.paths == req.disks {
                update_policy(sh, set, &e, &req, &names)?;
                return Ok(Added::Already(names));
            }
            return Err(format!(
                "VM {} is already protected with other disks ({}): disable its protection first",
                req.vm,
                shown(&e.paths)
            ));
        }
        if let Some(p) = req.disks.iter().find(|p| e.paths.contains(p)) {
            return Err(format!(
                "disk {} is already protected as part of VM {}",
                p.display(),
                e.name
            ));
        }
    }
    if let Some(g) = &req.group {
        set.groups
            .check(g, &req.vm, false, Duration::from_secs(req.interval_seconds))?;
    }
    // Enable protection's local checks: every disk opens and its format is supported.
    let mut jobs = Vec::new();
    for (p, name) in req.disks.iter().zip(&names) {
        let d = vdisk::open(p, OpenOptions::default())
            .map_err(|e| format!("prerequisite check failed: {}: {e}", p.display()))?;
        jobs.push(DiskJob {
            vm: req.vm.clone(),
            name: name.clone(),
            disk: Arc::from(d),
            progress: Default::default(),
        });
    }
    let disks = protected_disks(&jobs, &req.disks, false).map_err(|e| e.to_string())?;
    // Durable before it runs: a sender killed from here on protects it after its restart.
    record(set, &req)?;
    // Checked above, under the add lock: joining cannot be refused now.
    let policy = set.with_group(&req.vm, req.group.as_deref(), false, set.policy_for(&req))?;
    sh.jobs.start_vm(&req.vm);
    sh.jobs.disks_checked(&req.vm, &jobs);
    sh.health.add_vm(&req.vm, &names, Some(req.rpo_threshold()));
    for d in disks.iter() {
        if let Ok(g) = d.lock() {
            sh.board.add_disk(&g.job, Some(g.tracker.clone()));
        }
    }
    info!(vm = %req.vm, disks = ?req.disks, interval_s = req.interval_seconds, group = ?req.group,
          "protection enabled over the control channel");
    set.push(VmEntry {
        name: req.vm.clone(),
        paths: req.disks.clone(),
        sched: Arc::new(Schedule::new(policy.interval)),
        disks,
        policy,
        qemu: None,
    });
    Ok(Added::Started(names))
}

/// [`add`] for a running qemu VM (`qmp`), under the add lock: the same socket and drives
/// again are `already` (a policy change), anything else for a protected VM or socket is
/// refused; otherwise the checks run and the VM is recorded and started.
fn add_qemu(sh: &Shared, set: &VmSet, req: AddedVm) -> Result<Added, String> {
    let spec = qemu_spec(&req)?;
    for e in set.list() {
        let Some(q) = &e.qemu else {
            if e.name == req.vm {
                return Err(format!(
                    "VM {} is already protected with disk images ({}): disable its protection first",
                    req.vm,
                    shown(&e.paths)
                ));
            }
            continue;
        };
        let same = q.spec.qmp == spec.qmp && q.spec.drives == spec.drives && q.spec.nbd == spec.nbd;
        if e.name == req.vm {
            if same {
                let names: Vec<String> = q.disks.iter().map(|d| d.name.clone()).collect();
                update_policy(sh, set, &e, &req, &names)?;
                return Ok(Added::Already(names));
            }
            return Err(format!(
                "VM {} is already protected through QMP socket {} with drives [{}]: disable its protection first",
                req.vm,
                q.spec.qmp.display(),
                q.spec
                    .drives
                    .iter()
                    .map(|d| d.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if q.spec.qmp == spec.qmp {
            return Err(format!(
                "QMP socket {} is already protected as VM {}: one qemu process is one VM",
                spec.qmp.display(),
                e.name
            ));
        }
    }
    if let Some(g) = &req.group {
        // Before anything runs in qemu: a refused request changes nothing.
        set.groups
            .check(g, &req.vm, true, Duration::from_secs(req.interval_seconds))?;
    }
    let (q, details) = crate::sender::qemu::open_requested(sh, spec).map_err(|e| match e {
        SendError::Source { message, .. } => message,
        e => e.to_string(),
    })?;
    // Durable before it runs: a sender killed from here on protects it after its restart.
    record(set, &req)?;
    let threshold = req.rpo_threshold();
    let names =
        crate::sender::qemu::register(sh, set, q, &details, set.policy_for(&req), threshold, false)
            .map_err(|e| e.to_string())?;
    info!(vm = %req.vm, qmp = %req.qmp.as_deref().unwrap_or(Path::new("")).display(),
          drives = ?req.drives, interval_s = req.interval_seconds,
          "protection of a qemu VM enabled over the control channel");
    Ok(Added::Started(names))
}

/// Disk paths as a refusal names them.
fn shown(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

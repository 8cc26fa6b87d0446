//! A protection request's shape, as the control channel asks and `STATE/vms.json` keeps it:
//! the [`AddedVm`] record and the checks that need nothing but the request itself (names,
//! absolute and distinct paths, interval, qemu sockets). Checks against the running set
//! (a VM or disk protected already) are [`super::add`]'s; the disks' own checks open them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A VM added at run time, as `STATE/vms.json` keeps it (and the control channel asks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedVm {
    /// VM name.
    pub vm: String,
    /// Absolute paths of its disk images, in disk order.
    pub disks: Vec<PathBuf>,
    /// Seconds between cycles.
    pub interval_seconds: u64,
    /// RPO above which the VM warns (`None`: twice the interval).
    #[serde(default)]
    pub rpo_threshold_seconds: Option<u64>,
    /// Recovery-point retention in hours (`None`: the sender's `--retention`).
    #[serde(default)]
    pub retention_hours: Option<u32>,
    /// Start of the initial replication, Unix seconds (`None`: at once).
    #[serde(default)]
    pub initial_replication_unix: Option<u64>,
    /// The consistency group the VM switches with (`None`: alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A running qemu VM's QMP socket (then `disks` is empty: the disks are qemu's, see
    /// [`crate::sender::qemu`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<PathBuf>,
    /// With `qmp`: the nodes to protect, `NODE[=NAME]` as `send --drive` takes them (empty:
    /// the guest's writable block devices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<String>,
    /// With `qmp`: the NBD server socket the VM already runs (`send --nbd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<PathBuf>,
}

/// The qemu VM an added VM with `qmp` names.
pub fn qemu_spec(a: &AddedVm) -> Result<crate::sender::qemu::QemuSpec, String> {
    let qmp = a
        .qmp
        .clone()
        .ok_or_else(|| format!("VM {} names no QMP socket", a.vm))?;
    let drives = a
        .drives
        .iter()
        .map(|d| d.parse::<crate::sender::qemu::Drive>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::sender::qemu::QemuSpec {
        vm: a.vm.clone(),
        qmp,
        drives,
        nbd: a.nbd.clone(),
        group: a.group.clone(),
    })
}

impl AddedVm {
    /// The RPO above which the VM warns: its own threshold, or the default for its interval.
    pub fn rpo_threshold(&self) -> Duration {
        self.rpo_threshold_seconds
            .map(Duration::from_secs)
            .unwrap_or_else(|| {
                crate::health::default_rpo_threshold(Duration::from_secs(self.interval_seconds))
            })
    }
}

/// Checks a qemu request's shape: no disk images, absolute sockets, valid drives and group
/// name.
pub(super) fn check_qemu_request(a: &AddedVm) -> Result<(), String> {
    if !a.disks.is_empty() {
        return Err(format!(
            "VM {}: name either disk images (disks) or a running qemu VM's QMP socket (qmp), not both",
            a.vm
        ));
    }
    for (what, p) in [("qmp", &a.qmp), ("nbd", &a.nbd)] {
        if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
            return Err(format!(
                "{what} socket {:?} is not absolute: the sender resolves no relative paths",
                p.display().to_string()
            ));
        }
    }
    if a.drives.len() > 64 {
        return Err(format!("VM {}: at most 64 drives", a.vm));
    }
    qemu_spec(a)?;
    if let Some(g) = &a.group {
        crate::sender::group::check_name(g)?;
    }
    Ok(())
}

/// Checks a request's shape: names, absolute and distinct paths, the interval.
pub(super) fn check_request(a: &AddedVm) -> Result<(), String> {
    crate::sink::validate_name("VM name", &a.vm).map_err(|e| e.to_string())?;
    if !(1..=86_400).contains(&a.interval_seconds) {
        return Err("interval_seconds ranges from 1 to 86400".into());
    }
    if a.rpo_threshold_seconds == Some(0) {
        return Err("rpo_threshold_seconds must be at least 1".into());
    }
    if a.qmp.is_some() {
        return check_qemu_request(a);
    }
    if !a.drives.is_empty() || a.nbd.is_some() {
        return Err(format!(
            "VM {}: drives and nbd name a qemu VM's nodes and NBD socket: give its QMP socket (qmp) too",
            a.vm
        ));
    }
    if a.disks.is_empty() {
        return Err(format!("VM {}: name at least one disk", a.vm));
    }
    if a.disks.len() > 64 {
        return Err(format!("VM {}: at most 64 disks", a.vm));
    }
    for (i, p) in a.disks.iter().enumerate() {
        if !p.is_absolute() {
            return Err(format!(
                "disk path {:?} is not absolute: the sender resolves no relative paths",
                p.display().to_string()
            ));
        }
        if a.disks[..i].contains(p) {
            return Err(format!("disk {} is named twice", p.display()));
        }
    }
    if let Some(g) = &a.group {
        crate::sender::group::check_name(g)?;
    }
    Ok(())
}

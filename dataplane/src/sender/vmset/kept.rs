//! `STATE/vms.json`, the VMs added at run time: read at start (a restarted sender protects
//! them again), replaced durably (write, fsync, rename) whenever a request adds a VM or
//! changes a kept VM's policy. Kept apart from the set itself: the file is what survives a
//! restart, the set only what this run protects.

use std::path::Path;

use tracing::warn;

use super::{AddedVm, VmSet};
use crate::disk::{self as vdisk, OpenOptions};
use crate::sender::SendError;

/// The file of added VMs in the state folder.
pub const FILE: &str = "vms.json";

/// The VMs added at run time by earlier runs (none when the file does not exist).
pub fn load(state: &Path) -> Result<Vec<AddedVm>, SendError> {
    let path = state.join(FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            SendError::Internal(format!(
                "{}: unreadable list of added VMs ({e}); fix or remove it",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SendError::Internal(format!("{}: {e}", path.display()))),
    }
}

/// The added VMs a starting sender protects: those of `STATE/vms.json` the command line
/// does not name itself (it wins) whose disks still open (a disk gone stops that VM only,
/// not the whole sender).
pub fn load_for_start(
    state: &Path,
    flagged: &[crate::sender::VmSpec],
) -> Result<Vec<AddedVm>, SendError> {
    Ok(load(state)?
        .into_iter()
        .filter(|a| {
            if flagged.iter().any(|v| v.name == a.vm) {
                warn!(vm = %a.vm, "VM added over the control channel is also on the command line; the command line wins");
                return false;
            }
            // A qemu VM's checks run when it is opened (`qemu::add_vms`).
            match a
                .disks
                .iter()
                .find_map(|p| vdisk::open(p, OpenOptions::default()).err().map(|e| (p, e)))
            {
                Some((p, e)) => {
                    tracing::error!(vm = %a.vm, disk = %p.display(), error = %e,
                        "a VM enabled through the control channel cannot be protected: its disk does not open; enable it again once fixed");
                    false
                }
                None => true,
            }
        })
        .collect())
}

/// Replaces `STATE/vms.json` durably (write, fsync, rename).
pub(super) fn save(state: &Path, vms: &[AddedVm]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(state)?;
    let tmp = state.join(".vms.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(vms).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, state.join(FILE))?;
    if let Ok(d) = std::fs::File::open(state) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Records `req` in the VM list of the state folder (replacing an earlier request for its VM).
pub(super) fn record(set: &VmSet, req: &AddedVm) -> Result<(), String> {
    let mut kept = load(&set.state).map_err(|e| e.to_string())?;
    kept.retain(|a| a.vm != req.vm);
    kept.push(req.clone());
    save_kept(set, &kept)
}

/// Replaces the kept request for `req`'s VM with `req`, if the VM was added over the
/// control channel (a VM of the command line is not kept) and its request changed.
pub(super) fn update(set: &VmSet, req: &AddedVm) -> Result<(), String> {
    let mut kept = load(&set.state).map_err(|e| e.to_string())?;
    match kept.iter_mut().find(|k| k.vm == req.vm) {
        Some(k) if k != req => {
            *k = req.clone();
            save_kept(set, &kept)
        }
        _ => Ok(()),
    }
}

/// [`save`], its error naming the file for the operator.
fn save_kept(set: &VmSet, kept: &[AddedVm]) -> Result<(), String> {
    save(&set.state, kept).map_err(|e| {
        format!(
            "cannot record the VM in {}: {e}",
            set.state.join(FILE).display()
        )
    })
}

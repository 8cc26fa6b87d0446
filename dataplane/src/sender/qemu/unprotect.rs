//! Disabling protection of a qemu VM (`vdrep unprotect --vm VM --qmp SOCKET`): everything
//! vdrep added to qemu goes — views, jobs, exports, the NBD server it started — and, unlike
//! a clean stop, the bitmaps too (nothing is left to ship), with the VM's state folder.

use std::path::Path;
use std::time::Duration;

use vdrep_qemu::fleece::{cleanup_leftovers, remove_all_bitmaps, stop_nbd_server};
use vdrep_qemu::qmp::Qmp;

use super::discover::{discover, Drive};
use super::state::StateDir;
use super::QemuSpec;

/// What [`unprotect`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Exports, jobs and nodes of views.
    pub leftovers: usize,
    /// `(node, bitmap)` pairs.
    pub bitmaps: Vec<(String, String)>,
    /// vdrep's NBD server was stopped.
    pub nbd_server: bool,
    /// The state folder was removed.
    pub state: bool,
}

/// Removes everything of `spec`'s protection from qemu and from `state_root`.
pub fn unprotect(spec: &QemuSpec, state_root: &Path) -> Result<Removed, String> {
    let mut qmp = Qmp::connect(&spec.qmp, Duration::from_secs(20))
        .map_err(|e| format!("QMP {}: {e}", spec.qmp.display()))?;
    let drives: &[Drive] = &spec.drives;
    let disks = discover(&mut qmp, drives).map_err(|e| e.to_string())?;
    let mut out = Removed::default();
    let left = cleanup_leftovers(&mut qmp, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    out.leftovers = left.exports.len() + left.jobs.len() + left.nodes.len();
    let nodes: Vec<String> = disks.iter().map(|d| d.node.clone()).collect();
    out.bitmaps = remove_all_bitmaps(&mut qmp, &nodes).map_err(|e| e.to_string())?;
    let state = StateDir::new(state_root, &spec.vm);
    let st = state.load().unwrap_or_default();
    if spec.nbd.is_none() && st.nbd_started {
        out.nbd_server = stop_nbd_server(&mut qmp).is_ok();
    }
    if state.path().exists() {
        std::fs::remove_dir_all(state.path())
            .map_err(|e| format!("{}: {e}", state.path().display()))?;
        out.state = true;
    }
    Ok(out)
}

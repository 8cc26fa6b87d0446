//! A qemu VM's clean stop, and the process's list of its qemu VMs that SIGTERM stops
//! (`vdrep send`'s signal handler calls [`stop_all`]).

use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};
use vdrep_qemu::fleece::{cleanup_leftovers, reconcile_bitmaps, stop_nbd_server, FleeceError};
use vdrep_qemu::qmp::QmpError;

use super::{Inner, QemuVm};
use crate::sender::SendError;

impl QemuVm {
    /// A clean stop: removes every view, filter, job and export vdrep added (merging an
    /// unfinished switch's bitmaps back, so no write is lost) and the NBD server vdrep
    /// started; the bitmaps stay, so writes made while the sender is stopped ship when it
    /// starts again.
    pub fn stop(&self) -> Result<(), SendError> {
        let mut g = self.lock();
        let views = std::mem::take(&mut g.views);
        g.fleecer = None;
        let Inner { qmp, st, .. } = &mut *g;
        let Some(qmp) = qmp.as_mut() else {
            return Ok(());
        };
        let fe = |e| self.fleece_err(e);
        cleanup_leftovers(qmp, Duration::from_secs(30)).map_err(fe)?;
        for v in &views {
            if let Some(prev) = &v.previous_bitmap {
                reconcile_bitmaps(qmp, &v.node, prev).map_err(fe)?;
            }
        }
        if self.spec.nbd.is_none() && st.nbd_started {
            match stop_nbd_server(qmp) {
                Ok(()) | Err(FleeceError::Qmp(QmpError::Command { .. })) => {}
                Err(e) => return Err(fe(e)),
            }
            st.nbd_started = false;
            self.save(st)?;
            let _ = std::fs::remove_file(self.nbd_socket());
        }
        info!(vm = %self.name, "qemu: views, jobs and exports removed; bitmaps kept");
        Ok(())
    }
}

/// The process's qemu VMs, for the clean stop on SIGTERM.
static RUNNING: Mutex<Vec<std::sync::Weak<QemuVm>>> = Mutex::new(Vec::new());

/// Records `vm` for [`stop_all`].
pub fn register(vm: &std::sync::Arc<QemuVm>) {
    if let Ok(mut l) = RUNNING.lock() {
        l.push(std::sync::Arc::downgrade(vm));
    }
}

/// Stops every qemu VM of the process cleanly (SIGTERM): see [`QemuVm::stop`].
pub fn stop_all() {
    let vms: Vec<_> = RUNNING
        .lock()
        .map(|l| l.iter().filter_map(|w| w.upgrade()).collect())
        .unwrap_or_default();
    for vm in vms {
        if let Err(e) = vm.stop() {
            warn!(vm = %vm.name, error = %e, "qemu clean stop incomplete; the next start removes the rest");
        }
    }
}

/// True when the process protects a qemu VM.
pub fn any_running() -> bool {
    RUNNING.lock().map(|l| !l.is_empty()).unwrap_or(false)
}

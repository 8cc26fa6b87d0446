//! The VMs a protecting sender replicates, a set that grows at run time: the sidecar asks
//! over the local control channel ([`super::local_control::Request::Protect`]) to protect a
//! VM the command line does not name, so enabling protection needs no restart.
//!
//! A request runs enable protection's local checks at once (every disk path is absolute and
//! not protected yet, every disk opens and its format is supported) and answers with the
//! refusal when one fails. Otherwise change tracking starts, the VM is recorded in
//! `STATE/vms.json` (a restarted sender keeps protecting it), and the attempt loop is woken:
//! it runs the VM on the current connection, where the receiver's checks (reachable,
//! authorised for that VM, capacity), the initial copy and then cycles at the VM's interval
//! follow as for any VM (the sender's jobs track each step).
//!
//! Where each part lives: [`request`] is the request's shape and its checks, [`add`] adds a
//! checked request to the running set, [`kept`] is `STATE/vms.json`, and [`run`] runs the
//! set's VMs on a connection. This file holds the set itself.

mod add;
mod kept;
mod request;
mod run;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use add::{add, protected_disks, Added};
pub use kept::{load, load_for_start, FILE};
pub use request::{qemu_spec, AddedVm};
pub use run::run_all;

use super::protect::{Policy, Protected, Schedule};

/// One protected VM: its disks (shared across reconnects), switch schedule and policy.
pub struct VmEntry {
    /// VM name.
    pub name: String,
    /// Source images, in disk order.
    pub paths: Vec<PathBuf>,
    /// The disks.
    pub disks: Arc<Vec<Arc<Mutex<Protected>>>>,
    /// When its logs switch.
    pub sched: Arc<Schedule>,
    /// Its cycle policy.
    pub policy: Policy,
    /// Set for a qemu VM: its changes come from qemu (`sender::qemu`), not from change
    /// logs, and `disks` is empty.
    pub qemu: Option<Arc<super::qemu::QemuVm>>,
}

/// Every protected VM of the run.
pub struct VmSet {
    list: Mutex<Vec<Arc<VmEntry>>>,
    /// Additions serialise here (disks open while it is held, not the list).
    adding: Mutex<()>,
    /// The number of VMs, for the attempt loop to notice additions.
    grew: tokio::sync::watch::Sender<usize>,
    /// Retention and cycle limit of added VMs (the command line's).
    base: Policy,
    state: PathBuf,
    /// The consistency groups of the VMs.
    groups: super::group::Groups,
    /// VMs whose change source failed alone: retried alone, or given up.
    pub retries: super::vm_retry::VmRetries,
}

impl VmSet {
    /// An empty set; added VMs take `base`'s retention and are kept in `state`.
    pub fn new(base: Policy, state: &Path) -> Self {
        VmSet {
            list: Mutex::new(Vec::new()),
            adding: Mutex::new(()),
            grew: tokio::sync::watch::Sender::new(0),
            base,
            state: state.to_path_buf(),
            groups: Default::default(),
            retries: Default::default(),
        }
    }

    /// The consistency groups.
    pub fn groups(&self) -> &super::group::Groups {
        &self.groups
    }

    /// `policy` with `vm`'s consistency group, which `vm` (`qemu`: a qemu VM) joins
    /// (refused when the group holds 16 VMs already, switches at another interval, or
    /// holds a qemu VM already and `vm` is one).
    pub fn with_group(
        &self,
        vm: &str,
        group: Option<&str>,
        qemu: bool,
        policy: Policy,
    ) -> Result<Policy, String> {
        let group = match group {
            Some(g) => Some(
                self.groups
                    .join(g, vm, qemu, policy.interval, &self.state)?,
            ),
            None => None,
        };
        Ok(Policy { group, ..policy })
    }

    /// Adds a VM (at start, or after a request was checked).
    pub fn push(&self, e: VmEntry) {
        let n = self
            .list
            .lock()
            .map(|mut l| {
                l.push(Arc::new(e));
                l.len()
            })
            .unwrap_or(0);
        self.grew.send_replace(n);
    }

    /// Every VM now.
    pub fn list(&self) -> Vec<Arc<VmEntry>> {
        self.list.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Changes whenever a VM is added.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<usize> {
        self.grew.subscribe()
    }

    /// The policy of an added VM.
    pub fn policy_for(&self, a: &AddedVm) -> Policy {
        let base = self.base.clone();
        Policy {
            interval: Duration::from_secs(a.interval_seconds),
            retention: a
                .retention_hours
                .map(|h| Duration::from_secs(u64::from(h.min(24)) * 3600))
                .unwrap_or(base.retention),
            initial_at: a
                .initial_replication_unix
                .and_then(|t| jiff::Timestamp::from_second(i64::try_from(t).ok()?).ok()),
            ..base
        }
    }
}

#[cfg(test)]
mod tests;

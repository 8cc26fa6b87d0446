//! Limits on what one connection may make the receiver hold: however many disks a sender
//! announces, it cannot make the receiver keep an unbounded number of replicas (their state
//! and resync indexes) open.

use super::{Pending, ReceiverSession, Stream};
use crate::session::Refusal;
use crate::wire::ErrorClass;

/// Default of the receiver's `--max-disks-per-connection`: four VMs of the 64 disks a VM may
/// have.
pub const DEFAULT_MAX_DISKS_PER_CONNECTION: usize = 256;

impl ReceiverSession {
    /// Sets how many distinct disks this connection may hold open (at least 1).
    pub fn with_max_disks(mut self, n: usize) -> Self {
        self.max_disks = n.max(1);
        self
    }

    /// Refuses opening `vm`/`disk` when the connection holds (or is opening) `max_disks`
    /// other disks. A disk opened again does not count twice. Non-recoverable: retrying
    /// cannot help; the operator raises the limit or spreads the VMs over connections.
    pub(super) fn check_disk_limit(&self, vm: &str, disk: &str) -> Result<(), Refusal> {
        let mut open: std::collections::BTreeSet<(&str, &str)> = self
            .disks
            .values()
            .map(|d| (d.vm.as_str(), d.disk.as_str()))
            .collect();
        for s in self.streams.values() {
            if let Stream::Busy {
                pending: Pending::Open { vm, disk, .. },
                ..
            } = s
            {
                open.insert((vm.as_str(), disk.as_str()));
            }
        }
        if open.len() >= self.max_disks && !open.contains(&(vm, disk)) {
            return Err(Refusal::new(
                ErrorClass::InvalidState,
                format!(
                    "refused to open {vm}/{disk}: this connection has {} disks open, the \
                     receiver's limit (--max-disks-per-connection {}); raise it on the receiver",
                    open.len(),
                    self.max_disks
                ),
            ));
        }
        Ok(())
    }
}

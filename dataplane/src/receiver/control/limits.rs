//! Limits on what one connection may hold open: a sender, however many disks it announces,
//! cannot make the receiver keep an unbounded number of replicas (their state and resync
//! indexes) open.

use tracing::warn;
use vdrep_proto::wire::ErrorClass;

use super::ConnState;
use crate::sink::DiskKey;

impl ConnState {
    /// Refuses opening `key` when this connection holds `limit` other disks open already
    /// (a disk opened again does not count twice). Non-recoverable: retrying cannot help,
    /// the operator raises the limit or spreads the VMs over connections.
    pub(super) fn check_disk_limit(
        &self,
        key: &DiskKey,
        limit: usize,
    ) -> Result<(), (ErrorClass, String)> {
        let open: std::collections::HashSet<String> = self
            .disks
            .lock()
            .map(|d| d.values().map(|s| s.replica.key().to_string()).collect())
            .unwrap_or_default();
        if open.len() >= limit && !open.contains(&key.to_string()) {
            warn!(sender = %self.sender, disk = %key, limit, "refused: too many disks on one connection");
            return Err((
                ErrorClass::InvalidState,
                format!(
                    "refused to open {key}: this connection has {} disks open, the receiver's \
                     limit (--max-disks-per-connection {limit}); raise it on the receiver",
                    open.len()
                ),
            ));
        }
        Ok(())
    }
}

//! qemu's NBD server. A VM normally runs none: vdrep starts one on a private unix socket for
//! its views and stops it when done. qemu allows only one; where the VM already runs one,
//! vdrep adds its exports there and leaves the server alone.

use std::path::Path;

use serde_json::json;

use crate::qmp::Qmp;

use super::error::FleeceError;

/// Starts qemu's NBD server on unix socket `socket` (`nbd-server-start`). When one already
/// runs, [`FleeceError::NbdServerRunning`].
pub fn start_nbd_server(qmp: &mut Qmp, socket: &Path) -> Result<(), FleeceError> {
    let r = qmp.execute(
        "nbd-server-start",
        Some(json!({"addr": {"type": "unix", "data": {"path": socket.to_string_lossy()}}})),
    );
    match r {
        Ok(_) => Ok(()),
        Err(crate::qmp::QmpError::Command { desc, .. }) if desc.contains("already running") => {
            Err(FleeceError::NbdServerRunning)
        }
        Err(e) => Err(e.into()),
    }
}

/// Stops the NBD server vdrep started (`nbd-server-stop`); its exports go with it.
pub fn stop_nbd_server(qmp: &mut Qmp) -> Result<(), FleeceError> {
    qmp.execute("nbd-server-stop", None)?;
    Ok(())
}

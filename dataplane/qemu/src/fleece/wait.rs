//! Waiting for qemu's asynchronous steps (a job going away, an export closing) by polling,
//! bounded by a number of polls rather than a clock (this crate reads none).

use std::time::Duration;

use crate::qmp::{Qmp, QmpError};

/// The pause between two polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `done` until it returns true, at most `limit / POLL_INTERVAL` times.
pub fn poll_until(
    qmp: &mut Qmp,
    what: &str,
    limit: Duration,
    mut done: impl FnMut(&mut Qmp) -> Result<bool, QmpError>,
) -> Result<(), QmpError> {
    let polls = (limit.as_millis() / POLL_INTERVAL.as_millis()).max(1);
    for _ in 0..polls {
        if done(qmp)? {
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    if done(qmp)? {
        return Ok(());
    }
    Err(QmpError::WaitExpired {
        path: qmp.path().to_path_buf(),
        what: what.to_string(),
        waited_ms: limit.as_millis() as u64,
    })
}

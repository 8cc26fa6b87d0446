//! **Test hooks** (tests only): pause a qemu round after its views are taken, or once its
//! disks committed and before its VM point.
//!
//! A kill -9 of the sender "mid-cycle" (views, jobs, filters and exports in place in qemu,
//! the old bitmap stopped, nothing committed) cannot be hit by luck: a round of small disks
//! takes milliseconds. With `VDREP_TEST_QEMU_PAUSE=MS` in the sender's environment, every
//! round sleeps `MS` milliseconds once its switch is done and logs [`PAUSED_LOG`] first, so
//! an end-to-end test can kill the sender there. Likewise `VDREP_TEST_QEMU_POINT_PAUSE=MS`
//! holds a round whose every disk committed before its `CommitPoint` ([`POINT_LOG`]): a
//! kill there must not lose the VM point (`super::point`). And
//! `VDREP_TEST_QEMU_SPOOL_PAUSE=MS` holds a cycle whose view was drained into its spool and
//! removed, before it ships ([`SPOOL_LOG`]): a kill there, with the cycle's bitmap stopped
//! and no view left, must miss no write (`super::spool`). Nothing else reads the
//! variables; a process that honours one warns in its log.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable of the hook (milliseconds).
pub const QEMU_PAUSE_ENV: &str = "VDREP_TEST_QEMU_PAUSE";

/// The log line written when the hook pauses a round.
pub const PAUSED_LOG: &str = "test hook: qemu round paused with its views in place";

/// The environment variable of the hook before a round's VM point (milliseconds).
pub const POINT_PAUSE_ENV: &str = "VDREP_TEST_QEMU_POINT_PAUSE";

/// The log line written when the hook pauses a round before its VM point.
pub const POINT_LOG: &str = "test hook: qemu round paused before its VM point";

/// The environment variable of the hook after a cycle's spool (milliseconds).
pub const SPOOL_PAUSE_ENV: &str = "VDREP_TEST_QEMU_SPOOL_PAUSE";

/// The log line written when the hook pauses a spooled cycle.
pub const SPOOL_LOG: &str = "test hook: qemu cycle paused with its view drained and removed";

/// Called on a blocking thread once a cycle's view is drained into its spool and removed;
/// sleeps when the hook is set.
pub fn after_spool() {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    if let Some(d) = *PAUSE.get_or_init(|| read(SPOOL_PAUSE_ENV)) {
        tracing::warn!(ms = d.as_millis() as u64, "{SPOOL_LOG}");
        std::thread::sleep(d);
    }
}

fn read(var: &str) -> Option<Duration> {
    let v = std::env::var(var).ok()?;
    match v.trim().parse::<u64>() {
        Ok(ms) => {
            tracing::warn!(ms, "{var} is set: qemu rounds pause (a test hook)");
            Some(Duration::from_millis(ms))
        }
        Err(_) => {
            tracing::error!(value = %v, "ignoring {var}: not a number of milliseconds");
            None
        }
    }
}

fn pause() -> Option<Duration> {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    *PAUSE.get_or_init(|| read(QEMU_PAUSE_ENV))
}

/// Called once every disk of a round committed, before its VM point; sleeps when the hook
/// is set.
pub async fn before_point() {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    if let Some(d) = *PAUSE.get_or_init(|| read(POINT_PAUSE_ENV)) {
        tracing::warn!(ms = d.as_millis() as u64, "{POINT_LOG}");
        tokio::time::sleep(d).await;
    }
}

/// Called once a round's views are taken; sleeps when the hook is set.
pub async fn after_switch() {
    if let Some(d) = pause() {
        tracing::warn!(ms = d.as_millis() as u64, "{PAUSED_LOG}");
        tokio::time::sleep(d).await;
    }
}

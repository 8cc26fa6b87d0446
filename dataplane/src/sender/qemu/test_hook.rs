//! **Test hook** (tests only): pause a qemu round after its views are taken.
//!
//! A kill -9 of the sender "mid-cycle" (views, jobs, filters and exports in place in qemu,
//! the old bitmap stopped, nothing committed) cannot be hit by luck: a round of small disks
//! takes milliseconds. With `VDREP_TEST_QEMU_PAUSE=MS` in the sender's environment, every
//! round sleeps `MS` milliseconds once its switch is done and logs [`PAUSED_LOG`] first, so
//! an end-to-end test can kill the sender there. Nothing else reads the variable; a
//! process that honours it warns in its log.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable of the hook (milliseconds).
pub const QEMU_PAUSE_ENV: &str = "VDREP_TEST_QEMU_PAUSE";

/// The log line written when the hook pauses a round.
pub const PAUSED_LOG: &str = "test hook: qemu round paused with its views in place";

fn pause() -> Option<Duration> {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    *PAUSE.get_or_init(|| {
        let v = std::env::var(QEMU_PAUSE_ENV).ok()?;
        match v.trim().parse::<u64>() {
            Ok(ms) => {
                tracing::warn!(ms, "{QEMU_PAUSE_ENV} is set: every qemu round pauses after its switch (a test hook)");
                Some(Duration::from_millis(ms))
            }
            Err(_) => {
                tracing::error!(value = %v, "ignoring {QEMU_PAUSE_ENV}: not a number of milliseconds");
                None
            }
        }
    })
}

/// Called once a round's views are taken; sleeps when the hook is set.
pub async fn after_switch() {
    if let Some(d) = pause() {
        tracing::warn!(ms = d.as_millis() as u64, "{PAUSED_LOG}");
        tokio::time::sleep(d).await;
    }
}

//! **Test hooks** (tests only): pause the receiver after a disk's cycle commit; shorten the
//! deadline of frame bodies.
//!
//! A VM point is written only after every disk's part of the cycle is committed (issue 17:
//! a receiver killed while one disk of a cycle is durable and another is not keeps the VM's
//! previous point as the latest). A kill -9 that lands exactly between two disks' commits
//! cannot be left to luck: with `VDREP_TEST_COMMIT_PAUSE=MS` in the receiver's environment,
//! every committed delta cycle of a disk is followed by a pause of `MS` milliseconds, after
//! [`PAUSED_LOG`] is logged, before the answer goes to the sender — so an end-to-end test
//! can kill the receiver with that disk's cycle durable and the VM's next disk not. Nothing
//! else reads the variable; a process that honours it warns in its log.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable of the hook (milliseconds).
pub const COMMIT_PAUSE_ENV: &str = "VDREP_TEST_COMMIT_PAUSE";

/// The log line written when the hook pauses after a commit.
pub const PAUSED_LOG: &str = "test hook: paused after a disk's cycle commit";

fn pause() -> Option<Duration> {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    *PAUSE.get_or_init(|| {
        let v = std::env::var(COMMIT_PAUSE_ENV).ok()?;
        match v.trim().parse::<u64>() {
            Ok(ms) => {
                tracing::warn!(
                    ms,
                    "{COMMIT_PAUSE_ENV} is set: every cycle commit pauses before its answer (a test hook)"
                );
                Some(Duration::from_millis(ms))
            }
            Err(_) => {
                tracing::error!(value = %v, "ignoring {COMMIT_PAUSE_ENV}: not a number of milliseconds");
                None
            }
        }
    })
}

/// Called after cycle `cycle` of `disk` is durable and before its answer is sent; waits
/// (this control stream only) when the hook is set.
pub async fn after_disk_commit(disk: &str, cycle: u64) {
    if let Some(d) = pause() {
        tracing::warn!(%disk, cycle, ms = d.as_millis() as u64, "{PAUSED_LOG}");
        tokio::time::sleep(d).await;
    }
}

/// The environment variable that replaces every frame body's deadline
/// (`limits::body_deadline`, minutes for a large frame) with this many milliseconds, so a
/// test of the slowloris bound ends in seconds. Nothing else reads it; a process that
/// honours it warns in its log.
pub const BODY_DEADLINE_ENV: &str = "VDREP_TEST_BODY_DEADLINE";

/// The deadline set by [`BODY_DEADLINE_ENV`], if any.
pub fn body_deadline() -> Option<Duration> {
    static DEADLINE: OnceLock<Option<Duration>> = OnceLock::new();
    *DEADLINE.get_or_init(|| {
        let v = std::env::var(BODY_DEADLINE_ENV).ok()?;
        match v.trim().parse::<u64>() {
            Ok(ms) => {
                tracing::warn!(
                    ms,
                    "{BODY_DEADLINE_ENV} is set: every frame body must arrive within it (a test hook)"
                );
                Some(Duration::from_millis(ms))
            }
            Err(_) => {
                tracing::error!(value = %v, "ignoring {BODY_DEADLINE_ENV}: not a number of milliseconds");
                None
            }
        }
    })
}

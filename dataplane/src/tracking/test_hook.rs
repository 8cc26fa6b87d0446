//! **Test hook** (tests only): pause a VM's log switch between two disks.
//!
//! The prefix property of a VM's recovery points (issue 17: no tracked write to any of the
//! VM's disks lands between the first and the last disk's switch) cannot be shown by luck:
//! a switch takes milliseconds and a writer rarely hits it. With
//! `VDREP_TEST_SWITCH_PAUSE=MS` in the sender's environment, every switch of a set of disks
//! sleeps `MS` milliseconds after each disk but the last, where the switch of the next
//! disk would begin, and logs [`PAUSED_LOG`] first, so an end-to-end test can write during the
//! pause (and see the VM-wide switch hold its writes) or kill -9 the sender inside a switch.
//! Nothing else reads the variable; a process that honours it warns in its log.

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable of the hook (milliseconds).
pub const SWITCH_PAUSE_ENV: &str = "VDREP_TEST_SWITCH_PAUSE";

/// The log line written when the hook pauses a switch.
pub const PAUSED_LOG: &str = "test hook: log switch paused between disks";

fn pause() -> Option<Duration> {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    *PAUSE.get_or_init(|| {
        let v = std::env::var(SWITCH_PAUSE_ENV).ok()?;
        match v.trim().parse::<u64>() {
            Ok(ms) => {
                tracing::warn!(
                    ms,
                    "{SWITCH_PAUSE_ENV} is set: every log switch pauses between disks (a test hook)"
                );
                Some(Duration::from_millis(ms))
            }
            Err(_) => {
                tracing::error!(value = %v, "ignoring {SWITCH_PAUSE_ENV}: not a number of milliseconds");
                None
            }
        }
    })
}

/// Called by a switch after disk `done` and before the next one; sleeps when the hook is
/// set (blocking: the switch runs on a blocking thread).
pub fn between_disks(done: &str) {
    if let Some(d) = pause() {
        tracing::warn!(after = %done, ms = d.as_millis() as u64, "{PAUSED_LOG}");
        std::thread::sleep(d);
    }
}

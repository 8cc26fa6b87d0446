//! A held sync ([`super::SimFs::hold_next_sync`]): a gate between the store's fdatasync and
//! the test, so the test can act while the sync is in progress.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A data-file sync held by [`SimFs::hold_next_sync`].
#[derive(Debug, Clone, Default)]
pub struct SyncHold {
    gate: Arc<(Mutex<HoldState>, Condvar)>,
}

#[derive(Debug, Default)]
struct HoldState {
    entered: bool,
    released: bool,
}

impl SyncHold {
    fn state(&self) -> MutexGuard<'_, HoldState> {
        self.gate.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for the held sync to start; true once it has.
    pub fn wait_entered(&self, timeout: Duration) -> bool {
        let g = self.state();
        let (g, _) = self
            .gate
            .1
            .wait_timeout_while(g, timeout, |s| !s.entered)
            .unwrap_or_else(|p| p.into_inner());
        g.entered
    }

    /// True while the held sync has started and not been released.
    pub fn is_waiting(&self) -> bool {
        let s = self.state();
        s.entered && !s.released
    }

    /// Lets the held sync finish.
    pub fn release(&self) {
        self.state().released = true;
        self.gate.1.notify_all();
    }

    /// Called by the held sync: says it started, then waits for the release.
    pub(super) fn enter_and_wait(&self) {
        let mut g = self.state();
        g.entered = true;
        self.gate.1.notify_all();
        while !g.released {
            g = self.gate.1.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

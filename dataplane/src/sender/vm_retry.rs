//! A VM's own faults (issue 18 item 3): its change source fails — qemu's QMP socket gone,
//! qemu restarting — while the connection to the receiver and the sender's other VMs are
//! fine. Such a VM is retried alone, on its own copy of the retry schedule (Warning; the
//! other VMs go on without a reconnect), and with `--give-up-after` it is given up alone
//! once that long passed without its own progress: Critical with the reason, its protection
//! stopped. The sender ends (exit 75) only when every VM was given up.
//!
//! Only a change source's transient failure ([`SendError::Source`]) is the VM's own: a
//! network or receiver failure ends the attempt for every VM as before, and a source's
//! refusal (not transient) ends the run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::SendError;
use crate::retry::{Backoff, Classified, RetrySchedule};

/// What health says of a VM given up alone.
pub const GAVE_UP_ADVICE: &str = "its change source stayed unreachable for --give-up-after: protection of this VM stopped (the others go on); fix qemu and restart the sender";

/// Whether `e` concerns its VM alone: a transient failure of the VM's change source.
pub fn source_alone(e: &SendError) -> bool {
    matches!(
        e,
        SendError::Source {
            transient: true,
            ..
        }
    )
}

/// What to do with a VM whose source failed alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start its protection again after this delay.
    RetryIn(Duration),
    /// Given up: its protection stops.
    GaveUp,
}

#[derive(Debug)]
struct VmBackoff {
    backoff: Backoff,
    /// The VM's rounds when it last failed: more since then is progress of its own.
    rounds: u64,
}

/// The per-VM retry state of a run, kept across the connection's attempts.
#[derive(Debug, Default)]
pub struct VmRetries {
    vms: Mutex<HashMap<String, VmBackoff>>,
    gave_up: Mutex<Vec<String>>,
}

impl VmRetries {
    /// `vm` failed alone after `rounds` rounds of its own; `give_up_after` is the sender's
    /// `--give-up-after` (`None`: retried forever on the schedule).
    pub fn failed(&self, vm: &str, rounds: u64, give_up_after: Option<Duration>) -> Verdict {
        let Ok(mut m) = self.vms.lock() else {
            return Verdict::GaveUp;
        };
        let b = m.entry(vm.to_string()).or_insert_with(|| VmBackoff {
            backoff: Backoff::new(RetrySchedule::default(), give_up_after),
            rounds,
        });
        if rounds > b.rounds {
            // It made progress since its last failure: a new outage.
            b.backoff.reset();
            b.rounds = rounds;
        }
        match b.backoff.next_delay(true) {
            Some(d) => Verdict::RetryIn(d),
            None => {
                m.remove(vm);
                if let Ok(mut g) = self.gave_up.lock() {
                    g.push(vm.to_string());
                }
                Verdict::GaveUp
            }
        }
    }

    /// Whether `vm` was given up (its protection is not started again).
    pub fn gave_up(&self, vm: &str) -> bool {
        self.gave_up
            .lock()
            .map(|g| g.iter().any(|v| v == vm))
            .unwrap_or(false)
    }

    /// How many VMs were given up.
    pub fn given_up(&self) -> usize {
        self.gave_up.lock().map(|g| g.len()).unwrap_or(0)
    }
}

/// The error a run ends with when `vm` was given up (transient: exit 75).
pub fn gave_up_error(vm: &str) -> SendError {
    SendError::Source {
        vm: vm.to_string(),
        message: "given up after --give-up-after: its change source stayed unreachable".into(),
        transient: true,
    }
}

/// Health's classification of a VM given up alone.
pub fn gave_up_class() -> Classified {
    Classified {
        class: "source",
        recoverable: true,
        advice: GAVE_UP_ADVICE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_vm_is_retried_alone_until_give_up_after_passes_without_its_own_progress() {
        let r = VmRetries::default();
        let window = Some(Duration::from_secs(10));
        assert_eq!(
            r.failed("a", 3, window),
            Verdict::RetryIn(Duration::from_millis(200))
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(matches!(r.failed("a", 3, window), Verdict::RetryIn(_)));
        // Progress of its own (more rounds): the window counts from now.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            r.failed("a", 4, window),
            Verdict::RetryIn(Duration::from_millis(200))
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(r.failed("a", 4, window), Verdict::GaveUp);
        assert!(r.gave_up("a") && !r.gave_up("b"));
        assert_eq!(r.given_up(), 1);
        // Without --give-up-after: retried forever, on the long schedule.
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            match r.failed("b", 0, None) {
                Verdict::RetryIn(d) => last = d,
                Verdict::GaveUp => panic!("gave up without --give-up-after"),
            }
        }
        assert!(last >= Duration::from_secs(25 * 60), "{last:?}");
        let e = SendError::Source {
            vm: "a".into(),
            message: "QMP".into(),
            transient: true,
        };
        assert!(source_alone(&e));
        assert!(!source_alone(&SendError::Internal("x".into())));
        assert!(!source_alone(&SendError::Source {
            vm: "a".into(),
            message: "refused".into(),
            transient: false,
        }));
    }
}

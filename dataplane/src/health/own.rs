//! A VM's own faults: its change source fails (qemu's QMP socket is gone) while the
//! connection and the sender's other VMs are fine. The VM retries on its own schedule
//! (Warning) and, with `--give-up-after`, is given up alone (Critical) while the others go
//! on (`sender::vm_retry`). Progress of another VM must not hide such a fault, so only the
//! VM's own progress clears it; a failure of the whole attempt replaces it, except on a VM
//! given up (it stays Critical with its own reason).

use std::time::Duration;

use super::Health;
use crate::retry::Classified;

impl Health {
    /// `vm`'s change source failed alone with `message`; its protection is retried in
    /// `next_retry` (Warning) or, `None`, given up (Critical: `class.advice` says what to do).
    pub fn vm_source_failed(
        &self,
        vm: &str,
        class: &Classified,
        message: &str,
        next_retry: Option<Duration>,
    ) {
        let (err, next) = self.failure(class, message, next_retry);
        self.with(|m| {
            let v = m.entry(vm.to_string()).or_default();
            v.last_error = Some(err);
            v.critical = next_retry.is_none();
            v.next_retry = next;
            v.own = true;
        });
    }

    /// `vm` made progress: its own fault (if any, and not given up) is over.
    pub(super) fn own_progress(&self, vm: &str) {
        self.with(|m| {
            if let Some(v) = m.get_mut(vm).filter(|v| v.own && !v.critical) {
                v.last_error = None;
                v.next_retry = None;
                v.own = false;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::health_of;
    use crate::health::State;

    fn health() -> Health {
        health_of(&[("lost", &["os"]), ("fine", &["os"])])
    }

    fn state(h: &Health, vm: &str) -> (State, Vec<String>) {
        let r = h.report().vms.into_iter().find(|v| v.vm == vm).unwrap();
        (r.state, r.reasons)
    }

    const SOURCE: Classified = Classified {
        class: "source",
        recoverable: true,
        advice: "restart qemu",
    };

    #[tokio::test(start_paused = true)]
    async fn a_vms_own_fault_survives_the_other_vms_progress_and_a_given_up_vm_stays_critical() {
        let h = health();
        let now = h.clock.now_utc();
        h.vm_source_failed(
            "lost",
            &SOURCE,
            "QMP socket gone",
            Some(Duration::from_secs(5)),
        );
        h.committed("fine", "os", now);
        let (s, why) = state(&h, "lost");
        assert_eq!(s, State::Warning, "{why:?}");
        assert!(why[0].contains("QMP socket gone"), "{why:?}");
        assert_eq!(state(&h, "fine").0, State::Normal);
        // Its own progress clears it.
        h.committed("lost", "os", now);
        assert_eq!(state(&h, "lost").0, State::Normal);

        // Given up: Critical, whatever the others do, and a failure of a whole attempt
        // does not replace its reason.
        h.vm_source_failed("lost", &SOURCE, "QMP socket gone", None);
        h.committed("fine", "os", now);
        let net = Classified {
            class: "network",
            recoverable: true,
            advice: "retrying",
        };
        h.failed(&net, "link down", Some(Duration::from_secs(1)));
        let (s, why) = state(&h, "lost");
        assert_eq!(s, State::Critical, "{why:?}");
        assert!(why[0].contains("restart qemu"), "{why:?}");
        let r = h.report().vms.into_iter().find(|v| v.vm == "lost").unwrap();
        assert_eq!(r.last_error.unwrap().message, "QMP socket gone");
        assert_eq!(state(&h, "fine").0, State::Warning, "the network failure");
    }
}

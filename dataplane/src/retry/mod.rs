//! Retries: every error of a replication attempt is classified, and recoverable ones are
//! retried on the seed's schedule (DESIGN.md §1).
//!
//! - **Non-recoverable** (authentication or authorisation refused, a broken disk or disk
//!   chain, an invalid replica state, a disk or VM not found, a protocol or version
//!   mismatch): no second attempt; the VM goes Critical with the reason and waits for an
//!   operator. A broken change-log chain is not an error here at all: the disk is marked for
//!   resync and the others go on (`sender::protect`).
//! - **Recoverable** (network, timeouts, receiver or target busy, target full, low memory):
//!   first a burst of fast reconnects (0.2 .. 5 s, so a restarted receiver is found again
//!   at once), then 1, 2, 4, 8, 10 minutes and every 30 minutes after that, each ±10 %
//!   jitter so that many hosts do not return in step. Every attempt resumes from what the
//!   receiver holds durably; committed data is never resent.
//!
//! A connection that was up and is lost again (receiver restarted, link cut) starts a new
//! outage with its own fast burst; a receiver that answers with an error (busy, full) does
//! not. One-shot sends (no `--interval`) keep `--give-up-after`: fast reconnects until the
//! window (counted from the last durable progress) ends, then exit 75. Continuous protection
//! retries forever, unless `--give-up-after` is given with `--interval`: then it behaves like
//! a one-shot send (tests use this as a bound).

mod schedule;

pub use schedule::{Backoff, RetrySchedule};

use vdrep_proto::wire::ErrorClass;

use crate::sender::SendError;

/// What an error means for the VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Classified {
    /// Short class for logs, metrics and health (`network`, `unauthorized`, …).
    pub class: &'static str,
    /// Whether retrying can help.
    pub recoverable: bool,
    /// What an operator should know or do.
    pub advice: &'static str,
}

/// Classifies a sender error.
pub fn classify(e: &SendError) -> Classified {
    let recoverable = e.is_recoverable();
    let advice = match e {
        SendError::Disk(_) => {
            if recoverable {
                "a transient read error of the source disk; retrying"
            } else {
                "the source disk or its chain is missing or broken: repair it and restart protection"
            }
        }
        SendError::Tls(_) => "the certificates or keys are unusable: check --tls and --identity",
        SendError::Resolve(_) => "the receiver's address does not resolve: check --to",
        e if e.is_receiver_busy() => {
            "the receiver is at its connection limit (--max-connections); retrying"
        }
        SendError::Connection { source, .. }
            if crate::tls::advice::for_connection(source).is_some() =>
        {
            crate::tls::advice::for_connection(source).unwrap_or_default()
        }
        SendError::Connect { .. } | SendError::Connection { .. } | SendError::Frame { .. } => {
            if recoverable {
                "the receiver is unreachable or the link failed; retrying"
            } else {
                "the receiver refused the connection (certificate or authorisation): check --allow and the certificates"
            }
        }
        SendError::Remote { class, .. } => match class {
            ErrorClass::Unauthorized => {
                "the receiver does not allow this sender this VM: check its --allow"
            }
            ErrorClass::NotFound => "the receiver has no such VM or disk",
            ErrorClass::InvalidState | ErrorClass::SizeChanged => {
                "the replica's state does not match the source: a new initial replication is needed"
            }
            ErrorClass::Protocol | ErrorClass::VersionMismatch => {
                "sender and receiver do not speak the same protocol version: upgrade one"
            }
            ErrorClass::TargetFull => "the target is out of space; retrying",
            ErrorClass::TargetBusy | ErrorClass::Internal => "the target is busy; retrying",
            _ if recoverable => "the receiver failed; retrying",
            _ => "the receiver refused: see its log",
        },
        SendError::Protocol { .. } => "the receiver broke the protocol: check both versions",
        SendError::Integrity { .. } => "data kept arriving corrupted; retrying",
        SendError::Internal(_) => "an internal failure of the sender: see its log",
        #[allow(unreachable_patterns)]
        _ => {
            if recoverable {
                "retrying"
            } else {
                "not retried"
            }
        }
    };
    Classified {
        class: e.class(),
        recoverable,
        advice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_final_and_busy_targets_are_retried() {
        let remote = |class| SendError::Remote {
            peer: "rx".into(),
            class,
            message: "m".into(),
        };
        for c in [
            ErrorClass::Unauthorized,
            ErrorClass::NotFound,
            ErrorClass::InvalidState,
            ErrorClass::VersionMismatch,
        ] {
            assert!(!classify(&remote(c)).recoverable, "{c:?}");
        }
        for c in [ErrorClass::TargetBusy, ErrorClass::TargetFull] {
            let k = classify(&remote(c));
            assert!(k.recoverable, "{c:?}");
            assert!(k.advice.contains("retrying"));
        }
        let net = SendError::Connection {
            peer: "rx".into(),
            source: quinn::ConnectionError::TimedOut,
        };
        assert_eq!(
            classify(&net),
            Classified {
                class: "network",
                recoverable: true,
                advice: "the receiver is unreachable or the link failed; retrying"
            }
        );
        assert!(!classify(&SendError::Resolve("nowhere:1".into())).recoverable);
    }
}

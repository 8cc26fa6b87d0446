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

/// What an error means for the VM: built by the role from its error's
/// [`Classify`](crate::error::Classify) (`sender::SendError::verdict`), read by the retry loop
/// ([`Backoff::next_delay`]) and by health. This module knows no role, so it sits below them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Classified {
    /// Short class for logs, metrics and health (`network`, `unauthorized`, …).
    pub class: &'static str,
    /// Whether retrying can help: the error's [`Recovery`](crate::error::Recovery) is
    /// transient.
    pub recoverable: bool,
    /// What an operator should know or do.
    pub advice: &'static str,
}

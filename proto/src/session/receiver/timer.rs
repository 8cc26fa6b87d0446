//! The receiver's checkpoint timer, as session input (quinn-proto style): the session says
//! when it next needs the time ([`ReceiverSession::poll_timeout`]) and is told the time when
//! that moment comes ([`ReceiverSession::handle_timeout`]); it reads no clock and sleeps on
//! nothing, so a test drives hours of checkpoints with plain numbers.
//!
//! Time is a [`Duration`] since an origin the driver chooses once per session (the
//! connection's start), monotonic: the session compares values, never reads them.
//!
//! Every [`CHECKPOINT_INTERVAL`] the ranges written to each open disk are made durable and
//! recorded (resume granularity: a crash loses at most this much acknowledged-but-unsynced
//! progress, which is simply resent). The next round is due one interval after the driver
//! reports the last one done ([`ReceiverSession::checkpoints_done`]), never while one runs:
//! a slow store is not asked to checkpoint twice at once, and rounds do not pile up behind
//! it. Commits and the end of a connection checkpoint on their own (they are requests, not
//! time).

use std::time::Duration;

use super::ReceiverSession;

/// How often written ranges are made durable and recorded.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Where the checkpoint timer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckpointTimer {
    /// The next round is due at this time.
    Armed(Duration),
    /// A round was handed out and is not reported done yet.
    Running,
}

impl Default for CheckpointTimer {
    /// The first round is due one interval after the origin (the connection's start).
    fn default() -> Self {
        CheckpointTimer::Armed(CHECKPOINT_INTERVAL)
    }
}

/// A checkpoint round that is due: checkpoint each disk (those with nothing new written
/// have nothing to record), then report it done.
#[must_use = "a due checkpoint round must be run and reported done"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRound {
    /// The handles of every disk open on the connection, ascending (the order they opened).
    pub handles: Vec<u32>,
}

impl ReceiverSession {
    /// When the session next needs [`ReceiverSession::handle_timeout`]; `None` while a
    /// checkpoint round runs (the driver reports it done first).
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.timer {
            CheckpointTimer::Armed(at) => Some(at),
            CheckpointTimer::Running => None,
        }
    }

    /// Tells the session the time is `now`: a checkpoint round when one is due (then the
    /// timer waits for [`ReceiverSession::checkpoints_done`]), else nothing.
    #[must_use = "a due checkpoint round must be run and reported done"]
    pub fn handle_timeout(&mut self, now: Duration) -> Option<CheckpointRound> {
        match self.timer {
            CheckpointTimer::Armed(at) if now >= at => {
                self.timer = CheckpointTimer::Running;
                Some(CheckpointRound {
                    handles: self.disks.keys().copied().collect(),
                })
            }
            _ => None,
        }
    }

    /// The round handed out by [`ReceiverSession::handle_timeout`] finished at `now`: the
    /// next is due one [`CHECKPOINT_INTERVAL`] later.
    pub fn checkpoints_done(&mut self, now: Duration) {
        self.timer = CheckpointTimer::Armed(now.saturating_add(CHECKPOINT_INTERVAL));
    }
}

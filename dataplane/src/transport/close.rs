//! The QUIC application close codes a receiver ends a connection with. Both roles read
//! them here: the receiver closes with them, the sender classifies what it was told
//! (permanent refusal, busy, superseded) without reaching into the receiver.

/// The sender's certificate is missing or unusable: permanent until the operator fixes it.
pub const NO_CERTIFICATE: u32 = 1;
/// The sender's name is not in the receiver's `--allow`: permanent.
pub const UNKNOWN_SENDER: u32 = 2;
/// The same sender connected again; its older connection is closed so the newer one can
/// take its disks over.
pub const SUPERSEDED: u32 = 3;
/// The receiver serves as many connections as `--max-connections` allows: retried on the
/// sender's schedule, a Warning and not a fault (receivers scale out).
pub const BUSY: u32 = 4;

/// A frame body did not arrive at the least rate the receiver allows
/// (`receiver::limits::body_deadline`): a peer that announces large frames and then
/// trickles their bytes would hold the receiver's frame budget. Retried like any lost
/// connection: an honest sender on a slow link stays far above the rate.
pub const SLOW_FRAME: u32 = 5;

/// Whether a close code refuses the sender for good (a retry cannot help).
pub fn is_permanent_refusal(code: u64) -> bool {
    code == u64::from(NO_CERTIFICATE) || code == u64::from(UNKNOWN_SENDER)
}

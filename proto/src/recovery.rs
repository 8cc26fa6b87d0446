//! Whether a failure can heal by itself: the one distinction every error of vdrep makes.

/// What a failure needs in order to pass (DESIGN.md §1). It decides the retry schedule (only
/// transient failures are retried), the health state (a permanent failure makes the VM
/// Critical) and the exit code of the command line (75 for transient, 1 for permanent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// Time may heal it (network, busy or full target, transient OS conditions): retry on
    /// the schedule.
    Transient,
    /// It stays until an operator acts (credentials, authorisation, corrupt or unsupported
    /// data, invalid replica state, protocol mismatch).
    Permanent,
}

impl Recovery {
    /// True for [`Recovery::Transient`].
    pub fn is_transient(self) -> bool {
        self == Recovery::Transient
    }

    /// `Transient` when `transient` holds: for predicates over OS error kinds and codes.
    pub fn transient_if(transient: bool) -> Self {
        if transient {
            Recovery::Transient
        } else {
            Recovery::Permanent
        }
    }
}

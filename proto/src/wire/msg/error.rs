//! How both ends classify a failure, which decides retrying.

/// Why a request failed, as both ends classify it. The class decides whether the sender
/// retries (DESIGN.md §1): authorisation, missing disks and invalid state never heal by
/// themselves; a full or busy target and transient faults do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The sender is not allowed this VM or disk.
    Unauthorized,
    /// The disk or VM does not exist where it must.
    NotFound,
    /// The replica's state does not allow the request (e.g. a different source disk).
    InvalidState,
    /// The peer broke the protocol.
    Protocol,
    /// No common protocol version.
    VersionMismatch,
    /// The disk's virtual size changed (resizing is not supported).
    SizeChanged,
    /// The target has no space left.
    TargetFull,
    /// The target is busy or throttling.
    TargetBusy,
    /// An unexpected receiver-side failure that may pass.
    Internal,
    /// The store holds disks of the VM that the sender's disk set (`OpenDisk.vm_disks`)
    /// does not name: an operator unprotects them or names them again.
    DiskSetChanged,
}

impl ErrorClass {
    pub(super) fn code(self) -> u16 {
        match self {
            ErrorClass::Unauthorized => 1,
            ErrorClass::NotFound => 2,
            ErrorClass::InvalidState => 3,
            ErrorClass::Protocol => 4,
            ErrorClass::VersionMismatch => 5,
            ErrorClass::SizeChanged => 6,
            ErrorClass::TargetFull => 7,
            ErrorClass::TargetBusy => 8,
            ErrorClass::Internal => 9,
            ErrorClass::DiskSetChanged => 10,
        }
    }
    pub(super) fn from_code(c: u16) -> Option<Self> {
        Some(match c {
            1 => ErrorClass::Unauthorized,
            2 => ErrorClass::NotFound,
            3 => ErrorClass::InvalidState,
            4 => ErrorClass::Protocol,
            5 => ErrorClass::VersionMismatch,
            6 => ErrorClass::SizeChanged,
            7 => ErrorClass::TargetFull,
            8 => ErrorClass::TargetBusy,
            9 => ErrorClass::Internal,
            10 => ErrorClass::DiskSetChanged,
            _ => return None,
        })
    }
    /// Whether the sender should retry later: a full or busy target and receiver-side
    /// failures may pass; the other classes need an operator.
    pub fn recovery(self) -> crate::Recovery {
        crate::Recovery::transient_if(matches!(
            self,
            ErrorClass::TargetFull | ErrorClass::TargetBusy | ErrorClass::Internal
        ))
    }
    /// Lower-case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::NotFound => "not_found",
            ErrorClass::InvalidState => "invalid_state",
            ErrorClass::Protocol => "protocol",
            ErrorClass::VersionMismatch => "version_mismatch",
            ErrorClass::SizeChanged => "size_changed",
            ErrorClass::TargetFull => "target_full",
            ErrorClass::TargetBusy => "target_busy",
            ErrorClass::Internal => "internal",
            ErrorClass::DiskSetChanged => "disk_set_changed",
        }
    }
}

//! The lifecycle of a replica, written once for every sink: which call is allowed in which
//! state, which state it leads to, and the error (one check, one message) when it is not
//! allowed. Pure: no IO, no clock, no randomness (new ids come in as values). The sinks
//! ([`super::local`], [`super::azure`]) keep only storage: how bytes, state records and
//! recovery points are stored, in which crash-safe order; they ask this module what the
//! next [`DiskState`] is and persist it.
//!
//! ## Invariants (enforced here; [`check_record`] re-checks them on every decoded state)
//! 1. A state describes a replica: a committed one (`initial_committed`), a copy in
//!    progress (`initial_in_progress`), or both (a new full copy beside the committed one).
//!    `generation` starts at 1 and grows by one per full copy; `virtual_size` > 0.
//! 2. A delta cycle is open only on a committed replica with no copy in progress, and it is
//!    always `committed_cycle + 1`.
//! 3. `progress` is empty unless a copy or a cycle is in progress, and lies inside the
//!    disk: it claims ranges of *that* copy or cycle only (a new copy or cycle starts with
//!    none).
//! 4. Writes and clears are sector aligned and inside the disk; they go to the copy in
//!    progress, else to the open cycle, and are refused on a committed replica with no
//!    cycle open (they would change a recovery point).
//! 5. An initial copy commits (as point 0, the only point of its generation) only once its
//!    progress covers the whole disk.
//! 6. `begin_cycle(n)` opens `n = committed + 1`, or resumes `n` if it is the open cycle
//!    (returning its durable progress); anything else is refused.
//! 7. `commit_cycle(n)` commits the open cycle `n`; a resent commit of a cycle already
//!    committed (`0 < n <= committed`) is a no-op; anything else is refused.
//! 8. Pruning drops a prefix of the points older than a cutoff, never the newest.
//! 9. Takeover (a reopen after a crash or by another receiver): a copy or cycle whose
//!    commit the storage shows as published (footer or snapshot) but whose state was not
//!    recorded is rolled forward to the committed state, exactly as if the commit had
//!    finished ([`committed_after_initial`], [`committed_cycle`]).

use std::path::{Path, PathBuf};

use vdrep_proto::{Guid, RangeSet};

use super::{DiskState, RecoveryPoint, SinkError, SECTOR};

/// The state of a replica created by its first open: an initial copy of generation 1 with
/// nothing done; its footer will carry `copy_id`. `format_version` is the storage's.
pub fn new_replica(
    format_version: u32,
    virtual_size: u64,
    source_id: Guid,
    copy_id: Guid,
) -> DiskState {
    DiskState {
        format_version,
        virtual_size,
        source_id,
        initial_committed: false,
        committed_cycle: 0,
        progress: RangeSet::new(),
        generation: 1,
        initial_in_progress: true,
        replica_id: Guid::NIL,
        copy_id,
        open_cycle: None,
    }
}

/// Refuses a disk size a replica cannot hold (zero, or beyond the 8 TiB page-blob limit
/// once the footer is added): every sink has the limit of the Azure page blob it mirrors.
pub fn check_size(path: &Path, virtual_size: u64) -> Result<(), SinkError> {
    crate::layout::check_disk_size(virtual_size).map_err(|problem| SinkError::Unsupported {
        path: path.to_path_buf(),
        offset: virtual_size,
        problem,
    })
}

/// Refuses to reopen a replica for a disk of another size (resize is unsupported) or
/// another source identity (`path`: the state record).
pub fn check_reopen(
    path: &Path,
    recorded: &DiskState,
    virtual_size: u64,
    source_id: Guid,
) -> Result<(), SinkError> {
    if recorded.virtual_size != virtual_size {
        return Err(SinkError::SizeMismatch {
            path: path.to_path_buf(),
            recorded: recorded.virtual_size,
            requested: virtual_size,
        });
    }
    if recorded.source_id != source_id {
        return Err(SinkError::IdentityMismatch {
            path: path.to_path_buf(),
            recorded: recorded.source_id,
            requested: source_id,
        });
    }
    Ok(())
}

/// Refuses a range that is unaligned (when `aligned`: writes, clears) or outside
/// `[0, writable_end)`.
pub fn check_range(
    path: &Path,
    op: &'static str,
    offset: u64,
    len: u64,
    st: &DiskState,
    aligned: bool,
) -> Result<(), SinkError> {
    check_range_of(path, op, offset, len, st.virtual_size, aligned)
}

/// [`check_range`] for a disk of `virtual_size` bytes, where only the size is at hand (a
/// read-only point reader).
pub fn check_range_of(
    path: &Path,
    op: &'static str,
    offset: u64,
    len: u64,
    virtual_size: u64,
    aligned: bool,
) -> Result<(), SinkError> {
    let end = virtual_size.div_ceil(SECTOR) * SECTOR;
    let problem = if aligned && ((offset | len) & (SECTOR - 1) != 0) {
        Some("offset and length must be multiples of 512 bytes")
    } else if offset.checked_add(len).is_none_or(|e| e > end) {
        Some("the range ends beyond the disk")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(SinkError::OutOfRange {
            path: path.to_path_buf(),
            op,
            offset,
            len,
            size: virtual_size,
            problem,
        }),
        None => Ok(()),
    }
}

/// Where a write or clear goes (invariant 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The initial copy in progress (the working image beside any committed replica).
    Copy,
    /// The open delta cycle (held apart from the newest point until it commits).
    Cycle(u64),
}

/// Checks a write or clear of `[offset, offset + len)` and says where it goes.
pub fn write_target(
    path: &Path,
    op: &'static str,
    st: &DiskState,
    offset: u64,
    len: u64,
) -> Result<Target, SinkError> {
    let target = if st.initial_in_progress {
        Target::Copy
    } else if let Some(open) = st.open_cycle {
        Target::Cycle(open)
    } else {
        return Err(invalid(
            path,
            offset,
            format!(
                "{op} with no delta cycle open: the replica is recovery point {}; call \
                 begin_cycle({}) first",
                st.committed_cycle,
                st.committed_cycle.saturating_add(1)
            ),
        ));
    };
    check_range(path, op, offset, len, st, true)?;
    Ok(target)
}

/// A checkpoint recording `durable` as the progress of the copy or cycle in progress: the
/// next state, or `None` when nothing changes (no record to write). Without a copy or cycle
/// in progress only an empty `durable` is accepted (the sink then only syncs data).
pub fn checkpoint(
    path: &Path,
    st: &DiskState,
    durable: &RangeSet,
) -> Result<Option<DiskState>, SinkError> {
    if let Some(b) = durable.bounds() {
        check_range(path, "checkpoint", b.start, b.end - b.start, st, false)?;
    }
    if !st.initial_in_progress && st.open_cycle.is_none() {
        if let Some(b) = durable.bounds() {
            return Err(invalid(
                path,
                b.start,
                "checkpoint with progress, but no initial copy or delta cycle is in progress",
            ));
        }
        return Ok(None);
    }
    if st.progress == *durable {
        return Ok(None);
    }
    Ok(Some(DiskState {
        progress: durable.clone(),
        ..st.clone()
    }))
}

/// Checks that the copy in progress may commit as recovery point `point` (invariant 5) and
/// returns the committed state.
pub fn commit_initial(
    path: &Path,
    st: &DiskState,
    point: &RecoveryPoint,
) -> Result<DiskState, SinkError> {
    if !st.initial_in_progress {
        return Err(invalid(
            path,
            0,
            "commit_initial without an initial copy in progress",
        ));
    }
    if point.cycle != 0 {
        return Err(invalid(
            path,
            0,
            format!("the initial copy is recovery point 0, not {}", point.cycle),
        ));
    }
    if let Some(gap) = st.progress.gaps_in(0, st.writable_end()).first() {
        return Err(invalid(
            path,
            gap.start,
            format!(
                "the initial copy is incomplete: {} bytes not checkpointed, first gap [{}, {})",
                st.remaining(),
                gap.start,
                gap.end
            ),
        ));
    }
    Ok(committed_after_initial(st))
}

/// The state once the copy in progress is the committed replica: cycle 0 of the
/// generation, the copy's footer id as the replica's, nothing in progress. Also the
/// roll-forward of a takeover that finds the copy published (invariant 9).
pub fn committed_after_initial(st: &DiskState) -> DiskState {
    DiskState {
        initial_committed: true,
        committed_cycle: 0,
        progress: RangeSet::new(),
        initial_in_progress: false,
        replica_id: st.copy_id,
        copy_id: Guid::NIL,
        open_cycle: None,
        ..st.clone()
    }
}

/// The state of a new full copy (generation + 1, footer id `copy_id`, nothing claimed),
/// beside the committed replica, which stays as it is. An open cycle or an uncommitted copy
/// is dropped: the new copy supersedes both.
pub fn begin_initial(st: &DiskState, copy_id: Guid) -> DiskState {
    DiskState {
        progress: RangeSet::new(),
        generation: st.generation.saturating_add(1),
        initial_in_progress: true,
        copy_id,
        open_cycle: None,
        ..st.clone()
    }
}

/// What [`begin_cycle`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleStart {
    /// The cycle is open already (a resent begin, a restart): its durable progress.
    Resume(RangeSet),
    /// The state with the cycle open and nothing done, to persist.
    Open(DiskState),
}

/// Opens cycle `cycle` (invariant 6).
pub fn begin_cycle(path: &Path, st: &DiskState, cycle: u64) -> Result<CycleStart, SinkError> {
    require_replica(path, st, "begin_cycle")?;
    let next_cycle = st.committed_cycle.saturating_add(1);
    let problem = match st.open_cycle {
        Some(open) if open == cycle => return Ok(CycleStart::Resume(st.progress.clone())),
        Some(open) => format!("cycle {open} is open; cycle {cycle} cannot begin"),
        None if cycle == next_cycle => {
            return Ok(CycleStart::Open(DiskState {
                open_cycle: Some(cycle),
                progress: RangeSet::new(),
                ..st.clone()
            }))
        }
        None if cycle <= st.committed_cycle => format!(
            "cycle {cycle} is already committed (newest point {})",
            st.committed_cycle
        ),
        None => format!("cycle {cycle} cannot begin: the next cycle is {next_cycle}"),
    };
    Err(invalid(path, 0, problem))
}

/// What [`commit_cycle`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleCommit {
    /// The cycle is committed already (a resent commit): nothing to do.
    Resent,
    /// The state after the commit, to persist once the point is durable.
    Commit(DiskState),
}

/// Commits the open cycle as recovery point `point` (invariant 7).
pub fn commit_cycle(
    path: &Path,
    st: &DiskState,
    point: &RecoveryPoint,
) -> Result<CycleCommit, SinkError> {
    require_replica(path, st, "commit_cycle")?;
    if point.cycle <= st.committed_cycle && point.cycle > 0 {
        return Ok(CycleCommit::Resent);
    }
    match st.open_cycle {
        Some(open) if open == point.cycle => Ok(CycleCommit::Commit(committed_cycle(st, open))),
        Some(open) => Err(invalid(
            path,
            0,
            format!("commit of cycle {} while cycle {open} is open", point.cycle),
        )),
        None => Err(invalid(
            path,
            0,
            format!(
                "commit of cycle {} but no cycle is open (begin_cycle first)",
                point.cycle
            ),
        )),
    }
}

/// The state once cycle `cycle` is committed: the newest point, nothing in progress. Also
/// the roll-forward of a takeover that finds the cycle's point published (invariant 9).
pub fn committed_cycle(st: &DiskState, cycle: u64) -> DiskState {
    DiskState {
        committed_cycle: cycle,
        open_cycle: None,
        progress: RangeSet::new(),
        ..st.clone()
    }
}

/// How many of `points` (oldest first) a prune with cutoff `older_than_unix` drops: the
/// longest prefix created before the cutoff, never the newest (invariant 8; a prefix,
/// because the local store reads a point through the undo logs of every later one).
pub fn prune(points: &[RecoveryPoint], older_than_unix: u64) -> usize {
    points
        .iter()
        .take(points.len().saturating_sub(1))
        .take_while(|p| p.created_unix < older_than_unix)
        .count()
}

/// Refuses reading the committed replica when none is committed yet.
pub fn check_committed(path: &Path, st: &DiskState, offset: u64) -> Result<(), SinkError> {
    if !st.initial_committed {
        return Err(invalid(
            path,
            offset,
            "no initial copy has been committed yet",
        ));
    }
    Ok(())
}

/// The error for a recovery point that is not (or no longer) kept; `kept` are the cycles
/// of the first and last points kept, if any.
pub fn no_point(path: &Path, kept: Option<(u64, u64)>, cycle: u64) -> SinkError {
    SinkError::NotFound {
        path: path.to_path_buf(),
        problem: match kept {
            Some((first, last)) => {
                format!("recovery point {cycle} does not exist (points {first}..={last} are kept)")
            }
            None => format!("recovery point {cycle} does not exist: nothing is committed"),
        },
    }
}

/// The invariants between the fields of a decoded state (1, 2, 3), for the storage
/// decoders: a record that breaks one is corrupt, never trusted.
pub fn check_record(st: &DiskState) -> Result<(), String> {
    crate::layout::check_disk_size(st.virtual_size)?;
    if st.generation == 0 {
        return Err("generation 0 (generations start at 1)".into());
    }
    if !st.initial_committed && !st.initial_in_progress {
        return Err("neither committed nor copying: no replica is described".into());
    }
    if let Some(open) = st.open_cycle {
        if st.initial_in_progress || !st.initial_committed {
            return Err("a cycle is open without a committed replica or during a full copy".into());
        }
        if Some(open) != st.committed_cycle.checked_add(1) {
            return Err(format!(
                "open cycle {open} does not follow the committed cycle {}",
                st.committed_cycle
            ));
        }
    }
    if !st.initial_in_progress && st.open_cycle.is_none() && !st.progress.is_empty() {
        return Err("progress recorded without a copy or cycle in progress".into());
    }
    if let Some(b) = st.progress.bounds() {
        if b.end > st.writable_end() {
            return Err(format!(
                "progress reaches {} beyond the disk end {}",
                b.end,
                st.writable_end()
            ));
        }
    }
    Ok(())
}

/// Cycles need a committed replica with no full copy in progress (invariant 2).
fn require_replica(path: &Path, st: &DiskState, what: &str) -> Result<(), SinkError> {
    if st.initial_committed && !st.initial_in_progress {
        return Ok(());
    }
    Err(invalid(
        path,
        0,
        format!("{what}: delta cycles apply to a committed replica with no full copy in progress"),
    ))
}

fn invalid(path: &Path, offset: u64, problem: impl Into<String>) -> SinkError {
    SinkError::InvalidState {
        path: PathBuf::from(path),
        offset,
        problem: problem.into(),
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;

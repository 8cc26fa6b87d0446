//! Finding and checking the parent of a differencing VHDX.
//!
//! The parent locator names the parent by paths (`relative_path`, `absolute_win32_path`,
//! `volume_path`, tried in that order) and by identity: `parent_linkage` is the parent's
//! DataWriteGuid, which changes whenever the parent's data changes, so a parent that was
//! modified after the child was made is refused rather than read as a silently wrong disk.
//! `parent_linkage2` is an alternative identity the spec allows. Both are braced GUID text
//! whose letter case differs between writers: compared as GUIDs, never as strings.

use std::path::Path;

use vdrep_proto::formats::vhdx::metadata::ParentLocator;

use crate::disk::{open_with, resolve_parent_path, DiskError, OpenContext, VirtualDisk};

/// Opens the parent named by `loc` and checks its identity.
pub(super) fn open_parent(
    child: &Path,
    loc: &ParentLocator,
    ctx: &mut OpenContext,
) -> Result<Box<dyn VirtualDisk>, DiskError> {
    let linkage = loc.parent_linkage().ok_or_else(|| DiskError::BrokenChain {
        path: child.to_path_buf(),
        problem: match loc.get("parent_linkage") {
            Some(s) => format!("parent_linkage {s:?} in the parent locator is not a GUID"),
            None => "the parent locator has no parent_linkage".to_string(),
        },
    })?;
    let candidates = loc.path_candidates();
    let path = resolve_parent_path(child, &candidates)?;
    let parent = open_with(&path, ctx)?;
    let id = parent.info().identity;
    let ok = id.is_some_and(|g| g == linkage || Some(g) == loc.parent_linkage2());
    if !ok {
        return Err(DiskError::BrokenChain {
            path: child.to_path_buf(),
            problem: format!(
                "parent {} has identity (DataWriteGuid) {}, but the child links to {{{linkage}}}{}: \
                 the parent changed after the child was made (or is the wrong file)",
                path.display(),
                id.map(|g| format!("{{{g}}}")).unwrap_or_else(|| "none".into()),
                loc.parent_linkage2()
                    .map(|g| format!(" (or {{{g}}})"))
                    .unwrap_or_default()
            ),
        });
    }
    Ok(parent)
}

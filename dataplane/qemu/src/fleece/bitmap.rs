//! Dirty bitmaps: their state, loss detection, and removal.
//!
//! A bitmap is **lost** when it is missing (qemu restarted and the bitmap lived in memory,
//! or someone removed it) or **inconsistent** (a persistent bitmap qemu did not save
//! cleanly, e.g. after a crash). Either way the writes it should have tracked are unknown,
//! and the disk needs a resync: a bitmap never under-approximates as long as it exists and
//! is consistent, and nothing else can tell which blocks changed.

use std::fmt;

use serde_json::json;

use crate::qmp::{DirtyBitmap, Qmp, QmpError};

use super::error::FleeceError;

/// Why a bitmap cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// The node has no bitmap of that name.
    Missing,
    /// qemu marks the bitmap inconsistent.
    Inconsistent,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossReason::Missing => "is missing (qemu restarted, or the bitmap was removed)",
            LossReason::Inconsistent => "is marked inconsistent by qemu (not saved cleanly)",
        })
    }
}

/// The state of one bitmap on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapState {
    /// Present and usable.
    Present(DirtyBitmap),
    /// Present but inconsistent.
    Inconsistent(DirtyBitmap),
    /// Not there.
    Missing,
}

impl BitmapState {
    /// Why the bitmap cannot be used, or `None` when it can.
    pub fn loss(&self) -> Option<LossReason> {
        match self {
            BitmapState::Present(_) => None,
            BitmapState::Inconsistent(_) => Some(LossReason::Inconsistent),
            BitmapState::Missing => Some(LossReason::Missing),
        }
    }
}

/// The state of bitmap `name` on node `node`; a missing node is an error (the disk itself
/// is gone, which is not the same as a lost bitmap).
pub fn bitmap_state(qmp: &mut Qmp, node: &str, name: &str) -> Result<BitmapState, FleeceError> {
    let n = qmp.node(node)?.ok_or_else(|| FleeceError::NodeNotFound {
        node: node.to_string(),
    })?;
    Ok(state_in(&n.dirty_bitmaps, name))
}

/// The state of bitmap `name` among a node's bitmaps.
pub(crate) fn state_in(bitmaps: &[DirtyBitmap], name: &str) -> BitmapState {
    match bitmaps.iter().find(|b| b.name.as_deref() == Some(name)) {
        None => BitmapState::Missing,
        Some(b) if b.inconsistent => BitmapState::Inconsistent(b.clone()),
        Some(b) => BitmapState::Present(b.clone()),
    }
}

/// Checks every `(node, bitmap)` pair; returns the lost ones with their reason.
pub fn lost_bitmaps(
    qmp: &mut Qmp,
    pairs: &[(String, String)],
) -> Result<Vec<(String, String, LossReason)>, FleeceError> {
    let nodes = qmp.named_block_nodes()?;
    let mut lost = Vec::new();
    for (node, bitmap) in pairs {
        let n = nodes
            .iter()
            .find(|n| n.node_name.as_deref() == Some(node))
            .ok_or_else(|| FleeceError::NodeNotFound { node: node.clone() })?;
        if let Some(r) = state_in(&n.dirty_bitmaps, bitmap).loss() {
            lost.push((node.clone(), bitmap.clone(), r));
        }
    }
    Ok(lost)
}

/// Removes bitmap `name` from `node` (`block-dirty-bitmap-remove`; a persistent bitmap is
/// removed from the image too). Removing a bitmap that is not there succeeds.
pub fn remove_bitmap(qmp: &mut Qmp, node: &str, name: &str) -> Result<(), FleeceError> {
    if bitmap_state(qmp, node, name)? == BitmapState::Missing {
        return Ok(());
    }
    qmp.execute(
        "block-dirty-bitmap-remove",
        Some(json!({"node": node, "name": name})),
    )?;
    Ok(())
}

/// Makes `keep` the disk's only vdrep bitmap again, recording, holding every write any of
/// the disk's `vdrep-` bitmaps tracked: the others are merged into it and removed, in one
/// transaction. This is how a restarted sender resumes after a switch whose outcome it did
/// not record (the transaction may have started a newer bitmap and stopped `keep`): the
/// result over-approximates (a cycle may re-ship blocks) and never loses a write. Call
/// [`super::cleanup_leftovers`] first: an exported bitmap is busy and cannot be removed.
/// Returns the bitmaps merged into `keep`.
pub fn reconcile_bitmaps(
    qmp: &mut Qmp,
    node: &str,
    keep: &str,
) -> Result<Vec<String>, FleeceError> {
    let n = qmp.node(node)?.ok_or_else(|| FleeceError::NodeNotFound {
        node: node.to_string(),
    })?;
    let lost = |bitmap: &str, reason| FleeceError::BitmapLost {
        node: node.to_string(),
        bitmap: bitmap.to_string(),
        reason,
    };
    let kept = match state_in(&n.dirty_bitmaps, keep) {
        BitmapState::Present(b) => b,
        other => return Err(lost(keep, other.loss().unwrap_or(LossReason::Missing))),
    };
    let mut others = Vec::new();
    for b in &n.dirty_bitmaps {
        let Some(name) = b
            .name
            .as_deref()
            .filter(|x| super::names::is_ours(x) && *x != keep)
        else {
            continue;
        };
        if b.inconsistent {
            return Err(lost(name, LossReason::Inconsistent));
        }
        others.push(name.to_string());
    }
    let mut actions = Vec::new();
    if !kept.recording {
        actions.push(
            json!({"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": keep}}),
        );
    }
    if !others.is_empty() {
        actions.push(json!({"type": "block-dirty-bitmap-merge",
                            "data": {"node": node, "target": keep, "bitmaps": others}}));
    }
    for o in &others {
        actions
            .push(json!({"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": o}}));
    }
    if !actions.is_empty() {
        qmp.execute("transaction", Some(json!({ "actions": actions })))?;
    }
    Ok(others)
}

/// The name of the bitmap [`probe_bitmap`] adds and removes at once: a `vdrep-` name, so
/// one a crash left behind is merged into the disk's own bitmap or removed like any other
/// leftover `vdrep-` bitmap (an over-approximation, never a lost write).
pub const PROBE_BITMAP: &str = "vdrep-probe";

/// Checks that `node` takes the dirty bitmap protection would add (persistent on qcow2,
/// in memory otherwise) by adding one and removing it again. Enable protection runs it so
/// that a node that refuses bitmaps (a qcow2 v2 image cannot store persistent ones) fails
/// the prerequisite check with qemu's reason instead of the first switch.
pub fn probe_bitmap(qmp: &mut Qmp, node: &str, persistent: bool) -> Result<(), FleeceError> {
    if qmp.node(node)?.is_none() {
        return Err(FleeceError::NodeNotFound {
            node: node.to_string(),
        });
    }
    // A probe a crashed run left behind goes first.
    remove_bitmap(qmp, node, PROBE_BITMAP)?;
    qmp.execute(
        "block-dirty-bitmap-add",
        Some(json!({"node": node, "name": PROBE_BITMAP, "persistent": persistent})),
    )?;
    qmp.execute(
        "block-dirty-bitmap-remove",
        Some(json!({"node": node, "name": PROBE_BITMAP})),
    )?;
    Ok(())
}

/// Undoes a switch's bitmap part on one disk when its views could not be completed: the
/// previous bitmap records again and takes over what the new one saw, and the new one goes,
/// in one transaction, so no write is ever tracked by neither.
pub(crate) fn rollback(
    qmp: &mut Qmp,
    node: &str,
    new: &str,
    previous: Option<&str>,
) -> Result<(), QmpError> {
    let remove = json!({"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": new}});
    let actions = match previous {
        Some(old) => json!([
            {"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": old}},
            {"type": "block-dirty-bitmap-merge",
             "data": {"node": node, "target": old, "bitmaps": [new]}},
            remove,
        ]),
        None => json!([remove]),
    };
    qmp.execute("transaction", Some(json!({ "actions": actions })))?;
    Ok(())
}

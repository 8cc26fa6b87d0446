//! Removing what a crashed (or killed) vdrep left in qemu: exports, snapshot nodes, backup
//! jobs with their filters, scratch images — everything named with the `vdrep-` prefix —
//! but never bitmaps: they hold the writes not yet shipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::qmp::Qmp;

use super::bitmap::remove_bitmap;
use super::error::FleeceError;
use super::names::{is_ours, SCRATCH_FILE_PREFIX};
use super::target::remove_file;
use super::view::{cancel_job, remove_export};

/// What [`cleanup_leftovers`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// NBD exports.
    pub exports: Vec<String>,
    /// Jobs (backup jobs and scratch-image creations).
    pub jobs: Vec<String>,
    /// Block nodes (snapshot-access, scratch images).
    pub nodes: Vec<String>,
    /// Scratch files deleted.
    pub files: Vec<PathBuf>,
}

impl Leftovers {
    /// True when nothing was left.
    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
            && self.jobs.is_empty()
            && self.nodes.is_empty()
            && self.files.is_empty()
    }
}

/// Removes every export, job and node whose name starts with `vdrep-`, and the scratch files
/// of the removed scratch images. Bitmaps stay. Safe to call when nothing is left.
pub fn cleanup_leftovers(qmp: &mut Qmp, wait_limit: Duration) -> Result<Leftovers, FleeceError> {
    let mut out = Leftovers::default();
    for e in qmp.block_exports()? {
        if is_ours(&e.id) {
            remove_export(qmp, &e.id, wait_limit)?;
            out.exports.push(e.id);
        }
    }
    for n in qmp.named_block_nodes()? {
        if let Some(name) = n.node_name.filter(|x| is_ours(x)) {
            if n.drv == "snapshot-access" {
                super::view::del_node(qmp, &name)?;
                out.nodes.push(name);
            }
        }
    }
    for j in qmp.jobs()? {
        if is_ours(&j.id) {
            cancel_job(qmp, &j.id, wait_limit)?;
            out.jobs.push(j.id);
        }
    }
    // Scratch images: format nodes before the file nodes under them; a node still in use
    // is retried in the next round.
    for _ in 0..4 {
        let mut progress = false;
        for n in qmp.named_block_nodes()? {
            let Some(name) = n.node_name.filter(|x| is_ours(x)) else {
                continue;
            };
            if n.drv == "copy-before-write" {
                continue; // Leaves with its job.
            }
            if qmp
                .execute("blockdev-del", Some(json!({"node-name": name})))
                .is_ok()
            {
                progress = true;
                if n.drv == "file" && is_scratch_file(Path::new(&n.file)) {
                    remove_file(Path::new(&n.file))?;
                    out.files.push(PathBuf::from(&n.file));
                }
                out.nodes.push(name);
            }
        }
        if !progress {
            break;
        }
    }
    Ok(out)
}

/// Removes every `vdrep-` bitmap of `nodes`: protection ends (`vdrep unprotect`), so
/// nothing needs the writes they tracked.
pub fn remove_all_bitmaps(
    qmp: &mut Qmp,
    nodes: &[String],
) -> Result<Vec<(String, String)>, FleeceError> {
    let mut removed = Vec::new();
    for n in qmp.named_block_nodes()? {
        let Some(name) = n.node_name.as_ref().filter(|x| nodes.contains(x)) else {
            continue;
        };
        for b in &n.dirty_bitmaps {
            if let Some(bn) = b.name.as_ref().filter(|x| is_ours(x)) {
                remove_bitmap(qmp, name, bn)?;
                removed.push((name.clone(), bn.clone()));
            }
        }
    }
    Ok(removed)
}

fn is_scratch_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with(SCRATCH_FILE_PREFIX))
}

//! Switches: for all of a VM's disks at one instant, start new dirty bitmaps, stop the old
//! ones and take point-in-time views, then export the views over NBD.
//!
//! The recipe (qemu 10.0, where `blockdev-reopen` is no transaction action and there is no
//! `blockdev-replace`), per disk:
//! 1. a scratch qcow2 of the disk's size is created and opened (`blockdev-create`,
//!    `blockdev-add`) after checking its filesystem has room for the disk's full size and
//!    the image's metadata ([`super::target::scratch_need`]);
//! 2. **one `transaction`** for all disks: `block-dirty-bitmap-add` (the new bitmap,
//!    persistent on qcow2, in memory otherwise), `block-dirty-bitmap-disable` (the previous
//!    bitmap), `blockdev-backup sync=none` into the scratch image with a `vdrep-`
//!    `filter-node-name`: the job inserts a copy-before-write filter above the disk, so from
//!    this instant on the old contents of every block the guest overwrites are kept;
//! 3. `blockdev-add` of a `snapshot-access` node over the filter: the disk as it was at the
//!    transaction's instant, opened with `discard: unmap`;
//! 4. `block-export-add` of that node over NBD, with the previous bitmap
//!    (`bitmaps: [{"node", "name"}]`), so the reader asks block status of
//!    `qemu:dirty-bitmap:NAME` and reads only the dirty extents. The export is writable
//!    only so that the reader can trim (`NBD_CMD_TRIM`) what it no longer needs: a trimmed
//!    range ends its copy-before-write, so the guest's next write there does not wait for
//!    the old block's copy (`crate::nbd`'s `trim`). `snapshot-access` refuses writes, so
//!    the view's bytes stay the disk at the instant; a trimmed range can no longer be read,
//!    nor its block status asked, of any context (qemu answers every negotiated context,
//!    `base:allocation` included): list the dirty extents before trimming.
//!
//! A cycle's disk may instead take qemu's copy of its previous bitmap's blocks
//! ([`SwitchDisk::copy`], `copy.rs`): in step 2 the backup is `sync=bitmap` into a raw
//! file, step 3 is skipped, and step 4 waits for the copy (holding the caller's lock on the
//! VM: about a second per GiB) and exports the file read-only with the bitmap.
//!
//! Invariant (never under-approximate): because one transaction starts the new bitmap,
//! stops the old one and inserts the filter, every guest write lands either before the
//! instant (in the old bitmap and in the view) or after it (in the new bitmap, not in the
//! view); none is in neither.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::nbd::{wire, NbdClient, NbdError};
use crate::qmp::{Qmp, QmpError};

use super::bitmap::{rollback, state_in, BitmapState};
use super::copy::{copy_action, copy_need, create_copy_target, export_copy, wait_copied};
use super::error::FleeceError;
use super::names::{bitmap_name, ViewNames, MAX_DISKS};
use super::target::{check_room, create_target, remove_target, scratch_need};
use super::wait::poll_until;

/// One disk of a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchDisk {
    /// The disk's node-name (the format node the guest writes through).
    pub node: String,
    /// The bitmap started by the previous switch, `None` when protection starts.
    pub previous_bitmap: Option<String>,
    /// Take qemu's copy of the previous bitmap's dirty blocks instead of a fleecing view
    /// (`super::copy`): the guest waits only while qemu copies. Only for a disk whose next
    /// read is its cycle (the copy holds nothing else); ignored without a previous bitmap.
    pub copy: bool,
}

/// A disk's point-in-time view, exported over NBD, and the bitmaps of its switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The disk's node-name.
    pub node: String,
    /// The switch's generation.
    pub generation: u32,
    /// The disk's size in bytes.
    pub size: u64,
    /// The disk's format (the node's driver).
    pub format: String,
    /// The bitmap started at the view's instant (tracks the writes after it).
    pub bitmap: String,
    /// True when [`View::bitmap`] is stored in the image (qcow2).
    pub persistent: bool,
    /// The bitmap stopped at the view's instant: the writes between the previous view and
    /// this one. Exported with the view.
    pub previous_bitmap: Option<String>,
    /// The names of everything the view added to qemu.
    pub names: ViewNames,
    /// True when the view is qemu's copy of the previous bitmap's dirty blocks
    /// (`super::copy`): it holds those blocks only, and zeros elsewhere.
    pub copied: bool,
    /// The scratch image (the copy's raw file when [`View::copied`]).
    pub scratch_path: PathBuf,
    /// The NBD server's socket the view is exported on.
    pub nbd_socket: PathBuf,
}

impl View {
    /// The NBD export's name.
    pub fn export(&self) -> &str {
        &self.names.export
    }

    /// The NBD metadata context of the previous bitmap, when there is one.
    pub fn dirty_context(&self) -> Option<String> {
        self.previous_bitmap
            .as_ref()
            .map(|b| format!("{}{b}", wire::DIRTY_BITMAP_PREFIX))
    }

    /// Opens the view over NBD, with `base:allocation` and the previous bitmap's context.
    pub fn connect(&self, timeout: Duration) -> Result<NbdClient<UnixStream>, NbdError> {
        let dirty = self.dirty_context();
        let mut contexts = vec![wire::BASE_ALLOCATION];
        if let Some(d) = dirty.as_deref() {
            contexts.push(d);
        }
        NbdClient::connect_unix(&self.nbd_socket, self.export(), &contexts, timeout)
    }
}

/// Takes and removes views in one scratch directory, exporting them on one NBD server (the
/// recipe and its invariant are at the top of `fleece/view.rs`).
#[derive(Debug, Clone)]
pub struct Fleecer {
    /// Where scratch images are created (absolute: qemu resolves paths from its own
    /// working directory).
    pub scratch_dir: PathBuf,
    /// The NBD server's unix socket (one vdrep started, or the VM's own).
    pub nbd_socket: PathBuf,
    /// How long to wait for qemu's asynchronous steps (job start and end, export removal).
    pub wait_limit: Duration,
    /// The bitmaps' granularity in bytes, `None` for qemu's default (the qcow2 cluster size,
    /// 64 KiB for raw).
    pub granularity: Option<u64>,
}

impl Fleecer {
    /// A fleecer with scratch images in `scratch_dir` and exports on `nbd_socket`.
    pub fn new(scratch_dir: &Path, nbd_socket: &Path) -> Result<Fleecer, FleeceError> {
        let scratch_dir = scratch_dir
            .canonicalize()
            .map_err(|source| FleeceError::Scratch {
                path: scratch_dir.to_path_buf(),
                source,
            })?;
        Ok(Fleecer {
            scratch_dir,
            nbd_socket: nbd_socket.to_path_buf(),
            wait_limit: Duration::from_secs(30),
            granularity: None,
        })
    }

    /// Switches all `disks` at one instant (one QMP transaction) to generation `generation`
    /// and exports a view of each. On error nothing of the switch is left in qemu: the
    /// bitmaps are as before (a failure after the transaction merges the new bitmap back
    /// into the previous one). When the connection breaks during the transaction its
    /// outcome is unknown: reconnect, [`super::cleanup_leftovers`], then
    /// [`super::reconcile_bitmaps`] onto the previous bitmap, and switch again.
    ///
    /// The three steps are also [`Fleecer::prepare`], [`Fleecer::cut`] and
    /// [`Fleecer::export`], for a caller that must run the transaction alone at a moment
    /// of its choosing (vdrep cuts a qemu VM of a consistency group while the other
    /// members' writes are held).
    pub fn switch(
        &self,
        qmp: &mut Qmp,
        generation: u32,
        disks: &[SwitchDisk],
    ) -> Result<Vec<View>, FleeceError> {
        let views = self.prepare(qmp, generation, disks)?;
        self.cut(qmp, &views)?;
        self.export(qmp, &views)?;
        Ok(views)
    }

    /// The steps before the transaction: looks the disks up, checks their bitmaps and the
    /// scratch filesystem's room, and creates and opens the scratch images. Nothing is cut
    /// yet; [`Fleecer::cut`] follows, or [`Fleecer::abandon`].
    pub fn prepare(
        &self,
        qmp: &mut Qmp,
        generation: u32,
        disks: &[SwitchDisk],
    ) -> Result<Vec<View>, FleeceError> {
        if disks.is_empty() || disks.len() > MAX_DISKS {
            return Err(FleeceError::Invalid(format!(
                "{} disks (1..={MAX_DISKS} allowed)",
                disks.len()
            )));
        }
        for (i, d) in disks.iter().enumerate() {
            if disks[..i].iter().any(|e| e.node == d.node) {
                return Err(FleeceError::Invalid(format!("disk {} named twice", d.node)));
            }
        }
        let views = self.plan(qmp, generation, disks)?;
        check_room(
            &self.scratch_dir,
            views
                .iter()
                .map(|v| match v.copied {
                    true => copy_need(v.size),
                    false => scratch_need(v.size),
                })
                .sum(),
        )?;

        let mut ready: Vec<&View> = Vec::new();
        for v in &views {
            let made = match v.copied {
                true => create_copy_target(qmp, &v.names, &v.scratch_path, v.size, self.wait_limit),
                false => create_target(qmp, &v.names, &v.scratch_path, v.size, self.wait_limit),
            };
            if let Err(e) = made {
                for r in ready {
                    let _ = remove_target(qmp, &r.names, &r.scratch_path);
                }
                return Err(e);
            }
            ready.push(v);
        }
        Ok(views)
    }

    /// The instant: one transaction for all the prepared `views` (new bitmaps started,
    /// previous ones stopped, copy-before-write filters inserted). On error the scratch
    /// images go and nothing is cut.
    pub fn cut(&self, qmp: &mut Qmp, views: &[View]) -> Result<(), FleeceError> {
        let actions: Vec<Value> = views.iter().flat_map(|v| self.actions(v)).collect();
        if let Err(e) = qmp.execute("transaction", Some(json!({ "actions": actions }))) {
            self.abandon(qmp, views);
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes the scratch images of views prepared but not cut.
    pub fn abandon(&self, qmp: &mut Qmp, views: &[View]) {
        for v in views {
            let _ = remove_target(qmp, &v.names, &v.scratch_path);
        }
    }

    /// After the cut: exports each view over NBD (a copy once qemu has made it: this waits
    /// for qemu's copy jobs, so it runs outside any hold of other disks' writes). On error
    /// the views go and the new bitmaps are merged back into the previous ones (nothing of
    /// the switch is left).
    pub fn export(&self, qmp: &mut Qmp, views: &[View]) -> Result<(), FleeceError> {
        for v in views {
            let done = match (v.copied, v.previous_bitmap.as_deref()) {
                (true, Some(prev)) => {
                    wait_copied(qmp, v, self.wait_limit).and_then(|()| export_copy(qmp, v, prev))
                }
                _ => self.export_view(qmp, v),
            };
            if let Err(e) = done {
                let _ = self.teardown(qmp, views, false);
                for v in views {
                    let _ = rollback(qmp, &v.node, &v.bitmap, v.previous_bitmap.as_deref());
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes the views' exports, snapshot nodes, jobs (with their filters) and scratch
    /// images, whatever of them exists. Bitmaps stay, unless `remove_previous_bitmaps`: then
    /// each view's previous bitmap (already read and shipped) goes too.
    pub fn teardown(
        &self,
        qmp: &mut Qmp,
        views: &[View],
        remove_previous_bitmaps: bool,
    ) -> Result<(), FleeceError> {
        let mut first: Option<FleeceError> = None;
        for v in views {
            let r = self.teardown_one(qmp, v, remove_previous_bitmaps);
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn teardown_one(
        &self,
        qmp: &mut Qmp,
        v: &View,
        remove_previous_bitmap: bool,
    ) -> Result<(), FleeceError> {
        remove_export(qmp, &v.names.export, self.wait_limit)?;
        if qmp.node(&v.names.snapshot)?.is_some() {
            del_node(qmp, &v.names.snapshot)?;
        }
        cancel_job(qmp, &v.names.job, self.wait_limit)?;
        remove_target(qmp, &v.names, &v.scratch_path)?;
        if remove_previous_bitmap {
            if let Some(b) = &v.previous_bitmap {
                super::bitmap::remove_bitmap(qmp, &v.node, b)?;
            }
        }
        Ok(())
    }

    /// Looks the disks up and checks their bitmaps before anything is changed.
    fn plan(
        &self,
        qmp: &mut Qmp,
        generation: u32,
        disks: &[SwitchDisk],
    ) -> Result<Vec<View>, FleeceError> {
        let nodes = qmp.named_block_nodes()?;
        let bitmap = bitmap_name(generation);
        let mut views = Vec::with_capacity(disks.len());
        for (i, d) in disks.iter().enumerate() {
            let n = nodes
                .iter()
                .find(|n| n.node_name.as_deref() == Some(d.node.as_str()))
                .ok_or_else(|| FleeceError::NodeNotFound {
                    node: d.node.clone(),
                })?;
            if let Some(prev) = &d.previous_bitmap {
                if let Some(reason) = state_in(&n.dirty_bitmaps, prev).loss() {
                    return Err(FleeceError::BitmapLost {
                        node: d.node.clone(),
                        bitmap: prev.clone(),
                        reason,
                    });
                }
            }
            if state_in(&n.dirty_bitmaps, &bitmap) != BitmapState::Missing {
                return Err(FleeceError::BitmapExists {
                    node: d.node.clone(),
                    bitmap,
                });
            }
            let names = ViewNames::new(generation, i);
            let copied = d.copy && d.previous_bitmap.is_some();
            let scratch_file = match copied {
                true => names.scratch_file.replace(".qcow2", ".raw"),
                false => names.scratch_file.clone(),
            };
            views.push(View {
                node: d.node.clone(),
                generation,
                size: n.image.virtual_size,
                format: n.drv.clone(),
                bitmap: bitmap.clone(),
                persistent: n.drv == "qcow2",
                previous_bitmap: d.previous_bitmap.clone(),
                scratch_path: self.scratch_dir.join(scratch_file),
                copied,
                names,
                nbd_socket: self.nbd_socket.clone(),
            });
        }
        Ok(views)
    }

    /// The transaction actions of one disk.
    fn actions(&self, v: &View) -> Vec<Value> {
        let mut add = json!({"node": v.node, "name": v.bitmap, "persistent": v.persistent});
        if let Some(g) = self.granularity {
            add["granularity"] = json!(g);
        }
        let mut a = vec![json!({"type": "block-dirty-bitmap-add", "data": add})];
        if let Some(prev) = &v.previous_bitmap {
            a.push(json!({"type": "block-dirty-bitmap-disable",
                          "data": {"node": v.node, "name": prev}}));
            if v.copied {
                a.push(copy_action(v, prev));
                return a;
            }
        }
        a.push(json!({"type": "blockdev-backup", "data": {
            "job-id": v.names.job,
            "device": v.node,
            "target": v.names.target,
            "sync": "none",
            "filter-node-name": v.names.filter,
            "auto-finalize": true,
            "auto-dismiss": true,
        }}));
        a
    }

    /// The view's snapshot-access node and its NBD export.
    fn export_view(&self, qmp: &mut Qmp, v: &View) -> Result<(), FleeceError> {
        qmp.execute(
            "blockdev-add",
            Some(
                json!({"driver": "snapshot-access", "node-name": v.names.snapshot,
                        "file": v.names.filter, "discard": "unmap"}),
            ),
        )?;
        let mut export = json!({
            "type": "nbd",
            "id": v.names.export,
            "node-name": v.names.snapshot,
            "name": v.names.export,
            // For trims only: `snapshot-access` has no write path.
            "writable": true,
        });
        if let Some(prev) = &v.previous_bitmap {
            export["bitmaps"] = json!([{"node": v.node, "name": prev}]);
        }
        qmp.execute("block-export-add", Some(export))?;
        Ok(())
    }
}

/// Removes export `id` if it exists (`mode: hard`: our own reader is done or gone) and waits
/// until qemu has let go of it.
/// Deletes node `name`; one that qemu removed itself meanwhile (a qemu-storage-daemon
/// stopping ends its jobs while its monitor still answers) counts as deleted: the refusal
/// is returned only while the node is still there.
pub(crate) fn del_node(qmp: &mut Qmp, name: &str) -> Result<(), FleeceError> {
    match qmp.execute("blockdev-del", Some(json!({ "node-name": name }))) {
        Ok(_) => Ok(()),
        Err(e @ QmpError::Command { .. }) => match qmp.node(name)? {
            None => Ok(()),
            Some(_) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn remove_export(qmp: &mut Qmp, id: &str, limit: Duration) -> Result<(), FleeceError> {
    if !qmp.block_exports()?.iter().any(|e| e.id == id) {
        return Ok(());
    }
    if let Err(e) = qmp.execute("block-export-del", Some(json!({"id": id, "mode": "hard"}))) {
        // Gone meanwhile (qemu stopping closes its exports): deleted all the same.
        if !matches!(e, QmpError::Command { .. }) || qmp.block_exports()?.iter().any(|x| x.id == id)
        {
            return Err(e.into());
        }
    }
    poll_until(qmp, &format!("export {id} going away"), limit, |q| {
        Ok(!q.block_exports()?.iter().any(|e| e.id == id))
    })?;
    Ok(())
}

/// Cancels job `id` (a backup job, a scratch-image creation) if it exists and waits until
/// it is gone, dismissing it if it waits for that (a backup job's filter leaves the graph
/// with it).
pub(crate) fn cancel_job(qmp: &mut Qmp, id: &str, limit: Duration) -> Result<(), FleeceError> {
    match qmp.jobs()?.into_iter().find(|j| j.id == id) {
        None => return Ok(()),
        Some(j) if j.status == "concluded" || j.status == "aborting" => {}
        Some(_) => {
            if let Err(e) = qmp.execute("job-cancel", Some(json!({ "id": id }))) {
                // Ended meanwhile: the wait below sees it gone.
                if !matches!(e, QmpError::Command { .. }) {
                    return Err(e.into());
                }
            }
        }
    }
    poll_until(qmp, &format!("job {id} ending"), limit, |q| {
        match q.jobs()?.into_iter().find(|j| j.id == id) {
            None => Ok(true),
            Some(j) if j.status == "concluded" => {
                // A job without auto-dismiss waits to be dismissed.
                q.execute("job-dismiss", Some(json!({"id": id})))?;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    })?;
    Ok(())
}

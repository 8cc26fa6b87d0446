//! The VM's recovery points: a manifest, one per VM, that names for each point the cycle of
//! every disk of one switch (DESIGN §1: "recovery points are the VM's").
//!
//! **Invariant:** a VM point is written to the manifest only after every disk's part of it
//! is a committed point of that disk, and the manifest is replaced whole (local: `VM/points`
//! through `VM/points.tmp`; Azure: the blob `VM/points`), so a reader sees either the
//! previous manifest or the new one, never a point holding some disks of a switch but not
//! others. A receiver killed between two disks' commits of a cycle leaves the previous
//! point as the latest.
//!
//! The manifest is JSON (`{"format": "vdrep-vm-points 1", "points": [...]}`), points oldest
//! first with strictly increasing `vm_cycle`. This module is pure: encoding, the checks of
//! a new point ([`VmPoints::add`]), retention ([`VmPoints::prune`]), removing a disk's parts
//! ([`VmPoints::remove_disk`]) and the points of stores made before VM points
//! ([`legacy_points`]). The backends keep only the bytes
//! ([`super::ReplicaStore::commit_vm_point`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{validate_name, RecoveryPoint, ReplicaStore, SinkError};

/// Names the manifest's format; another value is refused.
pub const VM_POINTS_FORMAT: &str = "vdrep-vm-points 1";
/// The manifest's name inside the VM's folder (local) or under the VM's prefix (Azure). No
/// suffix: every file of a disk `NAME` has one (`NAME.vhd`, `NAME.state`, …), so even a disk
/// named `points` never collides with it.
pub const VM_POINTS_FILE: &str = "points";
/// Where the local store writes a new manifest before renaming it over [`VM_POINTS_FILE`].
pub const VM_POINTS_TMP: &str = "points.tmp";
/// A manifest larger than this is not one (24 h of 30 s points of 16 disks is ~2 MiB).
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;

/// One disk's part of a VM point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointPart {
    /// The disk's name inside the VM.
    pub disk: String,
    /// The disk's own committed cycle that holds its state at the switch (a recovery point
    /// of that disk: `PointReader::read_point(cycle, ..)`).
    pub cycle: u64,
    /// Bytes that cycle changed.
    pub bytes: u64,
    /// BLAKE3 of the disk at the switch as the sender computed it, hex; `None`: none sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl PointPart {
    /// The part of a disk point: the digest in hex unless all zero (none sent).
    pub fn new(disk: &str, cycle: u64, bytes: u64, digest: &[u8; 32]) -> PointPart {
        PointPart {
            disk: disk.to_string(),
            cycle,
            bytes,
            digest: (*digest != [0; 32]).then(|| hex32(digest)),
        }
    }

    /// The digest as bytes (all zero when none, as the disk's [`RecoveryPoint`] has it).
    pub fn digest_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        if let Some(h) = &self.digest {
            for (i, b) in out.iter_mut().enumerate() {
                *b = h
                    .get(i * 2..i * 2 + 2)
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .unwrap_or(0);
            }
        }
        out
    }
}

fn hex32(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// One recovery point of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPoint {
    /// The VM cycle: the switch's number and the point's id (`failover --point ID`).
    pub vm_cycle: u64,
    /// The sender's switch instant, Unix milliseconds: the point's source time, which the
    /// RPO measures. For points made before VM-wide switches ([`legacy_points`]) the
    /// earliest of its disks' commit times.
    pub switch_unix_ms: u64,
    /// When the receiver recorded the point, Unix seconds (receiver clock).
    pub committed_unix: u64,
    /// The consistency group whose switch made the point (`None` outside a group).
    #[serde(default)]
    pub group: Option<String>,
    /// The group's switch number (`None` outside a group).
    #[serde(default)]
    pub group_cycle: Option<u64>,
    /// True when every disk switched at one instant (a VM-wide switch); false for points
    /// from before VM-wide switches, whose disks switched one after another, and for the
    /// initial copies (disk after disk).
    pub consistent: bool,
    /// Every disk of the point, sorted by name.
    pub disks: Vec<PointPart>,
}

impl VmPoint {
    /// Bytes its disks' cycles changed.
    pub fn bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.bytes).sum()
    }

    /// The part of disk `disk`, if the point has one.
    pub fn part(&self, disk: &str) -> Option<&PointPart> {
        self.disks.iter().find(|d| d.disk == disk)
    }
}

/// What adding a point did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The point is new: write the manifest.
    New,
    /// The same point was recorded already (a resent commit): nothing to write.
    Again,
}

/// The manifest of one VM: its points, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPoints {
    format: String,
    /// The points, oldest first, `vm_cycle` strictly increasing.
    pub points: Vec<VmPoint>,
}

impl VmPoints {
    /// A manifest holding `points` (oldest first).
    pub fn new(points: Vec<VmPoint>) -> VmPoints {
        VmPoints {
            format: VM_POINTS_FORMAT.into(),
            points,
        }
    }

    /// The newest point.
    pub fn latest(&self) -> Option<&VmPoint> {
        self.points.last()
    }

    /// The manifest's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut doc = self.clone();
        doc.format = VM_POINTS_FORMAT.into();
        // Plain strings and numbers: serialising cannot fail.
        let mut v = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Reads a manifest; anything but a well-formed one of this format (points in order,
    /// valid names, parts sorted and distinct) is [`SinkError::CorruptState`] naming `path`.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<VmPoints, SinkError> {
        let corrupt = |problem: String| SinkError::CorruptState {
            path: path.to_path_buf(),
            offset: 0,
            problem,
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(corrupt(format!("{} bytes: not a manifest", bytes.len())));
        }
        let doc: VmPoints = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(format!("not a VM points manifest: {e}")))?;
        if doc.format != VM_POINTS_FORMAT {
            return Err(corrupt(format!(
                "format {:?}, expected {VM_POINTS_FORMAT:?}",
                doc.format
            )));
        }
        for (i, p) in doc.points.iter().enumerate() {
            check_point(p).map_err(|e| corrupt(format!("point {}: {e}", p.vm_cycle)))?;
            if i > 0 && doc.points[i - 1].vm_cycle >= p.vm_cycle {
                return Err(corrupt(format!(
                    "point {} follows point {}: points must be in increasing order",
                    p.vm_cycle,
                    doc.points[i - 1].vm_cycle
                )));
            }
        }
        Ok(doc)
    }

    /// Adds `point` as the newest. The same point again (same cycle, group and parts) is
    /// [`Added::Again`]; a different point under a recorded cycle, or one older than the
    /// newest, is refused (`InvalidState` at `path`). `committed_unix` never goes back
    /// before the previous point's.
    pub fn add(&mut self, mut point: VmPoint, path: &Path) -> Result<Added, SinkError> {
        let invalid = |problem: String| SinkError::InvalidState {
            path: path.to_path_buf(),
            offset: 0,
            problem,
        };
        check_point(&point).map_err(invalid)?;
        if let Some(old) = self.points.iter().find(|p| p.vm_cycle == point.vm_cycle) {
            if old.disks == point.disks
                && old.group == point.group
                && old.group_cycle == point.group_cycle
            {
                return Ok(Added::Again);
            }
            return Err(invalid(format!(
                "VM point {} is recorded already with other disks' cycles",
                point.vm_cycle
            )));
        }
        if let Some(last) = self.points.last() {
            if last.vm_cycle > point.vm_cycle {
                return Err(invalid(format!(
                    "VM point {} is older than the newest point {}",
                    point.vm_cycle, last.vm_cycle
                )));
            }
            point.committed_unix = point.committed_unix.max(last.committed_unix);
        }
        self.points.push(point);
        Ok(Added::New)
    }

    /// Retention: drops the longest prefix of points committed before `cutoff_unix`, never
    /// the newest, and every point one of whose parts is no longer a point of its disk
    /// (`has(disk, cycle)` false: pruned by the disk's own retention or gone with a new
    /// copy). Returns how many were dropped.
    pub fn prune(&mut self, cutoff_unix: u64, has: impl Fn(&str, u64) -> bool) -> usize {
        let n = self.points.len();
        let keep_from = self
            .points
            .iter()
            .take(n.saturating_sub(1))
            .take_while(|p| p.committed_unix < cutoff_unix)
            .count();
        self.points.drain(..keep_from);
        self.points
            .retain(|p| p.disks.iter().all(|d| has(&d.disk, d.cycle)));
        n - self.points.len()
    }

    /// Removes disk `disk`'s parts from every point (`unprotect --disk`); points left
    /// without a disk go. Returns true when anything changed.
    pub fn remove_disk(&mut self, disk: &str) -> bool {
        let mut changed = false;
        for p in &mut self.points {
            let n = p.disks.len();
            p.disks.retain(|d| d.disk != disk);
            changed |= p.disks.len() != n;
        }
        self.points.retain(|p| !p.disks.is_empty());
        changed
    }
}

fn check_point(p: &VmPoint) -> Result<(), String> {
    if p.disks.is_empty() {
        return Err("a VM point needs at least one disk".into());
    }
    if let Some(g) = &p.group {
        validate_name("group name", g).map_err(|e| e.to_string())?;
    }
    for (i, d) in p.disks.iter().enumerate() {
        validate_name("disk name", &d.disk).map_err(|e| e.to_string())?;
        if i > 0 && p.disks[i - 1].disk >= d.disk {
            return Err(format!(
                "disks {} and {} are not sorted by name or named twice",
                p.disks[i - 1].disk,
                d.disk
            ));
        }
        if let Some(h) = &d.digest {
            if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "disk {}: digest {h:?} is not 64 hex digits",
                    d.disk
                ));
            }
        }
    }
    Ok(())
}

/// The VM points of a store made before VM points existed (store format 3): the cycles
/// every disk has a point of, each listed with `consistent: false` (the disks switched
/// one after another), the source time the earliest of the disks' commits. `disks` are
/// `(name, its points)`.
pub fn legacy_points(disks: &[(String, Vec<RecoveryPoint>)]) -> Vec<VmPoint> {
    let Some((_, first)) = disks.first() else {
        return Vec::new();
    };
    let mut sorted: Vec<&(String, Vec<RecoveryPoint>)> = disks.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for p in first {
        let parts: Option<Vec<(&str, &RecoveryPoint)>> = sorted
            .iter()
            .map(|(name, pts)| {
                pts.iter()
                    .find(|q| q.cycle == p.cycle)
                    .map(|q| (name.as_str(), q))
            })
            .collect();
        let Some(parts) = parts else { continue };
        let earliest = parts.iter().map(|(_, q)| q.created_unix).min().unwrap_or(0);
        let latest = parts.iter().map(|(_, q)| q.created_unix).max().unwrap_or(0);
        out.push(VmPoint {
            vm_cycle: p.cycle,
            switch_unix_ms: earliest.saturating_mul(1000),
            committed_unix: latest,
            group: None,
            group_cycle: None,
            consistent: false,
            disks: parts
                .iter()
                .map(|(n, q)| PointPart::new(n, q.cycle, q.bytes, &q.digest))
                .collect(),
        });
    }
    out.sort_by_key(|p| p.vm_cycle);
    out
}

/// The recovery points of every disk of `vm` in `store`, by disk name.
pub fn disk_points(
    store: &dyn ReplicaStore,
    vm: &str,
) -> Result<Vec<(String, Vec<RecoveryPoint>)>, SinkError> {
    let mut out = Vec::new();
    for k in store.list_disks(Some(vm))? {
        let pts = match store.point_reader(&k) {
            Ok(r) => r.points()?,
            // Removed meanwhile, or not committed yet: no points.
            Err(SinkError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        out.push((k.disk, pts));
    }
    Ok(out)
}

/// The VM's recovery points, oldest first: its manifest's whose every part its disk still
/// holds, or, in a store without one (made before VM points, or before the VM's first
/// VM-wide switch committed), the [`legacy_points`] of its disks.
pub fn list(store: &dyn ReplicaStore, vm: &str) -> Result<Vec<VmPoint>, SinkError> {
    validate_name("VM name", vm)?;
    let manifest = store.vm_points(vm)?;
    let disks = disk_points(store, vm)?;
    match manifest {
        Some(mut m) => {
            // Retention pruned a part since the manifest was written (the next commit
            // prunes the point too): not a point failover could write.
            m.points.retain(|p| {
                p.disks.iter().all(|part| {
                    disks.iter().any(|(d, pts)| {
                        *d == part.disk && pts.iter().any(|q| q.cycle == part.cycle)
                    })
                })
            });
            Ok(m.points)
        }
        None => Ok(legacy_points(&disks)),
    }
}

/// Records `point` as the newest recovery point of `vm` (a VM cycle whose every disk's
/// part was committed; each part's bytes and digest are taken from its disk's point), then
/// prunes whole points committed more than `retention_secs`
/// before it and points whose parts are gone. Every part must be a recovery point of its
/// disk (else `InvalidState`: the manifest is not written). The first manifest of a VM
/// starts with its [`legacy_points`] older than `point`. Returns how many points were
/// pruned.
pub fn commit(
    store: &dyn ReplicaStore,
    vm: &str,
    point: VmPoint,
    retention_secs: u64,
) -> Result<usize, SinkError> {
    validate_name("VM name", vm)?;
    let disks = disk_points(store, vm)?;
    let has = |disk: &str, cycle: u64| {
        disks
            .iter()
            .any(|(d, pts)| d == disk && pts.iter().any(|p| p.cycle == cycle))
    };
    let mut point = point;
    let where_ = std::path::PathBuf::from(format!("{}: VM {vm} points", store.describe()));
    for part in &mut point.disks {
        let dp = disks
            .iter()
            .find(|(d, _)| *d == part.disk)
            .and_then(|(_, pts)| pts.iter().find(|p| p.cycle == part.cycle));
        let Some(dp) = dp else {
            return Err(SinkError::InvalidState {
                path: where_.clone(),
                offset: 0,
                problem: format!(
                    "disk {} has no recovery point {}: a VM point holds only committed cycles",
                    part.disk, part.cycle
                ),
            });
        };
        // The disk's point is the record of its part: its bytes and digest (what failover
        // verifies), whatever the request said.
        *part = PointPart::new(&part.disk, dp.cycle, dp.bytes, &dp.digest);
    }
    let mut pruned = 0;
    store.update_vm_points(vm, &mut |m, existed| {
        if !existed {
            m.points = legacy_points(&disks)
                .into_iter()
                .filter(|p| p.vm_cycle < point.vm_cycle)
                .collect();
        }
        match m.add(point.clone(), &where_)? {
            Added::Again => Ok(!existed),
            Added::New => {
                let newest = m.latest().map_or(0, |p| p.committed_unix);
                pruned = m.prune(newest.saturating_sub(retention_secs), has);
                Ok(true)
            }
        }
    })?;
    Ok(pruned)
}

/// Writes the manifest of every VM of `store` that has none, holding its
/// [`legacy_points`] (a store from before VM points: the disks switched one after another,
/// so none is consistent). VMs with no common point get none. Returns the VMs upgraded.
pub fn migrate(store: &dyn ReplicaStore) -> Result<Vec<String>, SinkError> {
    let mut vms: Vec<String> = store.list_disks(None)?.into_iter().map(|k| k.vm).collect();
    vms.dedup();
    let mut out = Vec::new();
    for vm in vms {
        if store.vm_points(&vm)?.is_some() {
            continue;
        }
        let legacy = legacy_points(&disk_points(store, &vm)?);
        if legacy.is_empty() {
            continue;
        }
        store.update_vm_points(&vm, &mut |m, existed| {
            if existed {
                return Ok(false);
            }
            m.points = legacy.clone();
            Ok(true)
        })?;
        out.push(vm);
    }
    Ok(out)
}

/// Removes disk `disk`'s parts from the points of `vm` (`unprotect --disk`); points left
/// with no disk go, and so does a manifest left with no point. Absent is not an error.
pub fn remove_disk(store: &dyn ReplicaStore, vm: &str, disk: &str) -> Result<(), SinkError> {
    validate_name("VM name", vm)?;
    if store.vm_points(vm)?.is_none() {
        return Ok(());
    }
    store.update_vm_points(vm, &mut |m, existed| Ok(existed && m.remove_disk(disk)))
}

#[cfg(test)]
#[path = "vm_points_tests.rs"]
mod tests;

//! The VM's recovery points at the sender: every VM switch is recorded beside each of its
//! disks as a *point plan* (`D.NNNNNNNN.hrl.point`: the VM cycle, the switch instant, each
//! disk's cycle), the disks ship their parts as their own cycles, and once every part is
//! committed the sender asks the receiver to record the VM point ([`Control::CommitPoint`],
//! protocol 5, WIRE.md §4.5). The plan is removed only after the receiver answered, so a
//! sender killed in between resends the point at its next start (the receiver answers a
//! resent point again).
//!
//! The plan is written before the switch renames anything (`cycle::switch_vms`), so a
//! switch interrupted by a crash and completed later (by a writer or the next start) still
//! becomes a point; a switch whose plan could not be written ships its disks' cycles
//! without a VM point: the VM's previous point stays the latest, never a partial one. A
//! plan one of whose disks cannot ship its part (it needs a resync, or the switch never
//! happened) is dropped with a warning: that switch is no point of the VM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use vdrep_proto::wire::{Control, PointPart};

use super::disk::Opened;
use super::protect::Protected;
use super::{ControlStream, SendError};
use crate::tracking::Tracker;

/// One disk of a planned VM point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDisk {
    /// The disk's name in the store.
    pub name: String,
    /// The disk's cycle closed by the switch.
    pub cycle: u64,
}

/// A VM switch waiting to become a VM recovery point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointPlan {
    /// The VM.
    pub vm: String,
    /// The VM cycle (the point's id).
    pub vm_cycle: u64,
    /// The switch instant, Unix milliseconds (sender clock).
    pub switch_unix_ms: u64,
    /// The consistency group whose switch this was (`None` outside a group).
    #[serde(default)]
    pub group: Option<String>,
    /// The group's switch number (`None` outside a group).
    #[serde(default)]
    pub group_cycle: Option<u64>,
    /// Every disk of the switch.
    pub disks: Vec<PlanDisk>,
    /// Every disk's part is the VM at the switch's one instant, initial copies included (a
    /// qemu switch); change-log switches copy disks one after another (`false`, not written).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub one_instant: bool,
}

impl PointPlan {
    /// The cycle of disk `name` in this plan.
    pub fn cycle_of(&self, name: &str) -> Option<u64> {
        self.disks.iter().find(|d| d.name == name).map(|d| d.cycle)
    }
}

fn plan_path(t: &Tracker, cycle: u64) -> PathBuf {
    t.paths().point_plan(cycle)
}

/// Writes `plan` beside every disk of the switch (`(tracker, cycle)` per disk): written,
/// fsync'd and renamed, so a reader never sees half of one.
pub fn record(plan: &PointPlan, disks: &[(&Tracker, u64)]) -> std::io::Result<()> {
    let text = serde_json::to_string(plan).map_err(std::io::Error::other)?;
    for (t, cycle) in disks {
        let path = plan_path(t, *cycle);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, &text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// The plans found beside the VM's disks, oldest VM cycle first (each once).
pub fn pending(disks: &[Arc<Mutex<Protected>>]) -> Vec<PointPlan> {
    let mut out: BTreeMap<u64, PointPlan> = BTreeMap::new();
    for d in disks {
        let Ok(g) = d.lock() else { continue };
        let Ok(plans) = g.tracker.paths().point_plans() else {
            continue;
        };
        for (_, path) in plans {
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<PointPlan>(&b).ok())
            {
                Some(plan) if plan.vm == g.job.vm => {
                    out.entry(plan.vm_cycle).or_insert(plan);
                }
                Some(_) => {} // another VM's disk in the same folder, with the same stem
                None => warn!(file = %path.display(), "ignoring an unreadable VM point plan"),
            }
        }
    }
    out.into_values().collect()
}

/// Removes `plan` from beside every disk of the VM it names.
pub fn forget(plan: &PointPlan, disks: &[Arc<Mutex<Protected>>]) {
    for d in disks {
        let Ok(g) = d.lock() else { continue };
        if let Some(c) = plan.cycle_of(&g.job.name) {
            let path = plan_path(&g.tracker, c);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(file = %path.display(), error = %e, "cannot remove a VM point plan");
                }
            }
        }
    }
}

/// What became of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver recorded the VM point.
    Committed,
    /// Some disk's part is not committed (it left delta replication): no point.
    Incomplete,
    /// The receiver speaks protocol 4 or older: per-disk points only.
    NotSupported,
}

/// Commits `plan` as a VM point when every disk it names has committed its part; the plan
/// is forgotten in every case but an error (which the caller retries).
pub async fn commit(
    ctrl: &mut ControlStream,
    plan: &PointPlan,
    disks: &[Arc<Mutex<Protected>>],
    opened: &[Option<Opened>],
    known: &BTreeMap<(String, u64), (u64, [u8; 32])>,
    retention_secs: u32,
    sh: &super::disk::Shared,
) -> Result<Outcome, SendError> {
    let mut parts = Vec::new();
    let mut missing = Vec::new();
    for pd in &plan.disks {
        let found = disks.iter().zip(opened).find_map(|(d, o)| {
            let g = d.lock().ok()?;
            (g.job.name == pd.name).then(|| (g.committed_cycle, o.as_ref().map(|o| o.handle)))
        });
        match found {
            Some((Some(c), Some(handle))) if c >= pd.cycle => {
                let (bytes, digest) = known
                    .get(&(pd.name.clone(), pd.cycle))
                    .copied()
                    .unwrap_or((0, [0; 32]));
                parts.push(PointPart {
                    handle,
                    cycle: pd.cycle,
                    bytes,
                    digest,
                });
            }
            _ => missing.push(pd.name.clone()),
        }
    }
    if !missing.is_empty() {
        warn!(vm = %plan.vm, vm_cycle = plan.vm_cycle, disks = ?missing,
              "this VM switch is no recovery point of the VM: these disks could not commit their part");
        forget(plan, disks);
        return Ok(Outcome::Incomplete);
    }
    let out = send(ctrl, plan, parts, retention_secs, sh).await?;
    forget(plan, disks);
    Ok(out)
}

/// Asks the receiver to record `plan` as the VM's recovery point made of `parts` (every
/// one a cycle its disk has committed). Shared by every change source: the [MS-HRL] logs
/// through their plans ([`commit`]), qemu once a switch's cycles are committed
/// (`sender::qemu::point`). An error is worth retrying; a point the receiver refuses for
/// good is [`Outcome::Incomplete`] (the VM's previous point stays the latest).
pub async fn send(
    ctrl: &mut ControlStream,
    plan: &PointPlan,
    parts: Vec<PointPart>,
    retention_secs: u32,
    sh: &super::disk::Shared,
) -> Result<Outcome, SendError> {
    if ctrl.version() < vdrep_proto::wire::VM_POINTS_VERSION {
        return Ok(Outcome::NotSupported);
    }
    let req = ctrl.req();
    let msg = Control::CommitPoint {
        req,
        vm_cycle: plan.vm_cycle,
        switch_unix_ms: plan.switch_unix_ms,
        group: plan.group.clone(),
        group_cycle: plan.group_cycle,
        retention_secs,
        disks: parts,
        one_instant: plan.one_instant,
    };
    match ctrl.call(msg).await {
        Ok(Control::PointCommitted { .. }) => {}
        Ok(other) => return Err(ctrl.unexpected(other)),
        // The store will never take this point (a part it no longer holds): the switch is
        // no point of the VM, and the VM's protection goes on.
        Err(SendError::Remote {
            class: vdrep_proto::wire::ErrorClass::InvalidState,
            message,
            ..
        }) => {
            warn!(vm = %plan.vm, vm_cycle = plan.vm_cycle, reason = %message,
                  "the receiver refused this VM recovery point: the VM's previous point stays the latest");
            return Ok(Outcome::Incomplete);
        }
        Err(e) => return Err(e),
    }
    let at = jiff::Timestamp::from_millisecond(plan.switch_unix_ms as i64)
        .unwrap_or_else(|_| sh.clock.now_utc());
    let consistent = plan.one_instant || plan.disks.iter().all(|d| d.cycle > 0);
    sh.health
        .point_committed(&plan.vm, plan.vm_cycle, at, consistent);
    crate::metrics::events::vm_point(&plan.vm, plan.switch_unix_ms / 1000);
    info!(vm = %plan.vm, vm_cycle = plan.vm_cycle, disks = plan.disks.len(),
          "VM recovery point committed");
    Ok(Outcome::Committed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_written_beside_each_disk_and_read_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tracker::new(&dir.path().join("os.raw"), 1 << 20);
        let b = Tracker::new(&dir.path().join("data.raw"), 1 << 20);
        let plan = PointPlan {
            vm: "vm1".into(),
            vm_cycle: 7,
            switch_unix_ms: 1234,
            group: None,
            group_cycle: None,
            disks: vec![
                PlanDisk {
                    name: "data".into(),
                    cycle: 6,
                },
                PlanDisk {
                    name: "os".into(),
                    cycle: 7,
                },
            ],
            one_instant: false,
        };
        record(&plan, &[(&a, 7), (&b, 6)]).unwrap();
        assert!(dir.path().join("os.raw.00000007.hrl.point").is_file());
        assert!(dir.path().join("data.raw.00000006.hrl.point").is_file());
        // The closed-log listing does not mistake a plan for a log; the plans are listed.
        assert!(a.paths().closed_logs().unwrap().is_empty());
        let listed = a.paths().point_plans().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, 7);
        assert_eq!(plan.cycle_of("data"), Some(6));
    }
}

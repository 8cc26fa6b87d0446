//! The recovery points of a qemu VM. A qemu switch is one QMP transaction for all the VM's
//! disks, so the views of one switch are one instant of the VM. Once every disk's replica
//! holds its view — its initial copy, its resync or its cycle of the previous bitmap,
//! committed — that switch becomes the VM's recovery point: the sender asks the receiver to
//! record it ([`crate::sender::points::send`], `CommitPoint`), with the switch instant and
//! each disk's committed cycle. A round in which some disk does not reach its view (a resync
//! waiting for non-work hours, a failure) is no VM point: the VM's previous point stays the
//! latest, never a partial one.
//!
//! Unlike the [MS-HRL] logs' point plans, nothing is written to disk first: the views end
//! with the round, so a sender killed between the disks' commits and the point loses only
//! that point (its disks' cycles stay committed, each a point of its own disk); the next
//! round's views make the VM's next point.

use tracing::info;
use vdrep_proto::wire::PointPart;

use super::ctl::QemuVm;
use crate::sender::disk::{Opened, Shared};
use crate::sender::points::{Outcome, PlanDisk, PointPlan};
use crate::sender::{ControlStream, SendError};

/// The VM point of a round: `reached` holds, per disk of the VM (`names`, in order), its
/// handle and committed cycle when the disk reached its view this round. Every disk must
/// have: otherwise `None` (no VM point). The VM cycle is the highest disk cycle (as for a
/// log switch).
pub fn plan(
    vm: &str,
    names: &[&str],
    switch_unix_ms: u64,
    reached: &[Option<(u32, u64)>],
) -> Option<(PointPlan, Vec<PointPart>)> {
    if reached.len() != names.len() || names.is_empty() {
        return None;
    }
    let mut disks = Vec::with_capacity(names.len());
    let mut parts = Vec::with_capacity(names.len());
    for (name, r) in names.iter().zip(reached) {
        let (handle, cycle) = (*r)?;
        disks.push(PlanDisk {
            name: name.to_string(),
            cycle,
        });
        // The store records each part's bytes and digest from the disk's own point.
        parts.push(PointPart {
            handle,
            cycle,
            bytes: 0,
            digest: [0; 32],
        });
    }
    let vm_cycle = disks.iter().map(|d| d.cycle).max().unwrap_or(0);
    let plan = PointPlan {
        vm: vm.to_string(),
        vm_cycle,
        switch_unix_ms,
        group: None,
        group_cycle: None,
        disks,
    };
    Some((plan, parts))
}

/// Commits the round's VM point, if it has one ([`plan`]): `advanced` says which disks
/// reached their view, `opened` their replicas now.
pub async fn commit(
    ctrl: &mut ControlStream,
    vm: &QemuVm,
    switch_unix_ms: u64,
    advanced: &[bool],
    opened: &[Option<Opened>],
    retention_secs: u32,
    sh: &Shared,
) -> Result<Option<Outcome>, SendError> {
    let names: Vec<&str> = vm.disks.iter().map(|d| d.name.as_str()).collect();
    let reached: Vec<Option<(u32, u64)>> = advanced
        .iter()
        .zip(opened)
        .map(|(a, o)| {
            o.as_ref()
                .filter(|_| *a)
                .map(|o| (o.handle, o.committed_cycle))
        })
        .collect();
    let Some((plan, parts)) = plan(&vm.name, &names, switch_unix_ms, &reached) else {
        info!(vm = %vm.name, "not every disk of the VM reached this switch's view: no VM recovery point for it");
        return Ok(None);
    };
    crate::sender::points::send(ctrl, &plan, parts, retention_secs, sh)
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_a_vm_point_only_when_every_disk_reached_its_view() {
        let (p, parts) = plan("vm1", &["os", "data"], 1234, &[Some((1, 7)), Some((2, 5))])
            .expect("every disk reached its view");
        assert_eq!(p.vm_cycle, 7, "the highest disk cycle");
        assert_eq!(p.switch_unix_ms, 1234);
        assert_eq!((p.cycle_of("os"), p.cycle_of("data")), (Some(7), Some(5)));
        assert_eq!(
            parts
                .iter()
                .map(|p| (p.handle, p.cycle))
                .collect::<Vec<_>>(),
            vec![(1, 7), (2, 5)]
        );
        // The first round: both initial copies from the views of one transaction.
        assert_eq!(
            plan_of(&[Some((1, 0)), Some((2, 0))]).map(|p| p.vm_cycle),
            Some(0)
        );
        // A disk waiting for its resync: that switch is no point of the VM.
        assert!(plan_of(&[Some((1, 8)), None]).is_none());
        assert!(plan_of(&[Some((1, 8))]).is_none(), "a disk missing");
        assert!(plan("vm1", &[], 0, &[]).is_none());
    }

    fn plan_of(reached: &[Option<(u32, u64)>]) -> Option<PointPlan> {
        plan("vm1", &["os", "data"], 0, reached).map(|p| p.0)
    }
}

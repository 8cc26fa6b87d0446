//! The recovery points of a qemu VM. A qemu switch is one QMP transaction for all the VM's
//! disks, so the views of one switch are one instant of the VM — initial copies included
//! (the point says `one_instant`, so the receiver lists it consistent even at cycle 0).
//! Once every disk's replica holds its view — its initial copy, its resync or its cycle of
//! the previous bitmap, committed — that switch becomes the VM's recovery point: the sender
//! asks the receiver to record it ([`crate::sender::points::send`], `CommitPoint`), with the
//! switch instant and each disk's committed cycle. A round in which some disk does not
//! reach its view (a resync waiting for non-work hours, a failure) is no VM point: the VM's
//! previous point stays the latest, never a partial one.
//!
//! As for the [MS-HRL] logs' point plans, the round's plan is written first
//! (`STATE/qemu/VM/point.json`, durably: [`record`]), once the disks are open and before
//! any of them ships, naming the cycle each disk commits from this switch's view. It is
//! removed once the receiver answered the point, or when the round ends without one. A
//! sender killed between the disks' commits and the point finds the plan at its next
//! connection, before any new round ships ([`resend`]): if every disk committed its
//! planned cycle, the point is sent again (the receiver answers a resent point again);
//! otherwise that switch is no point, and the plan is dropped.
//!
//! A round cut by a consistency group's switch (`crate::sender::group_qemu`) makes the VM's
//! part of that group point: its plan carries the group, the group cycle and the group
//! switch's instant, which the image members' points carry too.

use tracing::{info, warn};
use vdrep_proto::wire::PointPart;

use super::ctl::QemuVm;
use crate::sender::disk::{Opened, Shared};
use crate::sender::points::{Outcome, PlanDisk, PointPlan};
use crate::sender::{ControlStream, SendError};

/// The VM point of a round: `reached` holds, per disk of the VM (`names`, in order), its
/// handle and committed cycle when the disk reached its view this round. Every disk must
/// have: otherwise `None` (no VM point). The VM cycle is the highest disk cycle (as for a
/// log switch). `group`: the consistency group and group cycle of the switch that took
/// the views (`sender::group_qemu`), `None` for a switch of the VM alone.
pub fn plan(
    vm: &str,
    names: &[&str],
    switch_unix_ms: u64,
    group: Option<&(String, u64)>,
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
        group: group.map(|g| g.0.clone()),
        group_cycle: group.map(|g| g.1),
        disks,
        one_instant: true,
    };
    Some((plan, parts))
}

/// Writes the round's plan before anything ships: `planned` is, per disk, the cycle it
/// commits from this switch's view (`None`: it does not reach the view this round, so
/// there is no VM point and any older plan goes). A plan that cannot be written is said
/// and the round goes on: only a crash before its point would lose that point.
pub fn record(
    vm: &QemuVm,
    switch_unix_ms: u64,
    group: Option<&(String, u64)>,
    planned: &[Option<u64>],
) {
    let names: Vec<&str> = vm.disks.iter().map(|d| d.name.as_str()).collect();
    // Handles are not part of the plan (they are the connection's).
    let reached: Vec<Option<(u32, u64)>> = planned.iter().map(|c| c.map(|c| (0, c))).collect();
    let r = match plan(&vm.name, &names, switch_unix_ms, group, &reached) {
        Some((p, _)) => vm.state.save_plan(&p),
        None => vm.state.clear_plan(),
    };
    if let Err(e) = r {
        warn!(vm = %vm.name, error = %e,
              "cannot record the round's VM point plan: a crash before its point would lose that point");
    }
}

/// Commits the round's VM point, if it has one ([`plan`]): `advanced` says which disks
/// reached their view, `opened` their replicas now. The plan on disk goes once the
/// receiver answered (or when there is no point); an error keeps it for the next start.
#[allow(clippy::too_many_arguments)]
pub async fn commit(
    ctrl: &mut ControlStream,
    vm: &QemuVm,
    switch_unix_ms: u64,
    group: Option<&(String, u64)>,
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
    let Some((plan, parts)) = plan(&vm.name, &names, switch_unix_ms, group, &reached) else {
        info!(vm = %vm.name, "not every disk of the VM reached this switch's view: no VM recovery point for it");
        forget(vm);
        return Ok(None);
    };
    super::test_hook::before_point().await;
    let out = crate::sender::points::send(ctrl, &plan, parts, retention_secs, sh).await?;
    forget(vm);
    Ok(Some(out))
}

/// Sends the point of a round a killed sender planned but never committed (see the top of
/// this file), once the disks are open on a new connection and before a new round ships.
pub async fn resend(
    ctrl: &mut ControlStream,
    vm: &QemuVm,
    opened: &[Option<Opened>],
    retention_secs: u32,
    sh: &Shared,
) -> Result<(), SendError> {
    let plan = match vm.state.load_plan() {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(()),
        Err(e) => {
            warn!(vm = %vm.name, error = %e, "ignoring an unreadable VM point plan");
            forget(vm);
            return Ok(());
        }
    };
    let mut parts = Vec::new();
    for pd in &plan.disks {
        let o = vm
            .disks
            .iter()
            .position(|d| d.name == pd.name)
            .and_then(|i| opened.get(i))
            .and_then(Option::as_ref);
        match o {
            Some(o) if o.initial_committed && o.committed_cycle >= pd.cycle => {
                parts.push(PointPart {
                    handle: o.handle,
                    cycle: pd.cycle,
                    bytes: 0,
                    digest: [0; 32],
                })
            }
            _ => {
                info!(vm = %vm.name, vm_cycle = plan.vm_cycle, disk = %pd.name,
                      "a planned VM point whose disks did not all commit before the sender stopped: that switch is no point");
                forget(vm);
                return Ok(());
            }
        }
    }
    info!(vm = %vm.name, vm_cycle = plan.vm_cycle,
          "sending the VM recovery point of a round committed before the sender stopped");
    crate::sender::points::send(ctrl, &plan, parts, retention_secs, sh).await?;
    forget(vm);
    Ok(())
}

fn forget(vm: &QemuVm) {
    if let Err(e) = vm.state.clear_plan() {
        warn!(vm = %vm.name, error = %e, "cannot remove the VM point plan");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_is_a_vm_point_only_when_every_disk_reached_its_view() {
        let (p, parts) = plan(
            "vm1",
            &["os", "data"],
            1234,
            None,
            &[Some((1, 7)), Some((2, 5))],
        )
        .expect("every disk reached its view");
        assert_eq!((p.group.as_deref(), p.group_cycle), (None, None));
        assert_eq!(p.vm_cycle, 7, "the highest disk cycle");
        assert_eq!(p.switch_unix_ms, 1234);
        assert!(p.one_instant, "a qemu switch is one instant");
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
        assert!(plan("vm1", &[], 0, None, &[]).is_none());
        // A round cut by a consistency group's switch: its point is the group's.
        let g = ("erp".to_string(), 12);
        let (p, _) = plan("vm1", &["os"], 99, Some(&g), &[Some((1, 4))]).unwrap();
        assert_eq!((p.group.as_deref(), p.group_cycle), (Some("erp"), Some(12)));
        assert_eq!(p.switch_unix_ms, 99, "the group switch's instant");
    }

    fn plan_of(reached: &[Option<(u32, u64)>]) -> Option<PointPlan> {
        plan("vm1", &["os", "data"], 0, None, reached).map(|p| p.0)
    }
}

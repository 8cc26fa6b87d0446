//! `vdrep failover --test --group NAME --point GROUP_CYCLE|latest (--store DIR | --azure-*)
//! --out DIR`: every VM of a consistency group at one group switch, each disk as a
//! verified fixed VHD `DIR/VM/NAME.vhd` (issue 17 item 5).
//!
//! A group point is the set of the members' VM points that carry the same `group` and
//! `group_cycle` (one switch of all their disks at one instant, `sender::group`). The
//! members are the VMs of the store with points of the group. `latest` is the newest group
//! cycle every member has committed; a group cycle some member lacks (not committed yet,
//! pruned, or a switch made while that member was stopped) is refused, naming those VMs:
//! writing the others alone would give a state of the group that never existed.
//!
//! As for one VM, every output is verified against its point's digest where it has one,
//! and nothing is published unless every disk of every member was written.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

use super::failover::{write_disk, DiskOut, PointSel};
use super::{Classed, Context};
use crate::jobs::{Job, JobNow};
use crate::sink::vm_points::{self, VmPoint};
use crate::sink::{DiskKey, ReplicaStore};
use vdrep_proto::wire::JobKind;

/// One member VM's disks written at the group point.
#[derive(Serialize, Debug, Clone)]
pub struct VmOut {
    /// The VM.
    pub vm: String,
    /// Its VM point (the VM cycle) of the group switch.
    pub point: u64,
    /// Its disks.
    pub disks: Vec<DiskOut>,
}

/// What a group failover wrote.
#[derive(Serialize, Debug, Clone)]
pub struct GroupOut {
    /// The group.
    pub group: String,
    /// The group switch written.
    pub group_cycle: u64,
    /// The switch instant (Unix milliseconds), the same for every member.
    pub switch_unix_ms: u64,
    /// Every member.
    pub vms: Vec<VmOut>,
}

/// The points of `group` of every VM in `store` that has any, by VM.
pub fn members(
    store: &dyn ReplicaStore,
    group: &str,
) -> anyhow::Result<BTreeMap<String, Vec<VmPoint>>> {
    let mut vms: Vec<String> = store
        .list_disks(None)
        .classed()?
        .into_iter()
        .map(|k| k.vm)
        .collect();
    vms.dedup();
    let mut out = BTreeMap::new();
    for vm in vms {
        if out.contains_key(&vm) {
            continue;
        }
        let pts: Vec<VmPoint> = vm_points::list(store, &vm)
            .classed()?
            .into_iter()
            .filter(|p| p.group.as_deref() == Some(group) && p.group_cycle.is_some())
            .collect();
        if !pts.is_empty() {
            out.insert(vm, pts);
        }
    }
    Ok(out)
}

/// The group cycle to write: the one asked for, which every member must have, or the
/// newest that every member has.
pub fn choose(
    group: &str,
    members: &BTreeMap<String, Vec<VmPoint>>,
    sel: PointSel,
) -> anyhow::Result<u64> {
    let cycles =
        |pts: &[VmPoint]| -> Vec<u64> { pts.iter().filter_map(|p| p.group_cycle).collect() };
    let held = |pts: &[VmPoint]| {
        let c = cycles(pts);
        match (c.first(), c.last()) {
            (Some(a), Some(b)) => format!("group cycles {a}..={b}"),
            _ => "none".to_string(),
        }
    };
    if members.is_empty() {
        bail!("the store holds no recovery point of consistency group {group} (see `vdrep points --vm VM --json`: each point's `group`)");
    }
    match sel {
        PointSel::Id(gc) => {
            let lacking: Vec<String> = members
                .iter()
                .filter(|(_, pts)| !cycles(pts).contains(&gc))
                .map(|(vm, pts)| format!("{vm} (has {})", held(pts)))
                .collect();
            if !lacking.is_empty() {
                bail!(
                    "group point {gc} of consistency group {group} is missing for VMs {}: no state of the whole group exists there; choose a group cycle every member has (`latest`)",
                    lacking.join(", ")
                );
            }
            Ok(gc)
        }
        PointSel::Latest => {
            let mut it = members.values();
            let first = it.next().map(|p| cycles(p)).unwrap_or_default();
            let rest: Vec<Vec<u64>> = it.map(|p| cycles(p)).collect();
            match first
                .iter()
                .rev()
                .find(|c| rest.iter().all(|r| r.contains(c)))
            {
                Some(c) => Ok(*c),
                None => {
                    let what: Vec<String> = members
                        .iter()
                        .map(|(vm, pts)| format!("{vm}: {}", held(pts)))
                        .collect();
                    bail!(
                        "consistency group {group} has no group point that every member holds ({})",
                        what.join("; ")
                    )
                }
            }
        }
    }
}

/// Writes every member of `group` at the chosen group point into `out/VM/NAME.vhd`; a
/// failure leaves no output. Each member VM's part is a test-failover job recorded in the
/// store beside its replicas, as a failover of that VM alone is.
pub fn materialise(
    store: &dyn ReplicaStore,
    group: &str,
    sel: PointSel,
    out: &Path,
) -> anyhow::Result<GroupOut> {
    let members = members(store, group)?;
    let mut jobs: Vec<Job> = members
        .keys()
        .map(|vm| {
            let mut j = Job::start(JobKind::TestFailover, vm);
            j.plan(&[STEP_CHOOSE, STEP_WRITE, STEP_PUBLISH]);
            j
        })
        .collect();
    for j in &jobs {
        record(store, j);
    }
    let res = write_group(store, group, &members, sel, out, &mut jobs);
    for j in &mut jobs {
        match &res {
            Ok(_) => j.succeed(),
            Err(e) => j.fail(
                &super::one_line(e),
                super::error::recovery(e).is_transient(),
            ),
        }
        record(store, j);
    }
    res
}

const STEP_CHOOSE: &str = "choose group point";
const STEP_WRITE: &str = "write and verify the VM's disks";
const STEP_PUBLISH: &str = "publish outputs";

/// Records a job; a store that cannot is only a warning (the output is what was asked for).
fn record(store: &dyn ReplicaStore, job: &Job) {
    if let Err(e) = store.record_job(job) {
        tracing::warn!(error = %e, job = %job.id, "the test-failover job was not recorded");
    }
}

/// Chooses the group point and writes every member (staged, then renamed once all are
/// verified); `jobs` follow the members in order.
fn write_group(
    store: &dyn ReplicaStore,
    group: &str,
    members: &BTreeMap<String, Vec<VmPoint>>,
    sel: PointSel,
    out: &Path,
    jobs: &mut [Job],
) -> anyhow::Result<GroupOut> {
    jobs.iter_mut().for_each(|j| j.begin(STEP_CHOOSE));
    let gc = choose(group, members, sel)?;
    let mut staged: Vec<(tempfile::NamedTempFile, PathBuf)> = Vec::new();
    let mut vms = Vec::new();
    let mut switch_unix_ms = 0;
    for ((vm, pts), job) in members.iter().zip(jobs.iter_mut()) {
        let Some(point) = pts.iter().find(|p| p.group_cycle == Some(gc)) else {
            bail!("{vm}: group point {gc} vanished");
        };
        job.step_ok(
            STEP_CHOOSE,
            &format!(
                "group {group} point {gc} ({sel:?} asked): VM point {}",
                point.vm_cycle
            ),
        );
        job.begin(STEP_WRITE);
        switch_unix_ms = point.switch_unix_ms;
        let dir = out.join(vm);
        fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
        let mut disks = Vec::new();
        for part in &point.disks {
            let key = DiskKey::new(vm, &part.disk).classed()?;
            let r = store.point_reader(&key).classed()?;
            let listed = r.points().classed()?;
            let Some(rp) = listed.iter().find(|p| p.cycle == part.cycle) else {
                bail!(
                    "{}: recovery point {} of group point {gc} is gone (pruned?)",
                    r.describe(),
                    part.cycle
                );
            };
            let dst = dir.join(format!("{}.vhd", part.disk));
            let (tmp, written) = write_disk(r.as_ref(), rp, &dst)?;
            staged.push((tmp, dst));
            disks.push(written);
        }
        let names: Vec<&str> = point.disks.iter().map(|p| p.disk.as_str()).collect();
        job.step_ok(STEP_WRITE, &names.join(", "));
        vms.push(VmOut {
            vm: vm.clone(),
            point: point.vm_cycle,
            disks,
        });
    }
    jobs.iter_mut().for_each(|j| j.begin(STEP_PUBLISH));
    for (tmp, dst) in staged {
        tmp.persist(&dst)
            .map_err(|e| e.error)
            .with_context(|| format!("{}: cannot replace the destination", dst.display()))?;
    }
    for (v, job) in vms.iter().zip(jobs.iter_mut()) {
        let dir = out.join(&v.vm);
        let _ = File::open(&dir).and_then(|f| f.sync_all());
        job.step_ok(
            STEP_PUBLISH,
            &format!("{} disks in {}", v.disks.len(), dir.display()),
        );
    }
    Ok(GroupOut {
        group: group.to_string(),
        group_cycle: gc,
        switch_unix_ms,
        vms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::vm_points::PointPart;

    fn point(vm_cycle: u64, gc: Option<u64>) -> VmPoint {
        VmPoint {
            vm_cycle,
            switch_unix_ms: 1000 * vm_cycle,
            committed_unix: vm_cycle,
            group: gc.map(|_| "erp".to_string()),
            group_cycle: gc,
            consistent: true,
            disks: vec![PointPart::new("os", vm_cycle, 0, &[0; 32])],
        }
    }

    #[test]
    fn latest_is_the_newest_group_cycle_every_member_has_and_a_lacking_member_is_named() {
        let mut m = BTreeMap::new();
        m.insert(
            "db".to_string(),
            vec![point(4, Some(1)), point(5, Some(2)), point(6, Some(3))],
        );
        m.insert(
            "app".to_string(),
            vec![point(1, Some(1)), point(2, Some(2))],
        );
        assert_eq!(choose("erp", &m, PointSel::Latest).unwrap(), 2);
        assert_eq!(choose("erp", &m, PointSel::Id(1)).unwrap(), 1);
        let e = choose("erp", &m, PointSel::Id(3)).unwrap_err().to_string();
        assert!(
            e.contains("group point 3 of consistency group erp is missing for VMs app (has group cycles 1..=2)"),
            "{e}"
        );
        m.insert("web".to_string(), vec![point(9, Some(7))]);
        let e = choose("erp", &m, PointSel::Latest).unwrap_err().to_string();
        assert!(e.contains("no group point that every member holds"), "{e}");
        assert!(choose("erp", &BTreeMap::new(), PointSel::Latest).is_err());
    }
}

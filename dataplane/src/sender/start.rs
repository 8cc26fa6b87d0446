//! What a run sets up before its first connection: the disks opened (enable protection's
//! first checks), the bandwidth policy in force said once, the compression controller
//! started, and every disk on the status board.

use std::path::Path;
use std::sync::Arc;

use tracing::info;

use super::jobs::SenderJobs;
use super::{
    disk_names, local_control, Board, DiskJob, Mode, SendError, SendOptions, Shared, VmSpec,
};
use crate::disk::{self as vdisk, OpenOptions};
use crate::throttle::BandwidthControl;

/// Opens every disk of `vms`, in order, recording each VM's checks in its job.
pub(super) fn open_disks(vms: &[VmSpec], sj: &SenderJobs) -> Result<Vec<Vec<DiskJob>>, SendError> {
    // Prerequisites (enable protection's first checks): every disk opens, its format is
    // supported, it has 512-byte sectors.
    let mut jobs: Vec<Vec<DiskJob>> = Vec::new();
    for vm in vms {
        sj.start_vm(&vm.name);
        let names = disk_names(&vm.disks);
        let mut v = Vec::new();
        for (p, name) in vm.disks.iter().zip(names) {
            let d = vdisk::open(p, OpenOptions::default()).inspect_err(|e| {
                sj.disk_failed(&vm.name, e);
            })?;
            v.push(DiskJob {
                vm: vm.name.clone(),
                name,
                disk: Arc::from(d),
                progress: Default::default(),
            });
        }
        sj.disks_checked(&vm.name, &v);
        jobs.push(v);
    }
    Ok(jobs)
}

/// Applies the schedule a sidecar pushed (with `--control`) and says which policy wins.
pub(super) fn announce_bandwidth(
    sh: &Shared,
    ctl: &BandwidthControl,
    opts: &SendOptions,
    control: Option<&Path>,
    state: &Path,
) {
    // Which bandwidth policy wins, said once. With --control (a sidecar manages this
    // sender) the schedule it pushed to an earlier run, kept in STATE/bandwidth.json, wins
    // over the flags, which win over the config; without --control the file is never read:
    // a file left behind must not silently override the command line.
    let pushed_file = state.join(local_control::SCHEDULE_FILE);
    let pushed = match &control {
        Some(_) => local_control::load_schedule(state),
        None => None,
    };
    match pushed {
        Some(p) => {
            info!(policy = %p.policy(), source = "pushed schedule", file = %pushed_file.display(),
                  "bandwidth: the schedule the sidecar pushed wins over flags and config (delete the file to return to them)");
            local_control::apply_schedule(sh, p);
        }
        None if control.is_some() => {
            info!(policy = %ctl.policy(), source = opts.bandwidth_source, file = %pushed_file.display(),
                  "bandwidth: no pushed schedule yet; flags win over config")
        }
        None => {
            info!(policy = %ctl.policy(), source = opts.bandwidth_source, file = %pushed_file.display(),
                      "bandwidth: flags win over config; the pushed-schedule file is not read without --control")
        }
    }
}

/// Starts the compression controller (`pipeline::run_controller`) for the whole run; it
/// runs until the returned task is aborted. Under a CPU budget the budget chooses the level
/// (`cpu::CpuBudget::steer`), without one the controller climbs while the host has idle CPU.
pub(super) fn spawn_controller(sh: &Shared) -> tokio::task::JoinHandle<()> {
    let (level, prepared, budget) = (sh.level.clone(), sh.prepared.clone(), sh.cpu.clone());
    tokio::spawn(crate::pipeline::run_controller(
        level,
        prepared,
        move |bottleneck| match &budget {
            Some(b) => {
                b.steer(match bottleneck {
                    1 => crate::cpu::Bound::Link,
                    -1 => crate::cpu::Bound::Cpu,
                    _ => crate::cpu::Bound::Neither,
                });
                true
            }
            None => false,
        },
    ))
}

/// Puts every disk on the status board (with its change tracker when protecting).
pub(super) fn register_disks(board: &Board, jobs: &[Vec<DiskJob>], mode: &Mode) {
    match mode {
        Mode::OneShot(_) => {
            for j in jobs.iter().flatten() {
                board.add_disk(j, None);
            }
        }
        Mode::Protect(set) => {
            for e in set.list() {
                for d in e.disks.iter() {
                    if let Ok(g) = d.lock() {
                        board.add_disk(&g.job, Some(g.tracker.clone()));
                    }
                }
            }
        }
    }
}

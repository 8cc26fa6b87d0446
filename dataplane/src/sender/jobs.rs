//! The sender's jobs (DESIGN.md §1): enable protection (prerequisite checks), initial
//! replication (a step per disk) and finalize protection, per VM, kept across reconnects
//! and reported whole over the VM's control stream whenever they change. A run that ends
//! in an error fails the job that was running and keeps it in the state folder
//! ([`PendingJobs`]); the next connection reports it first.
//!
//! Every job is also written to the state folder before it is reported, and forgotten once
//! the receiver recorded it finished: a sender killed while a job runs leaves it there, and
//! the next run reports it failed ("interrupted") instead of leaving it running forever.
//!
//! Reporting never stops replication: a store that cannot record jobs (or a lost report) is
//! logged, and the next report of the same job supersedes it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use tracing::warn;
use vdrep_proto::wire::{Control, ErrorClass, JobKind};

use super::disk::{DiskJob, Opened};
use super::pending::PendingJobs;
use super::{ControlStream, SendError};
use crate::jobs::{Job, JobNow};

/// Enable protection: every source disk opens.
pub const STEP_READABLE: &str = "disks readable";
/// Enable protection: every format is supported (and 512-byte sectors).
pub const STEP_FORMATS: &str = "formats supported";
/// Enable protection: the receiver answers, accepts our certificate and authorises the VM.
pub const STEP_RECEIVER: &str = "receiver reachable and authorised";
/// Enable protection: the store has room for the disks' allocated bytes.
pub const STEP_CAPACITY: &str = "target capacity";
/// Finalize protection: cycle 0 is committed for every disk.
pub const STEP_POINTS: &str = "initial recovery points committed";
/// Finalize protection (continuous protection only): change logs are being written.
pub const STEP_TRACKING: &str = "change tracking active";

fn copy_step(disk: &str) -> String {
    format!("copy {disk}")
}

/// The jobs of one VM in this run.
struct VmJobs {
    enable: Job,
    initial: Option<Job>,
    finalize: Option<Job>,
    /// Allocated bytes per disk (the capacity estimate).
    allocated: BTreeMap<String, u64>,
}

/// Every VM's jobs in this run, and the state folder's pending jobs.
pub struct SenderJobs {
    vms: Mutex<BTreeMap<String, VmJobs>>,
    pending: PendingJobs,
    /// Ids of the jobs this process started (the others in the state folder are from
    /// earlier runs).
    own: Mutex<std::collections::HashSet<String>>,
}

impl SenderJobs {
    /// Jobs kept in the state folder `state` when they cannot be reported.
    pub fn new(state: &Path) -> SenderJobs {
        SenderJobs {
            vms: Mutex::new(BTreeMap::new()),
            pending: PendingJobs::new(state),
            own: Mutex::new(Default::default()),
        }
    }

    fn mine(&self, job: &Job) {
        if let Ok(mut o) = self.own.lock() {
            o.insert(job.id.clone());
        }
    }

    fn is_mine(&self, id: &str) -> bool {
        self.own.lock().map(|o| o.contains(id)).unwrap_or(false)
    }

    /// Writes a job to the state folder (before reporting it).
    fn persist(&self, job: &Job) {
        if let Err(e) = self.pending.save(job) {
            warn!(error = %e, job = %job.id, "cannot keep the job in the state folder");
        }
    }

    fn with<R>(&self, vm: &str, f: impl FnOnce(&mut VmJobs) -> R) -> Option<R> {
        let mut g = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        g.get_mut(vm).map(f)
    }

    /// Every VM's enable-protection job as it stands (the control channel's status: the
    /// sidecar follows the prerequisite checks through it).
    pub fn enable_jobs(&self) -> Vec<Job> {
        let g = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        g.values().map(|v| v.enable.clone()).collect()
    }

    /// Starts a VM's enable-protection job (its steps queued, the disk check running).
    pub fn start_vm(&self, vm: &str) {
        let mut enable = Job::start(JobKind::EnableProtection, vm);
        self.mine(&enable);
        enable.plan(&[STEP_READABLE, STEP_FORMATS, STEP_RECEIVER, STEP_CAPACITY]);
        enable.begin(STEP_READABLE);
        let mut g = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(
            vm.to_string(),
            VmJobs {
                enable,
                initial: None,
                finalize: None,
                allocated: BTreeMap::new(),
            },
        );
    }

    /// The disks opened: readable and supported; the receiver check begins.
    pub fn disks_checked(&self, vm: &str, disks: &[DiskJob]) {
        let mut allocated = BTreeMap::new();
        let mut readable = Vec::new();
        let mut formats = Vec::new();
        for d in disks {
            let info = d.disk.info();
            let alloc: u64 = d
                .disk
                .extents_in(0, info.virtual_size)
                .map(|v| {
                    v.iter()
                        .filter(|e| e.kind == crate::disk::ExtentKind::Data)
                        .map(|e| e.length)
                        .sum()
                })
                .unwrap_or(info.virtual_size);
            allocated.insert(d.name.clone(), alloc);
            readable.push(format!("{} ({})", d.name, info.path.display()));
            formats.push(format!(
                "{}: {} of {} bytes, {}-byte sectors, {} bytes allocated",
                d.name,
                info.format.as_str(),
                info.virtual_size,
                info.logical_sector_size,
                alloc
            ));
        }
        self.with(vm, |v| {
            v.enable.step_ok(STEP_READABLE, &readable.join(", "));
            v.enable.step_ok(STEP_FORMATS, &formats.join("; "));
            v.enable.begin(STEP_RECEIVER);
            v.allocated = allocated;
        });
    }

    /// Starts a qemu VM's enable-protection job: its local checks are qemu's
    /// ([`super::qemu::checks`]: QMP reachable, disks found, bitmaps supported), then the
    /// receiver's as for any VM.
    pub fn start_qemu_vm(&self, vm: &str) {
        use super::qemu::checks::STEPS;
        let mut enable = Job::start(JobKind::EnableProtection, vm);
        self.mine(&enable);
        enable.plan(&[STEPS[0], STEPS[1], STEPS[2], STEP_RECEIVER, STEP_CAPACITY]);
        enable.begin(STEPS[0]);
        let mut g = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(
            vm.to_string(),
            VmJobs {
                enable,
                initial: None,
                finalize: None,
                allocated: BTreeMap::new(),
            },
        );
    }

    /// A qemu VM's checks passed (`details` in [`super::qemu::checks::STEPS`] order); the
    /// receiver check begins. The capacity estimate is each disk's full size: what qemu
    /// allocates is not known without reading the view.
    pub fn qemu_checked(&self, vm: &str, details: &[String; 3], disks: &[DiskJob]) {
        use super::qemu::checks::STEPS;
        let allocated = disks
            .iter()
            .map(|d| (d.name.clone(), d.disk.info().virtual_size))
            .collect();
        self.with(vm, |v| {
            for (step, detail) in STEPS.iter().zip(details) {
                v.enable.step_ok(step, detail);
            }
            v.enable.begin(STEP_RECEIVER);
            v.allocated = allocated;
        });
    }

    /// A qemu VM's check failed: the checks before it passed, it fails with the job (kept in
    /// the state folder; there is no connection yet).
    pub fn qemu_check_failed(&self, vm: &str, e: &super::qemu::checks::CheckFailed) {
        use super::qemu::checks::STEPS;
        let mut g = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        let Some(v) = g.get_mut(vm) else { return };
        for step in STEPS.iter().take_while(|s| **s != e.step) {
            v.enable.step_ok(step, "passed");
        }
        v.enable.step_failed(e.step, &e.message);
        v.enable.fail(&e.to_string(), e.transient);
        if let Err(err) = self.pending.save(&v.enable) {
            warn!(error = %err, job = %v.enable.id, "cannot keep the failed job in the state folder");
        }
    }

    /// A disk did not open: the step it belongs to fails with the job (kept in the state
    /// folder; there is no connection yet).
    pub fn disk_failed(&self, vm: &str, e: &crate::disk::DiskError) {
        let io = matches!(e, crate::disk::DiskError::Io { .. });
        self.with(vm, |v| {
            if io {
                v.enable.step_failed(STEP_READABLE, &e.to_string());
            } else {
                v.enable.step_ok(STEP_READABLE, "the image opens");
                v.enable.begin(STEP_FORMATS);
                v.enable.step_failed(STEP_FORMATS, &e.to_string());
            }
        });
    }

    /// The run ends with `e`: each VM's running job fails with it and is kept in the state
    /// folder until a connection reports it.
    pub fn fail_all(&self, e: &SendError) {
        let mut g = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        for v in g.values_mut() {
            self.fail_running(v, e);
        }
    }

    /// VM `vm` alone is refused with `e` (the others go on): its running job fails with it,
    /// kept in the state folder like [`SenderJobs::fail_all`]'s, so the sidecar's job of it
    /// ends too.
    pub fn fail_vm(&self, vm: &str, e: &SendError) {
        let mut g = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.get_mut(vm) {
            self.fail_running(v, e);
        }
    }

    /// Fails the VM's job that is still running (enable, else initial, else finalize).
    fn fail_running(&self, v: &mut VmJobs, e: &SendError) {
        let job = if !v.enable.state.is_final() {
            Some(&mut v.enable)
        } else if v.initial.as_ref().is_some_and(|j| !j.state.is_final()) {
            v.initial.as_mut()
        } else {
            v.finalize.as_mut().filter(|j| !j.state.is_final())
        };
        if let Some(job) = job {
            job.fail(&e.to_string(), crate::error::Classify::is_transient(e));
            if let Err(err) = self.pending.save(job) {
                warn!(error = %err, job = %job.id, "cannot keep the failed job in the state folder");
            }
        }
    }

    /// Reports the state folder's jobs of `vm` left by earlier runs, forgetting each once
    /// recorded; one still running there was interrupted (that sender process ended). A
    /// job of this process that ended there unreported (its VM failed before it connected:
    /// a check of an added VM at start, a VM refused alone) is reported now too, once, and
    /// not left for the next process; this process's running jobs are its own to report.
    async fn flush_pending(&self, ctrl: &mut ControlStream, vm: &str) {
        let list = match self.pending.list(Some(vm)) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot read pending jobs");
                return;
            }
        };
        for mut job in list {
            if self.is_mine(&job.id) && !job.state.is_final() {
                continue;
            }
            if !job.state.is_final() {
                job.fail(
                    "interrupted: the sender process ended while this job ran (killed, crashed \
                     or stopped); a later run took over",
                    true,
                );
                self.persist(&job);
            }
            if report(ctrl, &job).await {
                if let Err(e) = self.pending.remove(vm, &job.id) {
                    warn!(error = %e, job = %job.id, "cannot forget a reported job");
                }
            }
        }
    }

    async fn report_with(
        &self,
        ctrl: &mut ControlStream,
        vm: &str,
        pick: impl FnOnce(&VmJobs) -> Option<&Job>,
    ) {
        let job = self.with(vm, |v| pick(v).cloned()).flatten();
        let Some(job) = job else { return };
        // Durable on this side first: a crash from here on leaves the job to the next run.
        self.persist(&job);
        if report(ctrl, &job).await && job.state.is_final() {
            if let Err(e) = self.pending.remove(vm, &job.id) {
                warn!(error = %e, job = %job.id, "cannot forget a reported job");
            }
        }
    }

    /// After the VM's disks were opened at the receiver: reports pending jobs, finishes the
    /// prerequisite checks (receiver, capacity) and starts the initial-replication job for
    /// the disks that need a copy. A store without room fails the check as a full target
    /// (recoverable: space may be freed).
    pub async fn connected(
        &self,
        ctrl: &mut ControlStream,
        vm: &str,
        opened: &[(DiskJob, Opened, bool)],
        identity: &str,
    ) -> Result<(), SendError> {
        self.flush_pending(ctrl, vm).await;
        let enabled = self.with(vm, |v| v.enable.state.is_final()).unwrap_or(true);
        if !enabled {
            let detail = format!(
                "{} accepted sender {identity} and opened {} disk(s) of VM {vm}",
                ctrl.peer(),
                opened.len()
            );
            let needed: u64 = self
                .with(vm, |v| {
                    v.enable.step_ok(STEP_RECEIVER, &detail);
                    v.enable.begin(STEP_CAPACITY);
                    opened
                        .iter()
                        .filter(|(_, _, copy)| *copy)
                        .map(|(j, o, _)| {
                            let done = o.resume.resumed;
                            v.allocated
                                .get(&j.name)
                                .copied()
                                .unwrap_or(0)
                                .saturating_sub(done)
                        })
                        .sum()
                })
                .unwrap_or(0);
            let req = ctrl.req();
            let ans = ctrl
                .call(Control::QueryCapacity {
                    req,
                    vm: vm.to_string(),
                    needed,
                })
                .await?;
            let Control::Capacity { available, .. } = ans else {
                return Err(ctrl.unexpected(ans));
            };
            if available != u64::MAX && available < needed {
                let message = format!(
                    "VM {vm} needs about {needed} bytes but the store has {available} bytes free: free space at the receiver"
                );
                self.with(vm, |v| v.enable.step_failed(STEP_CAPACITY, &message));
                return Err(SendError::Remote {
                    peer: ctrl.peer().to_string(),
                    class: ErrorClass::TargetFull,
                    message,
                });
            }
            let detail = if available == u64::MAX {
                format!("needs about {needed} bytes; the store does not report its free space")
            } else {
                format!("needs about {needed} bytes; {available} bytes free")
            };
            self.with(vm, |v| {
                v.enable.step_ok(STEP_CAPACITY, &detail);
                v.enable.succeed();
            });
            self.report_with(ctrl, vm, |v| Some(&v.enable)).await;
        }
        let copies: Vec<String> = opened
            .iter()
            .filter(|(_, _, copy)| *copy)
            .map(|(j, _, _)| copy_step(&j.name))
            .collect();
        let started = self
            .with(vm, |v| {
                if copies.is_empty() || v.initial.is_some() {
                    return false;
                }
                let mut j = Job::start(JobKind::InitialReplication, vm);
                self.mine(&j);
                let names: Vec<&str> = copies.iter().map(String::as_str).collect();
                j.plan(&names);
                v.initial = Some(j);
                true
            })
            .unwrap_or(false);
        if started {
            self.report_with(ctrl, vm, |v| v.initial.as_ref()).await;
        }
        Ok(())
    }

    /// A disk's initial copy starts.
    pub async fn copy_started(&self, ctrl: &mut ControlStream, vm: &str, disk: &str) {
        self.with(vm, |v| {
            if let Some(j) = &mut v.initial {
                j.begin(&copy_step(disk));
            }
        });
        self.report_with(ctrl, vm, |v| v.initial.as_ref()).await;
    }

    /// A disk's initial copy of `bytes` is committed (recovery point 0) after `seconds`,
    /// `resumed` of its bytes kept from an earlier connection: the step's detail says so,
    /// in the same words whichever source copied it.
    pub async fn copy_done(
        &self,
        ctrl: &mut ControlStream,
        vm: &str,
        disk: &str,
        (bytes, seconds, resumed): (u64, f64, u64),
    ) {
        let detail = format!(
            "{bytes} bytes committed as recovery point 0 in {seconds:.1} s ({resumed} bytes resumed)"
        );
        self.with(vm, |v| {
            if let Some(j) = &mut v.initial {
                j.step_ok(&copy_step(disk), &detail);
            }
        });
        self.report_with(ctrl, vm, |v| v.initial.as_ref()).await;
    }

    /// Every disk is committed: the initial replication succeeds and protection is
    /// finalized (`tracking`: the change logs, under continuous protection).
    pub async fn finalize(
        &self,
        ctrl: &mut ControlStream,
        vm: &str,
        disks: &[String],
        tracking: Option<String>,
    ) {
        let go = self
            .with(vm, |v| {
                let Some(j) = &mut v.initial else {
                    return false;
                };
                if j.state.is_final() {
                    return false;
                }
                j.succeed();
                let mut f = Job::start(JobKind::FinalizeProtection, vm);
                self.mine(&f);
                f.step_ok(
                    STEP_POINTS,
                    &format!("recovery point 0 of {}", disks.join(", ")),
                );
                if let Some(t) = &tracking {
                    f.step_ok(STEP_TRACKING, t);
                }
                f.succeed();
                v.finalize = Some(f);
                true
            })
            .unwrap_or(false);
        if go {
            self.report_with(ctrl, vm, |v| v.initial.as_ref()).await;
            self.report_with(ctrl, vm, |v| v.finalize.as_ref()).await;
        }
    }
}

/// Reports one job; true once the receiver recorded it.
async fn report(ctrl: &mut ControlStream, job: &Job) -> bool {
    let req = ctrl.req();
    match ctrl
        .call(Control::ReportJob {
            req,
            job: job.clone(),
        })
        .await
    {
        Ok(Control::JobRecorded { .. }) => true,
        Ok(other) => {
            warn!(job = %job.id, answer = ?other, "unexpected answer to a job report");
            false
        }
        Err(e) => {
            warn!(job = %job.id, error = %e, "the receiver did not record the job; replication goes on");
            false
        }
    }
}

//! The VMs a protecting sender replicates, a set that grows at run time: the sidecar asks
//! over the local control channel ([`super::local_control::Request::Protect`]) to protect a
//! VM the command line does not name, so enabling protection needs no restart.
//!
//! A request runs enable protection's local checks at once (every disk path is absolute and
//! not protected yet, every disk opens and its format is supported) and answers with the
//! refusal when one fails. Otherwise change tracking starts, the VM is recorded in
//! `STATE/vms.json` (a restarted sender keeps protecting it), and the attempt loop is woken:
//! it runs the VM on the current connection, where the receiver's checks (reachable,
//! authorised for that VM, capacity), the initial copy and then cycles at the VM's interval
//! follow as for any VM (the sender's jobs track each step).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::disk::{DiskJob, Shared};
use super::protect::{self, Policy, Protected, Schedule};
use super::SendError;
use crate::disk::{self as vdisk, OpenOptions};

/// One protected VM: its disks (shared across reconnects), switch schedule and policy.
pub struct VmEntry {
    /// VM name.
    pub name: String,
    /// Source images, in disk order.
    pub paths: Vec<PathBuf>,
    /// The disks.
    pub disks: Arc<Vec<Arc<Mutex<Protected>>>>,
    /// When its logs switch.
    pub sched: Arc<Schedule>,
    /// Its cycle policy.
    pub policy: Policy,
    /// Set for a qemu VM: its changes come from qemu (`sender::qemu`), not from change
    /// logs, and `disks` is empty.
    pub qemu: Option<Arc<super::qemu::QemuVm>>,
}

/// A VM added at run time, as `STATE/vms.json` keeps it (and the control channel asks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedVm {
    /// VM name.
    pub vm: String,
    /// Absolute paths of its disk images, in disk order.
    pub disks: Vec<PathBuf>,
    /// Seconds between cycles.
    pub interval_seconds: u64,
    /// RPO above which the VM warns (`None`: twice the interval).
    #[serde(default)]
    pub rpo_threshold_seconds: Option<u64>,
    /// Recovery-point retention in hours (`None`: the sender's `--retention`).
    #[serde(default)]
    pub retention_hours: Option<u32>,
    /// Start of the initial replication, Unix seconds (`None`: at once).
    #[serde(default)]
    pub initial_replication_unix: Option<u64>,
    /// The consistency group the VM switches with (`None`: alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A running qemu VM's QMP socket (then `disks` is empty: the disks are qemu's, see
    /// [`super::qemu`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp: Option<PathBuf>,
    /// With `qmp`: the nodes to protect, `NODE[=NAME]` as `send --drive` takes them (empty:
    /// the guest's writable block devices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<String>,
    /// With `qmp`: the NBD server socket the VM already runs (`send --nbd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<PathBuf>,
}

/// The qemu VM an added VM with `qmp` names.
pub fn qemu_spec(a: &AddedVm) -> Result<super::qemu::QemuSpec, String> {
    let qmp = a
        .qmp
        .clone()
        .ok_or_else(|| format!("VM {} names no QMP socket", a.vm))?;
    let drives = a
        .drives
        .iter()
        .map(|d| d.parse::<super::qemu::Drive>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(super::qemu::QemuSpec {
        vm: a.vm.clone(),
        qmp,
        drives,
        nbd: a.nbd.clone(),
        group: a.group.clone(),
    })
}

/// Every protected VM of the run.
pub struct VmSet {
    list: Mutex<Vec<Arc<VmEntry>>>,
    /// Additions serialise here (disks open while it is held, not the list).
    adding: Mutex<()>,
    /// The number of VMs, for the attempt loop to notice additions.
    grew: tokio::sync::watch::Sender<usize>,
    /// Retention and cycle limit of added VMs (the command line's).
    base: Policy,
    state: PathBuf,
    /// The consistency groups of the VMs.
    groups: super::group::Groups,
    /// VMs whose change source failed alone: retried alone, or given up.
    pub retries: super::vm_retry::VmRetries,
}

/// The file of added VMs in the state folder.
pub const FILE: &str = "vms.json";

impl VmSet {
    /// An empty set; added VMs take `base`'s retention and are kept in `state`.
    pub fn new(base: Policy, state: &Path) -> Self {
        VmSet {
            list: Mutex::new(Vec::new()),
            adding: Mutex::new(()),
            grew: tokio::sync::watch::Sender::new(0),
            base,
            state: state.to_path_buf(),
            groups: Default::default(),
            retries: Default::default(),
        }
    }

    /// The consistency groups.
    pub fn groups(&self) -> &super::group::Groups {
        &self.groups
    }

    /// `policy` with `vm`'s consistency group, which `vm` (`qemu`: a qemu VM) joins
    /// (refused when the group holds 16 VMs already, switches at another interval, or
    /// holds a qemu VM already and `vm` is one).
    pub fn with_group(
        &self,
        vm: &str,
        group: Option<&str>,
        qemu: bool,
        policy: Policy,
    ) -> Result<Policy, String> {
        let group = match group {
            Some(g) => Some(
                self.groups
                    .join(g, vm, qemu, policy.interval, &self.state)?,
            ),
            None => None,
        };
        Ok(Policy { group, ..policy })
    }

    /// Adds a VM (at start, or after a request was checked).
    pub fn push(&self, e: VmEntry) {
        let n = self
            .list
            .lock()
            .map(|mut l| {
                l.push(Arc::new(e));
                l.len()
            })
            .unwrap_or(0);
        self.grew.send_replace(n);
    }

    /// Every VM now.
    pub fn list(&self) -> Vec<Arc<VmEntry>> {
        self.list.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Changes whenever a VM is added.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<usize> {
        self.grew.subscribe()
    }

    /// The policy of an added VM.
    pub fn policy_for(&self, a: &AddedVm) -> Policy {
        let base = self.base.clone();
        Policy {
            interval: Duration::from_secs(a.interval_seconds),
            retention: a
                .retention_hours
                .map(|h| Duration::from_secs(u64::from(h.min(24)) * 3600))
                .unwrap_or(base.retention),
            initial_at: a
                .initial_replication_unix
                .and_then(|t| jiff::Timestamp::from_second(i64::try_from(t).ok()?).ok()),
            ..base
        }
    }
}

/// The VMs added at run time by earlier runs (none when the file does not exist).
pub fn load(state: &Path) -> Result<Vec<AddedVm>, SendError> {
    let path = state.join(FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            SendError::Internal(format!(
                "{}: unreadable list of added VMs ({e}); fix or remove it",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SendError::Internal(format!("{}: {e}", path.display()))),
    }
}

/// The added VMs a starting sender protects: those of `STATE/vms.json` the command line
/// does not name itself (it wins) whose disks still open (a disk gone stops that VM only,
/// not the whole sender).
pub fn load_for_start(state: &Path, flagged: &[super::VmSpec]) -> Result<Vec<AddedVm>, SendError> {
    Ok(load(state)?
        .into_iter()
        .filter(|a| {
            if flagged.iter().any(|v| v.name == a.vm) {
                warn!(vm = %a.vm, "VM added over the control channel is also on the command line; the command line wins");
                return false;
            }
            // A qemu VM's checks run when it is opened (`qemu::add_vms`).
            match a
                .disks
                .iter()
                .find_map(|p| vdisk::open(p, OpenOptions::default()).err().map(|e| (p, e)))
            {
                Some((p, e)) => {
                    tracing::error!(vm = %a.vm, disk = %p.display(), error = %e,
                        "a VM enabled through the control channel cannot be protected: its disk does not open; enable it again once fixed");
                    false
                }
                None => true,
            }
        })
        .collect())
}

/// Replaces `STATE/vms.json` durably (write, fsync, rename).
fn save(state: &Path, vms: &[AddedVm]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(state)?;
    let tmp = state.join(".vms.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(vms).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, state.join(FILE))?;
    if let Ok(d) = std::fs::File::open(state) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The protected disks of one VM, change tracking started.
pub fn protected_disks(
    jobs: &[DiskJob],
    paths: &[PathBuf],
    force_resync: bool,
) -> Result<Arc<Vec<Arc<Mutex<Protected>>>>, SendError> {
    let mut disks: Vec<Protected> = jobs
        .iter()
        .zip(paths)
        .map(|(j, path)| Protected {
            tracker: crate::tracking::Tracker::new(path, j.disk.info().virtual_size),
            job: j.clone(),
            committed_cycle: None,
            fresh: false,
            force_resync,
            digest_task: None,
            resync_waiting: false,
        })
        .collect();
    protect::start_tracking(&mut disks)?;
    Ok(Arc::new(
        disks.into_iter().map(|d| Arc::new(Mutex::new(d))).collect(),
    ))
}

/// Checks a qemu request's shape: no disk images, absolute sockets, valid drives and group
/// name.
fn check_qemu_request(a: &AddedVm) -> Result<(), String> {
    if !a.disks.is_empty() {
        return Err(format!(
            "VM {}: name either disk images (disks) or a running qemu VM's QMP socket (qmp), not both",
            a.vm
        ));
    }
    for (what, p) in [("qmp", &a.qmp), ("nbd", &a.nbd)] {
        if let Some(p) = p.as_ref().filter(|p| !p.is_absolute()) {
            return Err(format!(
                "{what} socket {:?} is not absolute: the sender resolves no relative paths",
                p.display().to_string()
            ));
        }
    }
    if a.drives.len() > 64 {
        return Err(format!("VM {}: at most 64 drives", a.vm));
    }
    qemu_spec(a)?;
    if let Some(g) = &a.group {
        super::group::check_name(g)?;
    }
    Ok(())
}

/// Checks a request's shape: names, absolute and distinct paths, the interval.
fn check_request(a: &AddedVm) -> Result<(), String> {
    crate::sink::validate_name("VM name", &a.vm).map_err(|e| e.to_string())?;
    if !(1..=86_400).contains(&a.interval_seconds) {
        return Err("interval_seconds ranges from 1 to 86400".into());
    }
    if a.rpo_threshold_seconds == Some(0) {
        return Err("rpo_threshold_seconds must be at least 1".into());
    }
    if a.qmp.is_some() {
        return check_qemu_request(a);
    }
    if !a.drives.is_empty() || a.nbd.is_some() {
        return Err(format!(
            "VM {}: drives and nbd name a qemu VM's nodes and NBD socket: give its QMP socket (qmp) too",
            a.vm
        ));
    }
    if a.disks.is_empty() {
        return Err(format!("VM {}: name at least one disk", a.vm));
    }
    if a.disks.len() > 64 {
        return Err(format!("VM {}: at most 64 disks", a.vm));
    }
    for (i, p) in a.disks.iter().enumerate() {
        if !p.is_absolute() {
            return Err(format!(
                "disk path {:?} is not absolute: the sender resolves no relative paths",
                p.display().to_string()
            ));
        }
        if a.disks[..i].contains(p) {
            return Err(format!("disk {} is named twice", p.display()));
        }
    }
    if !(1..=86_400).contains(&a.interval_seconds) {
        return Err("interval_seconds ranges from 1 to 86400".into());
    }
    if let Some(g) = &a.group {
        super::group::check_name(g)?;
    }
    if a.rpo_threshold_seconds == Some(0) {
        return Err("rpo_threshold_seconds must be at least 1".into());
    }
    Ok(())
}

/// What a protection request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// The VM is protected from now on; its disk names.
    Started(Vec<String>),
    /// The VM was already protected with these disks; its disk names.
    Already(Vec<String>),
}

/// A request for a VM protected with the same disks changes its interval and RPO threshold
/// (a policy change through the API); kept in `STATE/vms.json` when the VM was added there.
fn update_policy(
    sh: &Shared,
    set: &VmSet,
    e: &VmEntry,
    req: &AddedVm,
    names: &[String],
) -> Result<(), String> {
    let interval = Duration::from_secs(req.interval_seconds);
    if let Some(g) = &e.policy.group {
        if g.interval() != interval {
            return Err(format!(
                "VM {} is a member of consistency group {}: its interval stays the group's {} s (members switch together)",
                req.vm,
                g.name(),
                g.interval().as_secs_f64()
            ));
        }
    }
    // No group in the request keeps the VM's (the sidecar may not know a group the command
    // line gave); another group is refused.
    if req.group.is_some() && req.group.as_deref() != e.policy.group.as_ref().map(|g| g.name()) {
        return Err(format!(
            "VM {} is protected {}; a VM changes its consistency group only when its protection is disabled and enabled again",
            req.vm,
            match &e.policy.group {
                Some(g) => format!("in consistency group {}", g.name()),
                None => "outside any consistency group".into(),
            }
        ));
    }
    if e.sched.interval() != interval {
        info!(vm = %req.vm, interval_s = req.interval_seconds, "cycle interval changed over the control channel");
        e.sched.set_interval(interval);
    }
    let threshold = req
        .rpo_threshold_seconds
        .map(Duration::from_secs)
        .unwrap_or_else(|| crate::health::default_rpo_threshold(interval));
    sh.health.add_vm(&req.vm, names, Some(threshold));
    let req = &AddedVm {
        group: e.policy.group.as_ref().map(|g| g.name().to_string()),
        ..req.clone()
    };
    let mut kept = load(&set.state).map_err(|e| e.to_string())?;
    if let Some(k) = kept.iter_mut().find(|k| k.vm == req.vm) {
        if k != req {
            *k = req.clone();
            save(&set.state, &kept).map_err(|e| {
                format!(
                    "cannot record the VM in {}: {e}",
                    set.state.join(FILE).display()
                )
            })?;
        }
    }
    Ok(())
}

/// Handles a protection request: checks it, opens the disks (or runs a qemu VM's checks:
/// QMP reachable, disks found, bitmaps supported), starts tracking, records the VM and
/// wakes the attempt loop. The error is the refusal, said to the operator.
/// Blocks (disk images open, qemu's checks talk QMP): call it from a blocking thread.
pub fn add(sh: &Shared, set: &VmSet, req: AddedVm) -> Result<Added, String> {
    check_request(&req)?;
    let _adding = set.adding.lock().map_err(|_| "add lock poisoned")?;
    if req.qmp.is_some() {
        return add_qemu(sh, set, req);
    }
    let names = super::disk_names(&req.disks);
    for e in set.list() {
        if let Some(q) = e.qemu.as_ref().filter(|_| e.name == req.vm) {
            return Err(format!(
                "VM {} is protected as a running qemu VM (QMP socket {}): disable its protection first",
                req.vm,
                q.spec.qmp.display()
            ));
        }
        if e.name == req.vm {
            if e.paths == req.disks {
                update_policy(sh, set, &e, &req, &names)?;
                return Ok(Added::Already(names));
            }
            return Err(format!(
                "VM {} is already protected with other disks ({}): disable its protection first",
                req.vm,
                e.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(p) = req.disks.iter().find(|p| e.paths.contains(p)) {
            return Err(format!(
                "disk {} is already protected as part of VM {}",
                p.display(),
                e.name
            ));
        }
    }
    if let Some(g) = &req.group {
        set.groups
            .check(g, &req.vm, false, Duration::from_secs(req.interval_seconds))?;
    }
    // Enable protection's local checks: every disk opens and its format is supported.
    let mut jobs = Vec::new();
    for (p, name) in req.disks.iter().zip(&names) {
        let d = vdisk::open(p, OpenOptions::default())
            .map_err(|e| format!("prerequisite check failed: {}: {e}", p.display()))?;
        jobs.push(DiskJob {
            vm: req.vm.clone(),
            name: name.clone(),
            disk: Arc::from(d),
            progress: Default::default(),
        });
    }
    let disks = protected_disks(&jobs, &req.disks, false).map_err(|e| e.to_string())?;
    // Durable before it runs: a sender killed from here on protects it after its restart.
    record(set, &req)?;
    // Checked above, under the add lock: joining cannot be refused now.
    let policy = set.with_group(&req.vm, req.group.as_deref(), false, set.policy_for(&req))?;
    sh.jobs.start_vm(&req.vm);
    sh.jobs.disks_checked(&req.vm, &jobs);
    let threshold = req
        .rpo_threshold_seconds
        .map(Duration::from_secs)
        .unwrap_or_else(|| {
            crate::health::default_rpo_threshold(Duration::from_secs(req.interval_seconds))
        });
    sh.health.add_vm(&req.vm, &names, Some(threshold));
    for d in disks.iter() {
        if let Ok(g) = d.lock() {
            sh.board.add_disk(&g.job, Some(g.tracker.clone()));
        }
    }
    info!(vm = %req.vm, disks = ?req.disks, interval_s = req.interval_seconds, group = ?req.group,
          "protection enabled over the control channel");
    set.push(VmEntry {
        name: req.vm.clone(),
        paths: req.disks.clone(),
        sched: Arc::new(Schedule::new(policy.interval)),
        disks,
        policy,
        qemu: None,
    });
    Ok(Added::Started(names))
}

/// [`add`] for a running qemu VM (`qmp`), under the add lock: the same socket and drives
/// again are `already` (a policy change), anything else for a protected VM or socket is
/// refused; otherwise the checks run and the VM is recorded and started.
fn add_qemu(sh: &Shared, set: &VmSet, req: AddedVm) -> Result<Added, String> {
    let spec = qemu_spec(&req)?;
    for e in set.list() {
        let Some(q) = &e.qemu else {
            if e.name == req.vm {
                return Err(format!(
                    "VM {} is already protected with disk images ({}): disable its protection first",
                    req.vm,
                    e.paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            continue;
        };
        let same = q.spec.qmp == spec.qmp && q.spec.drives == spec.drives && q.spec.nbd == spec.nbd;
        if e.name == req.vm {
            if same {
                let names: Vec<String> = q.disks.iter().map(|d| d.name.clone()).collect();
                update_policy(sh, set, &e, &req, &names)?;
                return Ok(Added::Already(names));
            }
            return Err(format!(
                "VM {} is already protected through QMP socket {} with drives [{}]: disable its protection first",
                req.vm,
                q.spec.qmp.display(),
                q.spec
                    .drives
                    .iter()
                    .map(|d| d.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if q.spec.qmp == spec.qmp {
            return Err(format!(
                "QMP socket {} is already protected as VM {}: one qemu process is one VM",
                spec.qmp.display(),
                e.name
            ));
        }
    }
    if let Some(g) = &req.group {
        // Before anything runs in qemu: a refused request changes nothing.
        set.groups
            .check(g, &req.vm, true, Duration::from_secs(req.interval_seconds))?;
    }
    let (q, details) = super::qemu::open_requested(sh, spec).map_err(|e| match e {
        SendError::Source { message, .. } => message,
        e => e.to_string(),
    })?;
    // Durable before it runs: a sender killed from here on protects it after its restart.
    record(set, &req)?;
    let threshold = req
        .rpo_threshold_seconds
        .map(Duration::from_secs)
        .unwrap_or_else(|| {
            crate::health::default_rpo_threshold(Duration::from_secs(req.interval_seconds))
        });
    let names = super::qemu::register(sh, set, q, &details, set.policy_for(&req), threshold, false)
        .map_err(|e| e.to_string())?;
    info!(vm = %req.vm, qmp = %req.qmp.as_deref().unwrap_or(Path::new("")).display(),
          drives = ?req.drives, interval_s = req.interval_seconds,
          "protection of a qemu VM enabled over the control channel");
    Ok(Added::Started(names))
}

/// Runs every VM of `set` on `conn`, starting VMs added meanwhile; the first error aborts
/// the others, except a refusal of one VM alone (the receiver does not authorise this
/// sender for it, or holds disks of it the sender does not name): that VM goes Critical
/// with the receiver's reason and the others go on; and except a transient failure of one
/// VM's change source, which is retried for that VM alone or given up alone
/// ([`super::vm_retry`]).
/// Ends when every VM ended (`--max-cycles`), never while the set is empty; a VM refused
/// alone or given up then ends the run with its error.
pub async fn run_all(
    conn: &quinn::Connection,
    set: &VmSet,
    sh: &Arc<Shared>,
) -> Result<(), SendError> {
    let mut grew = set.subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut refused: Option<SendError> = None;
    let mut claimed = 0;
    loop {
        let list = set.list();
        if claimed < list.len() {
            // This connection protects the groups (again, when a VM joined one).
            if list[claimed..].iter().any(|e| e.policy.group.is_some()) {
                super::group::claim_all(conn, &set.groups, &sh.peer, &sh.credit).await?;
            }
            claimed = list.len();
        }
        for e in list.iter().skip(started) {
            if set.retries.gave_up(&e.name) {
                refused.get_or_insert_with(|| super::vm_retry::gave_up_error(&e.name));
                continue;
            }
            spawn_vm(&mut tasks, conn, sh, e, None);
        }
        started = started.max(list.len());
        if started > 0 && tasks.is_empty() {
            return refused.map_or(Ok(()), Err);
        }
        tokio::select! {
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                let (e, r) = match r {
                    Ok(x) => x,
                    Err(j) => {
                        tasks.abort_all();
                        return Err(SendError::Internal(format!("VM task: {j}")));
                    }
                };
                let vm = e.name.clone();
                match r {
                    Ok(()) => {}
                    Err(err) if refused_alone(&err) && !tasks.is_empty() => {
                        let class = err.verdict();
                        sh.health.vm_failed(&vm, &class, &err.to_string());
                        sh.jobs.fail_vm(&vm, &err);
                        warn!(%vm, error = %err, advice = class.advice,
                              "VM refused by the receiver (Critical); the other VMs go on");
                        refused = Some(err);
                    }
                    Err(err) if super::vm_retry::source_alone(&err) => {
                        // A qemu VM retries in place and ends only once given up; another
                        // source's VM starts again after the delay.
                        let rounds = e.sched.cycles.load(std::sync::atomic::Ordering::Relaxed);
                        let verdict = if set.retries.gave_up(&vm) {
                            super::vm_retry::Verdict::GaveUp
                        } else {
                            set.retries.failed(&vm, rounds, sh.opts.protect_give_up_after)
                        };
                        match verdict {
                            super::vm_retry::Verdict::RetryIn(delay) => {
                                sh.health.vm_source_failed(&vm, &err.verdict(), &err.to_string(), Some(delay));
                                warn!(%vm, error = %err, retry_in_ms = delay.as_millis() as u64,
                                      "the VM's change source failed; retrying this VM alone (the others go on)");
                                spawn_vm(&mut tasks, conn, sh, &e, Some(delay));
                            }
                            super::vm_retry::Verdict::GaveUp => {
                                let class = super::vm_retry::gave_up_class();
                                sh.health.vm_source_failed(&vm, &class, &err.to_string(), None);
                                sh.jobs.fail_vm(&vm, &err);
                                tracing::error!(%vm, error = %err, advice = class.advice,
                                                "giving up on this VM after --give-up-after (Critical); the other VMs go on");
                                if let Some(q) = &e.qemu {
                                    tokio::spawn(super::qemu::stop_given_up(q.clone()));
                                }
                                refused = Some(err);
                            }
                        }
                    }
                    Err(err) => {
                        tasks.abort_all();
                        return Err(err);
                    }
                }
            }
            changed = grew.changed() => {
                if changed.is_err() {
                    warn!("the VM set is gone; ending the attempt");
                    return Ok(());
                }
            }
        }
    }
}

type VmTask = (Arc<VmEntry>, Result<(), SendError>);

/// Starts the protection of `e` on `conn` (after `delay`, for a retry of the VM alone).
fn spawn_vm(
    tasks: &mut tokio::task::JoinSet<VmTask>,
    conn: &quinn::Connection,
    sh: &Arc<Shared>,
    e: &Arc<VmEntry>,
    delay: Option<Duration>,
) {
    let (conn, sh, e) = (conn.clone(), sh.clone(), e.clone());
    tasks.spawn(async move {
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let r = match &e.qemu {
            Some(q) => super::qemu::protect::protect(&conn, q, &e.sched, &e.policy, &sh).await,
            None => protect::protect_vm(&conn, &e.disks, &e.sched, &e.policy, &sh).await,
        };
        (e, r)
    });
}

/// A refusal that concerns one VM only: the receiver does not authorise this sender for it,
/// or its store holds disks of it that the sender does not name (issue 17, item 6).
fn refused_alone(e: &SendError) -> bool {
    use vdrep_proto::wire::ErrorClass;
    matches!(
        e,
        SendError::Remote {
            class: ErrorClass::Unauthorized | ErrorClass::DiskSetChanged,
            ..
        }
    )
}

/// Records `req` in the VM list of the state folder (replacing an earlier request for its VM).
fn record(set: &VmSet, req: &AddedVm) -> Result<(), String> {
    let mut kept = load(&set.state).map_err(|e| e.to_string())?;
    kept.retain(|a| a.vm != req.vm);
    kept.push(req.clone());
    save(&set.state, &kept).map_err(|e| {
        format!(
            "cannot record the VM in {}: {e}",
            set.state.join(FILE).display()
        )
    })
}

#[cfg(test)]
#[path = "vmset_tests.rs"]
mod tests;

//! Consistency groups (issue 17 item 5; ASR's multi-VM consistency): VMs that name the same
//! group (`send --group NAME`, `group = "NAME"` on a `[[vm]]`, the sidecar policy's
//! `group`) switch their change logs together — one `switch_set` over every member's
//! disks, all their tracking locks held at once — so each group switch is one instant of
//! every disk of every member, and the members' points of it carry the same `group_cycle`
//! and `time`: both are recorded ([`super::group_record`], and each member's point plan,
//! `super::points`) before any log is renamed.
//!
//! **Rules**, checked where the members are named ([`check_members`], [`Groups::join`]): a
//! group has at most [`MAX_VMS`] VMs; its members have the same interval; at most one of
//! them is a qemu VM ([`super::group_qemu`]: its QMP switch is cut while the other
//! members' tracking locks are held); one sender process protects it (the receiver
//! refuses a second sender's claim: see `receiver::groups`).
//!
//! **How the members meet.** Each member VM runs its own protection task (copy, resync,
//! shipping, on the one connection). At each of the group's switch times every member
//! arrives at the group's rendezvous ([`Membership::switch`]) once it has shipped its
//! previous cycles; the member that completes the set performs the one switch for all and
//! hands each its cycles. A member is *expected* from the start of its task, so the group's
//! first switch waits for every member's initial replication; a member whose task ends (a
//! refusal of that VM alone, the end of `--max-cycles`) is no longer waited for, and the
//! group's later points lack it (`failover --group` then names it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::cycle::switch_vms;
use super::group_qemu::{Arrival, Cut, Outcome, QemuCut};
use super::group_record;
use super::protect::Protected;
use super::qemu::QemuVm;
use crate::clock::SharedClock;

/// Most VMs in one group (ASR's limit for multi-VM consistency).
pub const MAX_VMS: usize = 16;

pub(super) type Disks = Arc<Vec<Arc<Mutex<Protected>>>>;

/// One consistency group of this sender.
pub struct Group {
    name: String,
    interval: Duration,
    /// The member VMs, each with whether it is a qemu VM.
    members: Mutex<BTreeMap<String, bool>>,
    next: Mutex<Instant>,
    meet: Mutex<Meeting>,
    changed: tokio::sync::Notify,
    record: PathBuf,
    /// The newest group cycle a store is known to hold: the numbering continues above it.
    floor: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The rendezvous of the members for the next switch.
#[derive(Default)]
struct Meeting {
    /// Members whose task runs (a count: a task of the next attempt may start before the
    /// old one has ended).
    expected: BTreeMap<String, usize>,
    /// Members waiting for the switch, with their disks (or their qemu VM).
    arrived: BTreeMap<String, Arrival>,
    /// A member performs a switch now.
    switching: bool,
    /// Switches performed.
    generation: u64,
    /// Each member's outcome of the switch that took it, with that switch's generation.
    results: BTreeMap<String, (u64, Outcome)>,
}

impl Group {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The members' interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The member VMs named so far.
    pub fn members(&self) -> Vec<String> {
        self.members
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The switch records' file.
    pub fn record_path(&self) -> &Path {
        &self.record
    }

    /// When the group switches next.
    pub fn next_at(&self) -> Instant {
        self.next
            .lock()
            .map(|n| *n)
            .unwrap_or_else(|_| crate::clock::tokio_now())
    }

    /// Raises the numbering floor to a group cycle a store holds.
    pub fn known_group_cycle(&self, group_cycle: u64) {
        self.floor
            .fetch_max(group_cycle, std::sync::atomic::Ordering::Relaxed);
    }

    /// Registers a member's task: the group's switches wait for it from now until the
    /// returned membership is dropped.
    pub fn enter(self: &Arc<Self>, vm: &str) -> Membership {
        if let Ok(mut m) = self.meet.lock() {
            *m.expected.entry(vm.to_string()).or_insert(0) += 1;
        }
        Membership {
            group: self.clone(),
            vm: vm.to_string(),
        }
    }

    /// Performs one switch of every arrived member: one `switch_set` over the image
    /// members' disks, with the qemu member's QMP switch cut inside its hold
    /// ([`super::group_qemu`]).
    async fn perform(
        &self,
        arrived: BTreeMap<String, Arrival>,
        clock: &SharedClock,
    ) -> Vec<(String, Outcome)> {
        let now = std::time::SystemTime::from(clock.now_utc());
        let unix_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut images: Vec<(String, Disks)> = Vec::new();
        let mut qemu: Option<(String, Arc<QemuVm>)> = None;
        let mut extra = Vec::new();
        for (vm, a) in arrived {
            match a {
                Arrival::Disks(d) => images.push((vm, d)),
                Arrival::Qemu(q) if qemu.is_none() => qemu = Some((vm, q)),
                // Admission refuses a second qemu VM ([`admissible`]); never cut two.
                Arrival::Qemu(_) => extra.push(vm),
            }
        }
        let cut = Cut::prepare(qemu, u64::try_from(unix_ms).unwrap_or(0)).await;
        let sets: Vec<&[Arc<Mutex<Protected>>]> = images.iter().map(|(_, d)| &d[..]).collect();
        let (path, group) = (self.record.clone(), self.name.clone());
        let floor = self.floor.load(std::sync::atomic::Ordering::Relaxed);
        let recorded = cut.recorded();
        let qemu_vm = cut.vm().map(str::to_string);
        let out = switch_vms(
            &sets,
            now,
            move |vms| {
                let gc = group_record::record(&path, &group, unix_ms, vms, floor)
                    .map_err(|e| format!("group {group}: cannot record the switch: {e}"))?;
                info!(%group, group_cycle = gc, vms = ?vms.iter().map(|v| (&v.vm, v.cycle)).collect::<Vec<_>>(),
                      qemu_vm = ?qemu_vm, "group switch: every member's disks at one instant");
                if let Ok(mut r) = recorded.lock() {
                    *r = Some((group.clone(), gc));
                }
                Ok(Some((group, gc)))
            },
            cut.inside(),
        )
        .await;
        if let Ok(mut n) = self.next.lock() {
            // Fixed cadence; a late switch does not pile up a burst of switches after it.
            *n = (*n + self.interval).max(crate::clock::tokio_now());
        }
        let mut res: Vec<(String, Outcome)> = images
            .into_iter()
            .map(|(vm, _)| vm)
            .zip(out.into_iter().map(Outcome::Disks))
            .collect();
        res.extend(cut.finish().await);
        for vm in extra {
            warn!(group = %self.name, %vm, "a second qemu VM in the group is not cut");
            res.push((vm, Outcome::Qemu(QemuCut::missed())));
        }
        res
    }
}

/// A member's place in its group while its protection task runs.
pub struct Membership {
    group: Arc<Group>,
    vm: String,
}

/// Resets the rendezvous when the member performing a switch is cancelled.
struct Performing<'a>(&'a Group);

impl Drop for Performing<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.meet.lock() {
            m.switching = false;
        }
        self.0.changed.notify_waiters();
    }
}

impl Membership {
    /// The group.
    pub fn group(&self) -> &Arc<Group> {
        &self.group
    }

    /// Arrives at the group's switch with the member's disks and returns, per disk, the
    /// cycle the group switch closed (as `cycle::switch_vm` does for a VM alone). Waits
    /// until every expected member has arrived; the last to arrive performs the switch.
    pub async fn switch(&self, disks: &Disks, clock: &SharedClock) -> Vec<Option<u64>> {
        match self.arrive(Arrival::Disks(disks.clone()), clock).await {
            Outcome::Disks(cycles) => cycles,
            Outcome::Qemu(_) => vec![None; disks.len()],
        }
    }

    /// Arrives at the group's switch with the member's qemu VM and returns its cut: the
    /// views of its disks, taken by the group switch while the image members' tracking
    /// locks were held, with the group cycle and instant its VM point carries.
    pub async fn switch_qemu(&self, vm: &Arc<QemuVm>, clock: &SharedClock) -> QemuCut {
        match self.arrive(Arrival::Qemu(vm.clone()), clock).await {
            Outcome::Qemu(cut) => cut,
            Outcome::Disks(_) => QemuCut::missed(),
        }
    }

    /// Waits at the rendezvous with `arrival` until the switch that takes it is done.
    async fn arrive(&self, arrival: Arrival, clock: &SharedClock) -> Outcome {
        let g = &*self.group;
        let missed = arrival.missed();
        let mut arrival = Some(arrival);
        let mut mine: Option<u64> = None;
        let mut said = false;
        loop {
            let notified = g.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let perform = {
                let Ok(mut m) = g.meet.lock() else {
                    return missed;
                };
                if let Some(at) = mine {
                    if m.results.get(&self.vm).is_some_and(|(gen, _)| *gen > at) {
                        return m.results.remove(&self.vm).map(|(_, r)| r).unwrap_or(missed);
                    }
                } else if let Some(a) = arrival.take() {
                    m.results.remove(&self.vm);
                    m.arrived.insert(self.vm.clone(), a);
                    mine = Some(m.generation);
                }
                let complete = m.expected.keys().all(|v| m.arrived.contains_key(v));
                if !m.switching && complete && m.arrived.contains_key(&self.vm) {
                    m.switching = true;
                    Some(std::mem::take(&mut m.arrived))
                } else {
                    if !said && !m.switching {
                        let missing: Vec<&String> = m
                            .expected
                            .keys()
                            .filter(|v| !m.arrived.contains_key(*v))
                            .collect();
                        info!(group = %g.name, vm = %self.vm, waiting_for = ?missing,
                              "group switch waits for every member");
                        said = true;
                    }
                    None
                }
            };
            if let Some(arrived) = perform {
                let guard = Performing(g);
                let results = g.perform(arrived, clock).await;
                if let Ok(mut m) = g.meet.lock() {
                    m.generation += 1;
                    let gen = m.generation;
                    for (vm, r) in results {
                        m.results.insert(vm, (gen, r));
                    }
                }
                drop(guard);
                continue;
            }
            notified.await;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let g = &self.group;
        if let Ok(mut m) = g.meet.lock() {
            if let Some(n) = m.expected.get_mut(&self.vm) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.expected.remove(&self.vm);
                    m.arrived.remove(&self.vm);
                    m.results.remove(&self.vm);
                    warn!(group = %g.name, vm = %self.vm,
                          "group member stopped; the group switches without it until it is back");
                }
            }
        }
        g.changed.notify_waiters();
    }
}

/// The groups of one sender, by name.
#[derive(Debug, Default)]
pub struct Groups {
    list: Mutex<BTreeMap<String, Arc<Group>>>,
}

impl Groups {
    /// Adds `vm` (`qemu`: a qemu VM) to `group` (created at its first member), refusing a
    /// member whose interval differs from the group's, a 17th VM and a second qemu VM.
    /// `state` is the sender's state folder.
    pub fn join(
        &self,
        group: &str,
        vm: &str,
        qemu: bool,
        interval: Duration,
        state: &Path,
    ) -> Result<Arc<Group>, String> {
        self.admit(group, vm, qemu, interval, state)
    }

    /// Whether [`Groups::join`] would admit `vm`, without joining.
    pub fn check(
        &self,
        group: &str,
        vm: &str,
        qemu: bool,
        interval: Duration,
    ) -> Result<(), String> {
        check_name(group)?;
        let Some(g) = self.list.lock().ok().and_then(|l| l.get(group).cloned()) else {
            return Ok(());
        };
        let members = g.members.lock().map_err(|_| "group members poisoned")?;
        admissible(&g, &members, vm, qemu, interval)
    }

    fn admit(
        &self,
        group: &str,
        vm: &str,
        qemu: bool,
        interval: Duration,
        state: &Path,
    ) -> Result<Arc<Group>, String> {
        check_name(group)?;
        let mut list = self.list.lock().map_err(|_| "group list poisoned")?;
        let g = list
            .entry(group.to_string())
            .or_insert_with(|| {
                Arc::new(Group {
                    name: group.to_string(),
                    interval,
                    members: Mutex::new(BTreeMap::new()),
                    next: Mutex::new(crate::clock::tokio_now() + interval),
                    meet: Mutex::new(Meeting::default()),
                    changed: tokio::sync::Notify::new(),
                    record: group_record::path(state, group),
                    floor: Default::default(),
                })
            })
            .clone();
        let mut members = g.members.lock().map_err(|_| "group members poisoned")?;
        admissible(&g, &members, vm, qemu, interval)?;
        members.insert(vm.to_string(), qemu);
        drop(members);
        Ok(g)
    }

    /// Every group.
    pub fn list(&self) -> Vec<Arc<Group>> {
        self.list
            .lock()
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The group `vm` belongs to.
    pub fn of(&self, vm: &str) -> Option<Arc<Group>> {
        self.list()
            .into_iter()
            .find(|g| g.members().iter().any(|m| m == vm))
    }
}

/// Why `vm` (`qemu`: a qemu VM) may not join `g` (whose members are `members`), if it may
/// not.
fn admissible(
    g: &Group,
    members: &BTreeMap<String, bool>,
    vm: &str,
    qemu: bool,
    interval: Duration,
) -> Result<(), String> {
    if members.contains_key(vm) {
        return Ok(());
    }
    let group = &g.name;
    if g.interval != interval {
        return Err(format!(
            "VM {vm} cannot join consistency group {group}: its interval {} differs from the group's {} (members of a group switch together, so they have one interval)",
            secs(interval),
            secs(g.interval)
        ));
    }
    if members.len() >= MAX_VMS {
        return Err(format!(
            "VM {vm} cannot join consistency group {group}: it has {MAX_VMS} VMs already, the most a group may have ({})",
            members.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(other) = members.iter().find(|(_, q)| qemu && **q).map(|(v, _)| v) {
        return Err(super::group_qemu::second_qemu_refusal(vm, group, other));
    }
    Ok(())
}

/// Claims every group of this sender at the receiver over `conn` (at the start of each
/// connection, and again when a VM joins a group): the receiver refuses a group another
/// sender's connection holds, so a group split across senders stops the second one at
/// its start with the receiver's reason. A sender without groups sends nothing.
pub async fn claim_all(
    conn: &quinn::Connection,
    groups: &Groups,
    peer: &str,
    credit: &super::credit::StreamCredit,
) -> Result<(), super::SendError> {
    let list = groups.list();
    if list.is_empty() {
        return Ok(());
    }
    let mut ctrl = super::ControlStream::open(conn, peer, credit).await?;
    let version = ctrl.version();
    if version < vdrep_proto::wire::VM_POINTS_VERSION {
        return Err(super::SendError::Group(format!(
            "receiver {peer} speaks protocol version {version}; consistency groups need version {} (VM points): upgrade the receiver",
            vdrep_proto::wire::VM_POINTS_VERSION
        )));
    }
    for g in list {
        let vms = g.members();
        let req = ctrl.req();
        let ans = ctrl
            .call(vdrep_proto::wire::Control::ClaimGroup {
                req,
                group: g.name.clone(),
                vms: vms.clone(),
                interval_secs: u32::try_from(g.interval.as_secs()).unwrap_or(u32::MAX),
            })
            .await?;
        let vdrep_proto::wire::Control::GroupClaimed { group_cycle, .. } = ans else {
            return Err(ctrl.unexpected(ans));
        };
        g.known_group_cycle(group_cycle);
        info!(group = %g.name, ?vms, interval_s = g.interval.as_secs_f64(),
              "consistency group claimed at the receiver (one sender protects it)");
    }
    ctrl.finish();
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Checks a group name: the receiver's name rules (it is a file name in the sender's
/// state folder and a key in the store).
pub fn check_name(group: &str) -> Result<(), String> {
    crate::sink::validate_name("group name", group).map_err(|e| e.to_string())
}

/// Checks the groups a command line or config names, as `(vm, group, qemu)`: every name
/// valid, at most [`MAX_VMS`] VMs and one qemu VM per group (the interval is one for all
/// VMs of a command line). The error names the group and its VMs.
pub fn check_members<'a>(
    vms: impl IntoIterator<Item = (&'a str, Option<&'a str>, bool)>,
) -> Result<(), String> {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut qemu: BTreeMap<&str, &str> = BTreeMap::new();
    for (vm, group, is_qemu) in vms {
        if let Some(g) = group {
            check_name(g)?;
            groups.entry(g).or_default().push(vm);
            if is_qemu {
                if let Some(other) = qemu.insert(g, vm) {
                    return Err(super::group_qemu::second_qemu_refusal(vm, g, other));
                }
            }
        }
    }
    for (g, members) in groups {
        if members.len() > MAX_VMS {
            return Err(format!(
                "consistency group {g} names {} VMs ({}); a group has at most {MAX_VMS}",
                members.len(),
                members.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;

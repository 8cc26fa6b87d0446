//! A qemu VM in a consistency group (issue 18): its cut is taken inside the group switch,
//! while every image member's tracking lock is held.
//!
//! **Why that is one instant of the group.** An image member's point holds exactly the
//! tracked writes made before the group switch took its locks: a tracked write holds its
//! disk's lock while it lands, and none lands until the locks are released. A qemu VM's
//! point holds exactly the writes its qemu completed before the QMP transaction that took
//! its views. When that transaction runs while the locks are held
//! (`tracking::switch_set_with`), a writer that writes its disks in order — each write
//! complete before the next starts, across the qemu VM's disks and the image members' —
//! finds every group point holding a prefix of its writes: a write to an image disk is in
//! the point only if it landed before the locks were taken, so before the cut, so every
//! earlier write was complete before the cut too; a write to the qemu VM is in the point only
//! if it completed before the cut, so every earlier image write landed before the locks.
//!
//! **Why one qemu VM per group.** Two qemu VMs are two QMP transactions in two processes,
//! one after the other: a guest write to the first made after its cut and then one to the
//! second made before its cut would put the later write in the point without the earlier
//! one. QMP `stop`/`cont` would pause a qemu guest for the time between, but
//! qemu-storage-daemon has no `stop`, so a second qemu VM is refused
//! ([`second_qemu_refusal`]).
//!
//! **What it costs.** The image members' writers wait for the QMP transaction (one round
//! trip on the monitor socket, milliseconds) besides the renames; the qemu VM's switch is
//! prepared before the locks are taken and its views exported after
//! (`QemuVm::prepare_switch`, `cut_prepared`, `finish_prepared`), so only the transaction
//! runs inside. The qemu VM's first round after its task starts (the initial copy from the
//! view of protection start, or what was written while the sender was stopped) and a round
//! retried after qemu was unreachable are its own, outside the group: those points carry no
//! group cycle, and the group is not held up while that VM is retried.

use std::sync::{Arc, Mutex};

use tracing::warn;

use super::group::Disks;
use super::qemu::ctl::Switched;
use super::qemu::QemuVm;
use super::SendError;

/// What a member brings to the group's switch.
pub(super) enum Arrival {
    /// An image VM's disks.
    Disks(Disks),
    /// A qemu VM.
    Qemu(Arc<QemuVm>),
}

impl Arrival {
    /// The outcome of a switch that did not take this member.
    pub(super) fn missed(&self) -> Outcome {
        match self {
            Arrival::Disks(d) => Outcome::Disks(vec![None; d.len()]),
            Arrival::Qemu(_) => Outcome::Qemu(QemuCut::missed()),
        }
    }
}

/// What the group's switch gave a member.
pub(super) enum Outcome {
    /// Per disk, the cycle switched to (`None`: that disk did not switch).
    Disks(Vec<Option<u64>>),
    /// The qemu VM's cut.
    Qemu(QemuCut),
}

/// A qemu member's cut in a group switch.
pub struct QemuCut {
    /// What the VM's switch gave (its views, or no room for them), or why it failed;
    /// `None`: the group switch did not reach the VM (cancelled before anything
    /// switched), so its round waits for the next one.
    pub switched: Option<Result<Switched, SendError>>,
    /// The group and the group cycle of the switch (recorded before it), which the VM's
    /// point carries with the other members'.
    pub group: Option<(String, u64)>,
    /// The group switch's instant, Unix milliseconds: every member's point's time.
    pub unix_ms: u64,
}

impl QemuCut {
    /// A switch that did not reach the VM.
    pub(super) fn missed() -> QemuCut {
        QemuCut {
            switched: None,
            group: None,
            unix_ms: 0,
        }
    }
}

/// The qemu member of one group switch, from before the locks to its outcome.
pub(super) struct Cut {
    member: Option<(String, Arc<QemuVm>)>,
    /// The switch prepared before the hold (`QemuVm::prepare_switch`): `Ok(Some)` says
    /// there is no room for the views.
    prepared: Option<Result<Option<String>, SendError>>,
    /// The transaction's outcome, once it ran inside the hold.
    cut: Arc<Mutex<Option<Result<(), SendError>>>>,
    recorded: Arc<Mutex<Option<(String, u64)>>>,
    unix_ms: u64,
}

async fn blocking<T: Send + 'static>(
    q: &Arc<QemuVm>,
    f: impl FnOnce(&QemuVm) -> Result<T, SendError> + Send + 'static,
) -> Result<T, SendError> {
    let q = q.clone();
    tokio::task::spawn_blocking(move || f(&q))
        .await
        .unwrap_or_else(|e| Err(SendError::Internal(format!("qemu task: {e}"))))
}

impl Cut {
    /// Prepares the qemu member's switch, if there is a member (connected, set up, scratch
    /// images made: `QemuVm::prepare_switch`), before the image members' locks are taken;
    /// `unix_ms` is the switch's instant.
    pub(super) async fn prepare(member: Option<(String, Arc<QemuVm>)>, unix_ms: u64) -> Cut {
        let prepared = match &member {
            Some((_, q)) => Some(blocking(q, |q| q.prepare_switch()).await),
            None => None,
        };
        Cut {
            member,
            prepared,
            cut: Default::default(),
            recorded: Default::default(),
            unix_ms,
        }
    }

    /// The qemu member's name.
    pub(super) fn vm(&self) -> Option<&str> {
        self.member.as_ref().map(|(v, _)| v.as_str())
    }

    /// Where the switch's record puts the group cycle.
    pub(super) fn recorded(&self) -> Arc<Mutex<Option<(String, u64)>>> {
        self.recorded.clone()
    }

    /// What the switch runs inside its hold: the qemu VM's transaction, one QMP command
    /// (`None`: no qemu member, or its switch could not be prepared). The test hook of log
    /// switches pauses after it, as after a disk (`VDREP_TEST_SWITCH_PAUSE`), still inside
    /// the hold.
    pub(super) fn inside(&self) -> Option<Box<dyn FnOnce() + Send>> {
        let (vm, q) = self.member.as_ref()?;
        if !matches!(self.prepared, Some(Ok(None))) {
            return None;
        }
        let (vm, q, slot) = (vm.clone(), q.clone(), self.cut.clone());
        Some(Box::new(move || {
            let r = q.cut_prepared();
            crate::tracking::test_hook::between_disks(&format!("qemu VM {vm}"));
            match slot.lock() {
                Ok(mut s) => *s = Some(r),
                Err(_) => warn!(%vm, "qemu cut lost: its slot's lock was poisoned"),
            }
        }))
    }

    /// The qemu member's outcome once the switch is done: its views exported (after the
    /// hold), or why there are none.
    pub(super) async fn finish(self) -> Option<(String, Outcome)> {
        let (vm, q) = self.member?;
        let cut = self.cut.lock().ok().and_then(|mut s| s.take());
        let switched = match self.prepared {
            None => None,
            Some(Err(e)) => Some(Err(e)),
            Some(Ok(Some(no_room))) => Some(Ok(Switched::NoRoom(no_room))),
            Some(Ok(None)) => {
                // Exports a cut switch; abandons one the group switch never cut.
                let done = blocking(&q, |q| q.finish_prepared()).await;
                match (cut, done) {
                    (Some(Err(e)), _) | (_, Err(e)) => Some(Err(e)),
                    (_, Ok(Some(s))) => Some(Ok(s)),
                    (_, Ok(None)) => None,
                }
            }
        };
        let group = match &switched {
            Some(Ok(Switched::Views(_))) => self.recorded.lock().ok().and_then(|mut r| r.take()),
            _ => None,
        };
        Some((
            vm,
            Outcome::Qemu(QemuCut {
                switched,
                group,
                unix_ms: self.unix_ms,
            }),
        ))
    }
}

/// Why qemu VM `vm` may not join `group`, which holds qemu VM `other` already.
pub fn second_qemu_refusal(vm: &str, group: &str, other: &str) -> String {
    format!(
        "VM {vm} cannot join consistency group {group}: the group holds qemu VM {other} \
         already, and a group holds at most one qemu VM (its QMP switch is cut while the \
         other members' tracking locks are held; two qemu VMs would be cut one after the \
         other while their guests go on writing, and qemu-storage-daemon cannot be paused, \
         so a group point could hold a write to one made after an earlier write to the \
         other that it lacks): put the second qemu VM in another group"
    )
}

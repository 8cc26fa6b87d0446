//! Which disks' switches take qemu's copy of their dirty blocks instead of a fleecing view
//! (`vdrep_qemu::fleece`'s `copy.rs`: the guest waits only while qemu copies, not while
//! vdrep reads). A copy holds the previous bitmap's blocks and nothing else, so it serves
//! a cycle only: a disk gets one when it has a previous bitmap, no resync mark and a
//! complete digest table (the table is made stale when a copy or resync starts and
//! computed again once it commits, so a complete one says the receiver holds the replica;
//! an incomplete one is computed from the whole view), and no round of this process failed
//! since its last commit. After a failed round the switch takes fleecing views until a
//! round commits; a copy that meets another step after all (the receiver lost the
//! replica) fails the round, transiently, and the retry takes a fleecing view.

use std::sync::atomic::Ordering;

use super::QemuVm;

/// The environment variable that turns copies off (`fleece`): every switch then takes
/// fleecing views, as before session 18. A process that honours it says so in its log.
pub const VIEW_ENV: &str = "VDREP_QEMU_VIEW";

/// Whether cycles may take qemu's copies ([`VIEW_ENV`]).
pub fn copies_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var(VIEW_ENV).is_ok_and(|v| v.trim() == "fleece");
        if off {
            tracing::warn!("{VIEW_ENV}=fleece: qemu cycles read fleecing views, not qemu's copies");
        }
        !off
    })
}

impl QemuVm {
    /// Whether disk `index`'s next switch takes qemu's copy (see the top of this file).
    pub(super) fn copy_wanted(&self, index: usize) -> bool {
        let Some(d) = self.disks.get(index) else {
            return false;
        };
        copies_on()
            && self
                .copy_ok
                .get(index)
                .is_some_and(|c| c.load(Ordering::Relaxed))
            && self.state.resync_reason(&d.name).is_none()
            && self
                .with_digest(index, |t| Ok(t.complete()))
                .unwrap_or(false)
    }

    /// After a round: the disks that committed their step may take copies next.
    pub fn arm_copies(&self, advanced: &[bool]) {
        for (c, &a) in self.copy_ok.iter().zip(advanced) {
            c.store(a, Ordering::Relaxed);
        }
    }

    /// Before a round's reads, or when it fails: fleecing views until a round commits.
    pub fn disarm_copies(&self) {
        for c in &self.copy_ok {
            c.store(false, Ordering::Relaxed);
        }
    }
}

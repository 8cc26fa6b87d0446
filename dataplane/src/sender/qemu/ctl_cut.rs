//! A qemu VM's switch in three calls, for a consistency group (`sender::group_qemu`): the
//! group prepares it before it takes its image members' tracking locks, runs only the QMP
//! transaction while it holds them, and exports the views after. [`QemuVm::switch`] is
//! the same steps in one call.

use vdrep_qemu::fleece::View;

use super::{source_err, Blocked, QemuVm, Switched};
use crate::sender::SendError;

/// A switch prepared (scratch images made), and whether its transaction ran.
pub(super) struct Prepared {
    pub(super) generation: u32,
    pub(super) views: Vec<View>,
    pub(super) cut: bool,
}

impl QemuVm {
    /// [`QemuVm::switch`] in three calls, so that a consistency group runs the transaction
    /// alone while its image members' tracking locks are held (`sender::group_qemu`):
    /// this one connects, sets up and prepares the switch (before the locks); `Ok(Some)`
    /// says there is no room for the views (nothing prepared: the round waits).
    pub fn prepare_switch(&self) -> Result<Option<String>, SendError> {
        let mut g = self.lock();
        match self.prepare_locked(&mut g) {
            Ok((generation, views)) => {
                g.prepared = Some(Prepared {
                    generation,
                    views,
                    cut: false,
                });
                Ok(None)
            }
            Err(Blocked::NoRoom(m)) => Ok(Some(m)),
            Err(Blocked::Failed(e)) => {
                self.on_error(&mut g, &e);
                Err(e)
            }
        }
    }

    /// The prepared switch's transaction, the instant of the views (inside the group's
    /// hold: one QMP command).
    pub fn cut_prepared(&self) -> Result<(), SendError> {
        let mut g = self.lock();
        let Some(p) = g.prepared.take() else {
            return Err(source_err(
                &self.name,
                true,
                "no switch prepared to cut".into(),
            ));
        };
        let r = match self.ready(&mut g) {
            Ok((qmp, fleecer)) => fleecer.cut(qmp, &p.views).map_err(|e| self.fleece_err(e)),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                g.prepared = Some(Prepared { cut: true, ..p });
                Ok(())
            }
            Err(e) => {
                self.on_error(&mut g, &e);
                Err(e)
            }
        }
    }

    /// After the cut: the views exported and the switch recorded, as [`QemuVm::switch`]
    /// gives them; a prepared switch that was not cut is abandoned (its scratch images
    /// go) and `Ok(None)` says so.
    pub fn finish_prepared(&self) -> Result<Option<Switched>, SendError> {
        let mut g = self.lock();
        let Some(p) = g.prepared.take() else {
            return Ok(None);
        };
        if !p.cut {
            if let Ok((qmp, fleecer)) = self.ready(&mut g) {
                fleecer.abandon(qmp, &p.views);
            }
            return Ok(None);
        }
        match self.export_locked(&mut g, p.generation, p.views) {
            Ok(v) => Ok(Some(Switched::Views(v))),
            Err(e) => {
                self.on_error(&mut g, &e);
                Err(e)
            }
        }
    }
}

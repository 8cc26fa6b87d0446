//! One protected qemu VM: its QMP session (reconnected and set up again after a loss), the
//! disks found in it, and the state kept across restarts. Every method blocks (QMP, NBD):
//! call them from a blocking thread.
//!
//! Set-up after every (re)connection, before the first switch:
//! 1. a crashed run's leftovers — exports, snapshot nodes, backup jobs with their filters,
//!    scratch images, all named `vdrep-` — are removed; bitmaps stay;
//! 2. the NBD server: the VM's own (`--nbd`), or one vdrep starts on a private socket (one a
//!    crashed run started is stopped first);
//! 3. per disk, the bitmap the state names is checked: usable, it takes back every newer
//!    `vdrep-` bitmap (a switch whose cycle never committed: the result over-approximates,
//!    never misses a write); lost or inconsistent, the disk is marked "resync required".

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};
use vdrep_qemu::fleece::{
    bitmap_state, cleanup_leftovers, reconcile_bitmaps, remove_all_bitmaps, start_nbd_server,
    stop_nbd_server, FleeceError, Fleecer, SwitchDisk, View,
};
use vdrep_qemu::qmp::Qmp;

use super::digest::{DigestError, ViewDigest};
use super::discover::FoundDisk;
use super::state::{DiskState, StateDir, VmState};
use super::QemuSpec;
use crate::sender::SendError;

#[path = "ctl_copy.rs"]
mod copy;
#[path = "ctl_cut.rs"]
mod cut;
#[path = "ctl_stop.rs"]
mod stop;

pub use stop::{any_running, register, stop_all};

/// How long a QMP command may take.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(20);

/// Per-disk counters: a cycle must read only its dirty extents.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes the cycles' bitmaps marked dirty (at the bitmap's granularity).
    pub dirty: AtomicU64,
    /// Bytes the cycles read from their views.
    pub read: AtomicU64,
    /// Bytes read from views for the cycles' digests (`super::digest`), apart.
    pub digest_read: AtomicU64,
    /// Bytes the cycles gave back to qemu (discarded from their views,
    /// `super::view::NbdView::discard`).
    pub discarded: AtomicU64,
    /// Reads of discarded ranges the cycles' views refused (a bug if ever non-zero).
    pub refused: AtomicU64,
}

/// The mutable part, behind one lock: one QMP command at a time.
struct Inner {
    qmp: Option<Qmp>,
    fleecer: Option<Fleecer>,
    st: VmState,
    /// The views of the switch in progress.
    views: Vec<View>,
    /// Per view, removed before the switch's end ([`QemuVm::drop_view`]).
    dropped: Vec<bool>,
    /// A switch prepared up to its transaction ([`QemuVm::prepare_switch`]).
    prepared: Option<cut::Prepared>,
}

/// A protected qemu VM.
pub struct QemuVm {
    /// The VM's name.
    pub name: String,
    /// What was asked.
    pub spec: QemuSpec,
    /// Its disks, in order.
    pub disks: Vec<FoundDisk>,
    /// `STATE/qemu/VM`.
    pub state: StateDir,
    /// Per disk.
    pub counters: Vec<Counters>,
    /// Per disk, its digest state, opened on first use.
    digests: Vec<Mutex<Option<ViewDigest>>>,
    /// Per disk, whether its next switch may take qemu's copy of its dirty blocks
    /// (`ctl_copy.rs`).
    pub(super) copy_ok: Vec<std::sync::atomic::AtomicBool>,
    inner: Mutex<Inner>,
}

fn source_err(vm: &str, transient: bool, message: String) -> SendError {
    SendError::Source {
        vm: vm.to_string(),
        message,
        transient,
    }
}

impl QemuVm {
    /// Takes over a VM whose prerequisite checks passed ([`super::checks::run`]: QMP
    /// reachable, disks found, bitmaps supported) with the checks' QMP session. Nothing is
    /// changed in qemu yet.
    pub fn from_checked(
        spec: QemuSpec,
        state_root: &std::path::Path,
        checked: super::checks::Checked,
    ) -> Result<QemuVm, SendError> {
        let vm = spec.vm.clone();
        let super::checks::Checked { qmp, disks, .. } = checked;
        let state = StateDir::new(state_root, &vm);
        let st = state
            .load()
            .map_err(|e| source_err(&vm, false, e.to_string()))?;
        info!(vm = %vm, qmp = %spec.qmp.display(), qemu = %format!("{:?}", qmp.version()),
              disks = ?disks.iter().map(|d| (&d.node, &d.name)).collect::<Vec<_>>(),
              "qemu VM found");
        Ok(QemuVm {
            name: vm,
            counters: disks.iter().map(|_| Counters::default()).collect(),
            digests: disks.iter().map(|_| Mutex::new(None)).collect(),
            // Armed from the start: a complete digest table means the disk's copy or resync
            // committed (`ctl_copy.rs`).
            copy_ok: disks.iter().map(|_| true.into()).collect(),
            disks,
            state,
            spec,
            inner: Mutex::new(Inner {
                qmp: Some(qmp),
                fleecer: None,
                st,
                views: Vec::new(),
                dropped: Vec::new(),
                prepared: None,
            }),
        })
    }

    /// Runs `f` on disk `index`'s digest state (opened in the state folder on first use).
    pub fn with_digest<R>(
        &self,
        index: usize,
        f: impl FnOnce(&mut ViewDigest) -> Result<R, DigestError>,
    ) -> Result<R, DigestError> {
        let (Some(slot), Some(d)) = (self.digests.get(index), self.disks.get(index)) else {
            return Err(DigestError::Io {
                path: self.state.path().display().to_string(),
                source: std::io::Error::other(format!("no disk {index}")),
            });
        };
        let mut g = match slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let v = match g.take() {
            Some(v) => g.insert(v),
            None => g.insert(ViewDigest::open(self.state.path(), &d.name, d.size)?),
        };
        f(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn fleece_err(&self, e: FleeceError) -> SendError {
        source_err(&self.name, e.is_transient(), e.to_string())
    }

    fn nbd_socket(&self) -> PathBuf {
        self.spec
            .nbd
            .clone()
            .unwrap_or_else(|| self.state.path().join("nbd.sock"))
    }

    /// Connects (again) and sets up (the steps at the top of this file) unless done.
    fn ready<'a>(&self, g: &'a mut Inner) -> Result<(&'a mut Qmp, &'a Fleecer), SendError> {
        if g.qmp.is_none() {
            let q = Qmp::connect(&self.spec.qmp, QMP_TIMEOUT)
                .map_err(|e| source_err(&self.name, e.is_transient(), e.to_string()))?;
            g.qmp = Some(q);
            g.fleecer = None;
        }
        if g.fleecer.is_none() {
            let f = self.set_up(g)?;
            g.fleecer = Some(f);
        }
        match (g.qmp.as_mut(), g.fleecer.as_ref()) {
            (Some(q), Some(f)) => Ok((q, f)),
            _ => Err(source_err(&self.name, true, "QMP session lost".into())),
        }
    }

    fn set_up(&self, g: &mut Inner) -> Result<Fleecer, SendError> {
        let Inner { qmp, st, views, .. } = g;
        let Some(qmp) = qmp.as_mut() else {
            return Err(source_err(&self.name, true, "QMP session lost".into()));
        };
        views.clear();
        match super::spool::remove_leftovers(self.state.path()) {
            Ok(0) => {}
            Ok(n) => {
                info!(vm = %self.name, files = n, "removed the cycle spools a killed run left")
            }
            Err(e) => {
                warn!(vm = %self.name, error = %e, "cannot remove the spools a killed run left")
            }
        }
        let fe = |e| self.fleece_err(e);
        let left = cleanup_leftovers(qmp, Duration::from_secs(30)).map_err(fe)?;
        if !left.is_empty() {
            warn!(vm = %self.name, exports = ?left.exports, jobs = ?left.jobs, nodes = ?left.nodes,
                  files = ?left.files, "removed what an earlier run left in qemu (its bitmaps stay)");
        }
        let socket = self.nbd_socket();
        if self.spec.nbd.is_none() {
            std::fs::create_dir_all(self.state.path()).map_err(|e| {
                source_err(
                    &self.name,
                    true,
                    format!("{}: {e}", self.state.path().display()),
                )
            })?;
            if st.nbd_started {
                // Ours, from a run that did not stop it.
                let _ = stop_nbd_server(qmp);
            }
            let _ = std::fs::remove_file(&socket);
            st.nbd_started = true;
            self.save(st)?;
            start_nbd_server(qmp, &socket).map_err(fe)?;
        }
        let scratch = self.state.path().join("scratch");
        std::fs::create_dir_all(&scratch)
            .map_err(|e| source_err(&self.name, true, format!("{}: {e}", scratch.display())))?;
        let fleecer = Fleecer::new(&scratch, &socket).map_err(fe)?;
        for d in &self.disks {
            let keep = st
                .disks
                .get(&d.name)
                .filter(|s| s.node == d.node)
                .and_then(|s| s.bitmap.clone());
            let Some(keep) = keep else {
                // No trusted bitmap: any `vdrep-` bitmap is a leftover of a switch never
                // recorded; the disk is read in full from the next view.
                let removed = remove_all_bitmaps(qmp, std::slice::from_ref(&d.node)).map_err(fe)?;
                if !removed.is_empty() {
                    info!(vm = %self.name, disk = %d.name, ?removed, "unrecorded bitmaps removed");
                }
                continue;
            };
            let lost = bitmap_state(qmp, &d.node, &keep).map_err(fe)?.loss();
            match lost {
                None => {
                    let merged = reconcile_bitmaps(qmp, &d.node, &keep).map_err(fe)?;
                    if !merged.is_empty() {
                        info!(vm = %self.name, disk = %d.name, bitmap = %keep, ?merged,
                              "a switch whose cycle never committed: its bitmaps are merged back");
                    }
                }
                Some(reason) => {
                    let why = format!("dirty bitmap {keep} on {} {reason}", d.node);
                    tracing::error!(vm = %self.name, disk = %d.name, reason = %why,
                                    "resync required: the writes since the last cycle are unknown");
                    self.state
                        .mark_resync(&d.name, &why)
                        .map_err(|e| source_err(&self.name, true, e.to_string()))?;
                    remove_all_bitmaps(qmp, std::slice::from_ref(&d.node)).map_err(fe)?;
                    st.disks.insert(
                        d.name.clone(),
                        DiskState {
                            node: d.node.clone(),
                            bitmap: None,
                        },
                    );
                    self.save(st)?;
                }
            }
        }
        Ok(fleecer)
    }

    fn save(&self, st: &VmState) -> Result<(), SendError> {
        self.state.save(st).map_err(|e| {
            source_err(
                &self.name,
                true,
                format!("{}: {e}", self.state.path().display()),
            )
        })
    }

    /// Drops the QMP session after a transient failure: the next call reconnects and sets
    /// up again.
    fn on_error(&self, g: &mut Inner, e: &SendError) {
        if matches!(
            e,
            SendError::Source {
                transient: true,
                ..
            }
        ) {
            g.qmp = None;
            g.fleecer = None;
        }
    }

    /// Switches every disk at one instant (one QMP transaction) and returns the views, in
    /// disk order. A disk without a trusted bitmap gets one now (recorded at once: its
    /// next read is a full one from this view). A bitmap found lost marks its disk for a
    /// resync and the switch is taken again.
    pub fn switch(&self) -> Result<Switched, SendError> {
        let mut g = self.lock();
        match self.switch_locked(&mut g) {
            Ok(v) => Ok(Switched::Views(v)),
            Err(Blocked::NoRoom(message)) => Ok(Switched::NoRoom(message)),
            Err(Blocked::Failed(e)) => {
                self.on_error(&mut g, &e);
                Err(e)
            }
        }
    }

    fn switch_locked(&self, g: &mut Inner) -> Result<Vec<View>, Blocked> {
        let (generation, views) = self.prepare_locked(g)?;
        {
            let (qmp, fleecer) = self.ready(g)?;
            fleecer.cut(qmp, &views).map_err(|e| self.fleece_err(e))?;
        }
        Ok(self.export_locked(g, generation, views)?)
    }

    /// A switch up to its transaction: the disks and their bitmaps checked, the scratch
    /// images made. A bitmap found lost marks its disk for a resync (the disk gets a new
    /// bitmap from this switch) and the switch is prepared again; a generation a crashed
    /// run used is skipped.
    fn prepare_locked(&self, g: &mut Inner) -> Result<(u32, Vec<View>), Blocked> {
        if let Some(p) = g.prepared.take() {
            // An earlier preparation that was never cut (its group switch did not run).
            if let Ok((qmp, fleecer)) = self.ready(g) {
                if !p.cut {
                    fleecer.abandon(qmp, &p.views);
                }
            }
        }
        for _ in 0..2 {
            // Set up first: it may find a bitmap lost and change the state.
            self.ready(g)?;
            let generation = g.st.generation.wrapping_add(1).max(1);
            let disks: Vec<SwitchDisk> = self
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| SwitchDisk {
                    node: d.node.clone(),
                    previous_bitmap: g
                        .st
                        .disks
                        .get(&d.name)
                        .filter(|s| s.node == d.node)
                        .and_then(|s| s.bitmap.clone()),
                    copy: self.copy_wanted(i),
                })
                .collect();
            let r = {
                let (qmp, fleecer) = self.ready(g)?;
                fleecer.prepare(qmp, generation, &disks)
            };
            match r {
                Ok(views) => return Ok((generation, views)),
                Err(FleeceError::BitmapLost {
                    node,
                    bitmap,
                    reason,
                }) => {
                    let Some(d) = self.disks.iter().find(|d| d.node == node) else {
                        return Err(source_err(
                            &self.name,
                            false,
                            format!("bitmap {bitmap} lost on unknown node {node}"),
                        )
                        .into());
                    };
                    let why = format!("dirty bitmap {bitmap} on {node} {reason}");
                    tracing::error!(vm = %self.name, disk = %d.name, reason = %why,
                                    "resync required: the writes since the last cycle are unknown");
                    self.state
                        .mark_resync(&d.name, &why)
                        .map_err(|e| source_err(&self.name, true, e.to_string()))?;
                    if let Some(q) = g.qmp.as_mut() {
                        remove_all_bitmaps(q, std::slice::from_ref(&node))
                            .map_err(|e| self.fleece_err(e))?;
                    }
                    g.st.disks.insert(
                        d.name.clone(),
                        DiskState {
                            node: node.clone(),
                            bitmap: None,
                        },
                    );
                    self.save(&g.st)?;
                }
                Err(FleeceError::BitmapExists { .. }) => {
                    // A generation a crashed run used without recording it: skip past it.
                    g.st.generation = generation;
                    self.save(&g.st)?;
                }
                Err(e @ FleeceError::NoRoom { .. }) => return Err(Blocked::NoRoom(e.to_string())),
                Err(e) => return Err(self.fleece_err(e).into()),
            }
        }
        Err(source_err(
            &self.name,
            true,
            "the switch did not settle; retrying".into(),
        )
        .into())
    }

    /// After the transaction: exports the views and records the switch (its generation,
    /// the bitmap of each disk that had none: its next read is a full one from this view).
    fn export_locked(
        &self,
        g: &mut Inner,
        generation: u32,
        views: Vec<View>,
    ) -> Result<Vec<View>, SendError> {
        {
            let (qmp, fleecer) = self.ready(g)?;
            fleecer
                .export(qmp, &views)
                .map_err(|e| self.fleece_err(e))?;
        }
        g.st.generation = generation;
        for (d, v) in self.disks.iter().zip(&views) {
            if v.previous_bitmap.is_none() {
                g.st.disks.insert(
                    d.name.clone(),
                    DiskState {
                        node: d.node.clone(),
                        bitmap: Some(v.bitmap.clone()),
                    },
                );
            }
        }
        self.save(&g.st)?;
        g.dropped = vec![false; views.len()];
        g.views = views.clone();
        Ok(views)
    }

    /// Removes disk `index`'s view of the switch in progress (export, snapshot node, job
    /// with its filter, scratch image) before its cycle ships: its bytes are in the cycle's
    /// spool (`super::spool`). The bitmaps stay (the cycle's until it commits). Once every
    /// view of the switch is gone, the guest's writes no longer wait for copy-before-write:
    /// said as at the switch's end. A lost QMP session is left to the switch's end.
    pub fn drop_view(&self, index: usize) -> Result<(), SendError> {
        let mut g = self.lock();
        let Some(v) = g.views.get(index).cloned() else {
            return Ok(());
        };
        let r = {
            let Inner { qmp, fleecer, .. } = &mut *g;
            let (Some(qmp), Some(f)) = (qmp.as_mut(), fleecer.as_ref()) else {
                return Ok(());
            };
            f.teardown(qmp, std::slice::from_ref(&v), false)
                .map_err(|e| self.fleece_err(e))
        };
        match &r {
            Ok(()) => {
                if let Some(d) = g.dropped.get_mut(index) {
                    *d = true;
                }
                if g.dropped.iter().all(|&d| d) {
                    info!(vm = %self.name, generation = v.generation, disks = g.views.len(),
                          early = true, "qemu views removed");
                }
            }
            Err(e) => self.on_error(&mut g, e),
        }
        r
    }

    /// Disk `index`'s cycle (or copy, or resync) from the current view committed: its
    /// unshipped writes are now those of `bitmap`, the bitmap the switch started.
    pub fn advance(&self, index: usize, bitmap: &str) -> Result<(), SendError> {
        let mut g = self.lock();
        let d = &self.disks[index];
        g.st.disks.insert(
            d.name.clone(),
            DiskState {
                node: d.node.clone(),
                bitmap: Some(bitmap.to_string()),
            },
        );
        self.save(&g.st)
    }

    /// Removes the switch's views (exports, snapshot nodes, jobs, scratch images). For
    /// each disk whose part committed (`advanced`), its previous bitmap goes too; for the
    /// others, the bitmap the switch started is merged back into the previous one, which
    /// records again, so their next cycle ships these writes as well.
    pub fn finish_switch(&self, advanced: &[bool]) -> Result<(), SendError> {
        let mut g = self.lock();
        let r = self.finish_locked(&mut g, advanced);
        if let Err(e) = &r {
            self.on_error(&mut g, e);
        }
        r
    }

    fn finish_locked(&self, g: &mut Inner, advanced: &[bool]) -> Result<(), SendError> {
        let views = std::mem::take(&mut g.views);
        if g.fleecer.is_none() {
            // The session was lost since the switch (qemu restarted): the views went with
            // it, and setting up again removes what is left and takes bitmaps back.
            self.ready(g)?;
            return Ok(());
        }
        let (qmp, fleecer) = self.ready(g)?;
        let fe = |e| self.fleece_err(e);
        for (i, v) in views.iter().enumerate() {
            let done = advanced.get(i).copied().unwrap_or(false);
            fleecer
                .teardown(qmp, std::slice::from_ref(v), done)
                .map_err(fe)?;
            if !done {
                if let Some(prev) = &v.previous_bitmap {
                    reconcile_bitmaps(qmp, &v.node, prev).map_err(fe)?;
                }
            }
        }
        // From the switch's line to this one the guest's first write to each block waited
        // for its copy-before-write: the views' cost window (`vdrep-bench qemu-latency`).
        if let Some(v) = views.first() {
            info!(vm = %self.name, generation = v.generation, disks = views.len(),
                  "qemu views removed");
        }
        Ok(())
    }
}

/// What a switch gave.
pub enum Switched {
    /// The views, in disk order.
    Views(Vec<View>),
    /// The scratch filesystem cannot hold the disks' full size: no view was taken (a full
    /// copy-before-write target would fail the guest's writes); the cycle waits.
    NoRoom(String),
}

/// Why `switch_locked` took no views.
enum Blocked {
    NoRoom(String),
    Failed(SendError),
}

impl From<SendError> for Blocked {
    fn from(e: SendError) -> Blocked {
        Blocked::Failed(e)
    }
}

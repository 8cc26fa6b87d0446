//! The store work a receiver session asks for ([`Effect`]), performed on blocking threads,
//! and its outcome handed back as a [`Done`]. What is refused before any store work is the
//! session's business; what the store refuses (the replica's lifecycle, a full disk) comes
//! back as a [`Refusal`] with the class the sender acts on ([`super::control::class_of`]).

use std::sync::Arc;

use tracing::warn;
use vdrep_proto::session::receiver::{Done, Effect, OpenedReplica};
use vdrep_proto::session::Refusal;
use vdrep_proto::wire::ErrorClass;

use super::control::{refusal, ConnState};
use super::disk::DiskSession;
use super::Receiver;
use crate::sink::{DiskKey, SinkError};

impl Receiver {
    /// Performs `effect`; a disk it opens is left in `opened` until the session names its
    /// handle.
    pub(super) async fn perform(
        &self,
        conn: &ConnState,
        effect: Effect,
        opened: &mut Option<Arc<DiskSession>>,
    ) -> Done {
        let disk = |handle: u32| {
            conn.disk(handle).ok_or_else(|| {
                Refusal::new(
                    ErrorClass::Internal,
                    format!("disk handle {handle} has no open replica"),
                )
            })
        };
        match effect {
            Effect::OpenReplica {
                vm,
                disk,
                virtual_size,
                source_id,
                full_copy,
                vm_disks,
            } => Done::Opened(match self.check_disk_set(&vm, vm_disks).await {
                Err(r) => Err(r),
                Ok(()) => self
                    .open(conn, &vm, &disk, virtual_size, source_id, full_copy)
                    .await
                    .map(|(s, r)| {
                        *opened = Some(s);
                        r
                    }),
            }),
            Effect::CommitInitial { handle } => Done::InitialCommitted(match disk(handle) {
                Ok(s) => s.commit_initial().await.map_err(|e| refusal(&e)),
                Err(r) => Err(r),
            }),
            Effect::BeginCycle { handle, cycle } => Done::CycleOpened(match disk(handle) {
                Ok(s) => s.begin_cycle(cycle).await.map_err(|e| refusal(&e)),
                Err(r) => Err(r),
            }),
            Effect::CommitCycle {
                handle,
                cycle,
                bytes,
                digest,
                retention_secs,
            } => Done::CycleCommitted(match disk(handle) {
                Ok(s) => {
                    let point = crate::sink::RecoveryPoint {
                        cycle,
                        created_unix: super::disk::unix_now(),
                        bytes,
                        digest,
                    };
                    s.commit_cycle(point, retention_secs)
                        .await
                        .map_err(|e| refusal(&e))
                }
                Err(r) => Err(r),
            }),
            Effect::Hashes {
                handle,
                level,
                parents,
                verify,
            } => Done::Hashes(match disk(handle) {
                Ok(s) => s
                    .hashes(level, parents, verify)
                    .await
                    .map_err(|m| Refusal::new(ErrorClass::Internal, m)),
                Err(r) => Err(r),
            }),
            Effect::Root { handle } => Done::Root(match disk(handle) {
                Ok(s) => s
                    .root()
                    .await
                    .map_err(|m| Refusal::new(ErrorClass::Internal, m)),
                Err(r) => Err(r),
            }),
            Effect::RecordJob { job } => {
                let store = self.store.clone();
                Done::JobRecorded(
                    match tokio::task::spawn_blocking(move || store.record_job(&job)).await {
                        Ok(r) => r.map_err(|e| refusal(&e)),
                        Err(e) => Err(Refusal::new(
                            ErrorClass::Internal,
                            format!("job task failed: {e}"),
                        )),
                    },
                )
            }
            Effect::ClaimGroup { group, vms, .. } => Done::GroupClaimed(
                match super::groups::claim(&self.groups, &group, &conn.sender, &vms, &conn.conn) {
                    Ok(()) => {
                        // The newest group cycle the members' points hold: the sender
                        // numbers its switches above it even if its own record is lost.
                        let (store, g) = (self.store.clone(), group.clone());
                        match tokio::task::spawn_blocking(move || {
                            super::groups::newest_group_cycle(store.as_ref(), &g, &vms)
                        })
                        .await
                        {
                            Ok(r) => r.map_err(|e| refusal(&e)),
                            Err(e) => Err(Refusal::new(
                                ErrorClass::Internal,
                                format!("group claim task failed: {e}"),
                            )),
                        }
                    }
                    Err(r) => {
                        warn!(sender = %conn.sender, %group, reason = %r.message,
                              "consistency group claim refused");
                        Err(r)
                    }
                },
            ),
            Effect::CommitPoint {
                vm,
                vm_cycle,
                switch_unix_ms,
                group,
                group_cycle,
                retention_secs,
                disks,
                one_instant,
            } => {
                let store = self.store.clone();
                let point = crate::sink::vm_points::VmPoint {
                    vm_cycle,
                    switch_unix_ms,
                    committed_unix: super::disk::unix_now(),
                    group,
                    group_cycle,
                    // Initial copies (cycle 0) are made disk after disk, not one instant,
                    // unless the sender read them all at one instant (a qemu switch).
                    consistent: one_instant || disks.iter().all(|d| d.cycle > 0),
                    disks: disks
                        .iter()
                        .map(|d| {
                            crate::sink::vm_points::PointPart::new(
                                &d.disk, d.cycle, d.bytes, &d.digest,
                            )
                        })
                        .collect(),
                };
                let switch_unix = switch_unix_ms / 1000;
                let name = vm.clone();
                Done::PointCommitted(
                    match tokio::task::spawn_blocking(move || {
                        crate::sink::vm_points::commit(store.as_ref(), &vm, point, retention_secs)
                    })
                    .await
                    {
                        Ok(r) => r
                            .inspect(|_| {
                                // The VM's RPO, for each of its disks, is this point's age.
                                crate::metrics::events::vm_point(&name, switch_unix)
                            })
                            .map_err(|e| refusal(&e)),
                        Err(e) => Err(Refusal::new(
                            ErrorClass::Internal,
                            format!("VM point task failed: {e}"),
                        )),
                    },
                )
            }
            Effect::QueryCapacity { .. } => {
                let store = self.store.clone();
                Done::Capacity(
                    match tokio::task::spawn_blocking(move || store.available_bytes()).await {
                        Ok(r) => r.map_err(|e| refusal(&e)),
                        Err(e) => Err(Refusal::new(
                            ErrorClass::Internal,
                            format!("capacity task failed: {e}"),
                        )),
                    },
                )
            }
        }
    }

    /// Refuses the open when the store holds a disk of `vm` that the sender's disk set does
    /// not name ([`super::disk_set`]); an empty set (not said) passes.
    async fn check_disk_set(&self, vm: &str, vm_disks: Vec<String>) -> Result<(), Refusal> {
        if vm_disks.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let vm = vm.to_string();
        tokio::task::spawn_blocking(move || {
            let held: Vec<String> = store
                .list_disks(Some(&vm))
                .map_err(|e| refusal(&e))?
                .into_iter()
                .map(|k| k.disk)
                .collect();
            super::disk_set::check(&vm, &store.describe(), &held, &vm_disks)
        })
        .await
        .map_err(|e| Refusal::new(ErrorClass::Internal, format!("disk set check failed: {e}")))?
    }

    /// Opens (creating if needed) a replica at the store and wraps it for writing.
    async fn open(
        &self,
        conn: &ConnState,
        vm: &str,
        disk: &str,
        virtual_size: u64,
        source_id: vdrep_proto::Guid,
        full_copy: bool,
    ) -> Result<(Arc<DiskSession>, OpenedReplica), Refusal> {
        let key = DiskKey::new(vm, disk)
            .map_err(|e| Refusal::new(ErrorClass::InvalidState, e.to_string()))?;
        self.take_over_from_own_stale_connection(conn, &key.to_string())
            .await;
        let store = self.store.clone();
        let k2 = key.clone();
        let (replica, index) = tokio::task::spawn_blocking(move || {
            let r = store.open_disk(&k2, virtual_size, source_id)?;
            let st = r.state();
            // A full copy resumes an uncommitted one, or starts a new generation beside the
            // committed replica, which stays intact until the new copy commits.
            if !st.initial_in_progress && (!st.initial_committed || full_copy) {
                r.begin_initial()?;
            }
            // A copy with no durable progress starts from a fresh all-zero file, whose
            // hashes are known; anything else is described by the durable index, if valid.
            let st = r.state();
            let fresh = st.initial_in_progress && st.progress.is_empty();
            let index = crate::resync::index::Index::open(
                r.resync_index(),
                virtual_size,
                st.generation,
                fresh,
            );
            Ok::<_, SinkError>((r, index))
        })
        .await
        .map_err(|e| Refusal::new(ErrorClass::Internal, format!("open task failed: {e}")))?
        .map_err(|e| refusal(&e))?;
        let st = replica.state();
        let session = Arc::new(DiskSession::new(
            replica,
            st.generation,
            virtual_size,
            st.progress.clone(),
            index,
        ));
        if let Ok(mut h) = self.holders.lock() {
            h.insert(
                key.to_string(),
                super::Holder {
                    sender: conn.sender.clone(),
                    conn: conn.conn.clone(),
                },
            );
        }
        // The working image of an in-progress copy starts as an empty sparse file.
        let opened = OpenedReplica {
            generation: st.generation,
            initial_committed: st.initial_committed,
            committed_cycle: st.committed_cycle,
            initial_in_progress: st.initial_in_progress,
            progress: session.progress_snapshot(),
        };
        Ok((session, opened))
    }

    /// A sender replicates a disk over one connection. When the same sender opens a disk that
    /// an older connection of its own still holds, that process died (kill -9, reboot) or
    /// lost its path, and the receiver has not noticed yet (the idle timeout is 15 s): the
    /// old connection is closed so its final checkpoint runs and the disk's lock is
    /// released. Another sender's connection is never touched (it is refused as busy).
    async fn take_over_from_own_stale_connection(&self, conn: &ConnState, key: &str) {
        let old = self.holders.lock().ok().and_then(|h| {
            h.get(key)
                .filter(|o| o.sender == conn.sender && o.conn.stable_id() != conn.conn.stable_id())
                .map(|o| o.conn.clone())
        });
        let Some(old) = old else { return };
        warn!(sender = %conn.sender, disk = %key, old_peer = %old.remote_address(),
              "the sender reconnected: closing its previous connection, which still holds the disk");
        old.close(
            crate::transport::close::SUPERSEDED.into(),
            b"superseded by a newer connection of the same sender",
        );
        // Wait (bounded) until that connection's shutdown released the disk; if it takes
        // longer, the store's lock answers "busy" and the sender simply retries.
        let deadline = crate::clock::tokio_now() + std::time::Duration::from_secs(3);
        while crate::clock::tokio_now() < deadline {
            let held = self.holders.lock().map(|h| {
                h.get(key)
                    .is_some_and(|o| o.conn.stable_id() == old.stable_id())
            });
            if !held.unwrap_or(false) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

//! The control stream: hello, disk open, commit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};
use vdrep_proto::wire::{
    self, BatchStart, Control, ErrorClass, EXTENT_HEADER_LEN, K_BATCH_START, MAX_CONTROL_BODY,
    MAX_EXTENT_PAYLOAD,
};

use super::disk::{checkpoint_loop, DiskSession};
use super::Receiver;

mod limits;
use crate::sink::{DiskKey, SinkError};
use crate::transport::{read_frame, write_frame, FrameError};

/// Most text one recorded job may hold (ids, names, details, error).
const MAX_JOB_BYTES: usize = 64 << 10;

/// Per-connection state: the authenticated sender and its open disks.
pub struct ConnState {
    pub(crate) sender: String,
    pub(crate) conn: quinn::Connection,
    disks: Mutex<HashMap<u32, Arc<DiskSession>>>,
    sessions: Arc<Mutex<Vec<Arc<DiskSession>>>>,
    next_handle: Mutex<u32>,
    stop: Arc<tokio::sync::Notify>,
    checkpointer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ConnState {
    pub(crate) fn new(sender: String, conn: quinn::Connection) -> Self {
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(tokio::sync::Notify::new());
        let h = tokio::spawn(checkpoint_loop(sessions.clone(), stop.clone()));
        ConnState {
            sender,
            conn,
            disks: Mutex::new(HashMap::new()),
            sessions,
            next_handle: Mutex::new(1),
            stop,
            checkpointer: Mutex::new(Some(h)),
        }
    }

    pub(crate) fn disk(&self, handle: u32) -> Option<Arc<DiskSession>> {
        self.disks.lock().ok()?.get(&handle).cloned()
    }

    /// Final checkpoint of every disk when the connection ends, so progress acknowledged to
    /// the sender is kept for its reconnect.
    pub(crate) async fn shutdown(&self) {
        self.stop.notify_one();
        let h = self.checkpointer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = h {
            let _ = h.await;
        }
        let list: Vec<_> = self.sessions.lock().map(|s| s.clone()).unwrap_or_default();
        for s in list {
            if let Err(e) = s.close().await {
                warn!(disk = %s.replica.key(), error = %e, "final checkpoint failed");
            }
        }
        if let Ok(mut d) = self.disks.lock() {
            d.clear();
        }
        if let Ok(mut s) = self.sessions.lock() {
            s.clear();
        }
    }
}

/// The wire class of a store failure: a full target and a busy one are retried by the
/// sender, everything else needs an operator.
pub(crate) fn class_of(e: &SinkError) -> ErrorClass {
    match e {
        SinkError::Io { source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ) =>
        {
            ErrorClass::TargetFull
        }
        SinkError::SizeMismatch { .. } => ErrorClass::SizeChanged,
        e if e.is_recoverable() => ErrorClass::TargetBusy,
        _ => ErrorClass::InvalidState,
    }
}

fn unknown_handle(req: u32, handle: u32) -> Control {
    Control::Error {
        req,
        class: ErrorClass::Protocol,
        message: format!("unknown disk handle {handle}"),
    }
}

impl Receiver {
    /// Dispatches a new stream by its first frame.
    pub(crate) async fn handle_stream(
        self: Arc<Self>,
        conn: Arc<ConnState>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let max = (EXTENT_HEADER_LEN as u32 + MAX_EXTENT_PAYLOAD).max(MAX_CONTROL_BODY);
        let (kind, body) = match read_frame(&mut recv, max).await {
            Ok(f) => f,
            Err(FrameError::End) => return,
            Err(e) => {
                warn!(sender = %conn.sender, error = %e, "bad first frame on a stream");
                return;
            }
        };
        if kind == K_BATCH_START {
            match BatchStart::decode(&body) {
                Ok(b) => self.handle_batch(conn, b, send, recv).await,
                Err(e) => warn!(sender = %conn.sender, error = %e, "malformed batch start"),
            }
            return;
        }
        let first = match Control::decode(kind, &body) {
            Ok(m) => m,
            Err(e) => {
                warn!(sender = %conn.sender, error = %e, "malformed control frame");
                return;
            }
        };
        if let Err(e) = self.control_loop(&conn, first, &mut send, &mut recv).await {
            if e.is_peer_close() {
                tracing::debug!(sender = %conn.sender, "control stream closed by the sender");
            } else {
                warn!(sender = %conn.sender, error = %e, "control stream ended");
            }
        }
    }

    async fn control_loop(
        &self,
        conn: &ConnState,
        first: Control,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), FrameError> {
        let mut msg = first;
        loop {
            let reply = self.answer(conn, msg).await;
            write_frame(send, &reply.encode()).await?;
            if let Control::Error {
                class: ErrorClass::VersionMismatch | ErrorClass::Protocol,
                ..
            } = reply
            {
                let _ = send.finish();
                return Ok(());
            }
            let (kind, body) = read_frame(recv, MAX_CONTROL_BODY).await?;
            msg = Control::decode(kind, &body)?;
        }
    }

    async fn answer(&self, conn: &ConnState, msg: Control) -> Control {
        match msg {
            Control::Hello {
                min_version,
                max_version,
                software,
            } => match wire::negotiate(min_version, max_version) {
                Some(version) => {
                    info!(sender = %conn.sender, %software, version, "hello");
                    Control::HelloAck { version }
                }
                None => Control::Error {
                    req: 0,
                    class: ErrorClass::VersionMismatch,
                    message: format!(
                        "sender speaks protocol versions {min_version}..={max_version}, this \
                         receiver {}..={}: upgrade the older side",
                        wire::MIN_PROTOCOL_VERSION,
                        wire::PROTOCOL_VERSION
                    ),
                },
            },
            Control::OpenDisk {
                req,
                vm,
                disk,
                virtual_size,
                source_id,
                full_copy,
            } => {
                if !self.allow.allows(&conn.sender, &vm) {
                    self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::events::refused_peer("unauthorized_vm");
                    warn!(sender = %conn.sender, %vm, %disk, "refused: sender is not authorised for this VM");
                    return Control::Error {
                        req,
                        class: ErrorClass::Unauthorized,
                        message: format!(
                            "sender {} is not authorised for VM {vm} on this receiver",
                            conn.sender
                        ),
                    };
                }
                match self
                    .open(conn, &vm, &disk, virtual_size, source_id, full_copy)
                    .await
                {
                    Ok((handle, s, committed, cycle, known_empty)) => {
                        s.export_points().await;
                        Control::DiskOpened {
                            req,
                            handle,
                            initial_committed: committed,
                            committed_cycle: cycle,
                            generation: s.generation,
                            known_empty,
                            progress: s
                                .progress_snapshot()
                                .iter()
                                .map(|r| (r.start, r.end))
                                .collect(),
                        }
                    }
                    Err(e) => Control::Error {
                        req,
                        class: e.0,
                        message: e.1,
                    },
                }
            }
            Control::CommitInitial {
                req,
                handle,
                generation,
            } => {
                let Some(s) = conn.disk(handle) else {
                    return Control::Error {
                        req,
                        class: ErrorClass::Protocol,
                        message: format!("unknown disk handle {handle}"),
                    };
                };
                if s.generation != generation {
                    return Control::Error {
                        req,
                        class: ErrorClass::InvalidState,
                        message: format!(
                            "commit of copy generation {generation}, but generation {} is open",
                            s.generation
                        ),
                    };
                }
                match s.commit_initial().await {
                    Ok(()) => {
                        info!(sender = %conn.sender, disk = %s.replica.key(), "initial replication committed");
                        s.export_points().await;
                        Control::Committed {
                            req,
                            handle,
                            cycle: 0,
                        }
                    }
                    Err(e) => Control::Error {
                        req,
                        class: class_of(&e),
                        message: e.to_string(),
                    },
                }
            }
            Control::BeginCycle { req, handle, cycle } => {
                let Some(s) = conn.disk(handle) else {
                    return unknown_handle(req, handle);
                };
                match s.begin_cycle(cycle).await {
                    Ok(progress) => Control::CycleOpened {
                        req,
                        handle,
                        cycle,
                        progress: progress.iter().map(|r| (r.start, r.end)).collect(),
                    },
                    Err(e) => Control::Error {
                        req,
                        class: class_of(&e),
                        message: e.to_string(),
                    },
                }
            }
            Control::CommitCycle {
                req,
                handle,
                cycle,
                bytes,
                digest,
                retention_secs,
            } => {
                let Some(s) = conn.disk(handle) else {
                    return unknown_handle(req, handle);
                };
                let point = crate::sink::RecoveryPoint {
                    cycle,
                    created_unix: super::disk::unix_now(),
                    bytes,
                    digest,
                };
                match s
                    .commit_cycle(point, retention_secs.min(86_400) as u64)
                    .await
                {
                    Ok(pruned) => {
                        info!(sender = %conn.sender, disk = %s.replica.key(), cycle, bytes,
                              pruned = pruned.len(), "cycle committed as a recovery point");
                        s.export_points().await;
                        Control::Committed { req, handle, cycle }
                    }
                    Err(e) => Control::Error {
                        req,
                        class: class_of(&e),
                        message: e.to_string(),
                    },
                }
            }
            Control::HashRequest {
                req,
                handle,
                level,
                parents,
                verify,
            } => {
                let Some(s) = conn.disk(handle) else {
                    return unknown_handle(req, handle);
                };
                if s.replica.state().initial_in_progress {
                    return Control::Error {
                        req,
                        class: ErrorClass::InvalidState,
                        message:
                            "resync needs a committed replica, but an initial copy is in progress"
                                .into(),
                    };
                }
                match s.hashes(level, parents, verify).await {
                    Ok(hashes) if hashes.len() <= wire::MAX_HASHES => Control::Hashes {
                        req,
                        handle,
                        level,
                        hashes,
                    },
                    Ok(_) => Control::Error {
                        req,
                        class: ErrorClass::Protocol,
                        message: "too many hashes asked for at once".into(),
                    },
                    Err(message) => Control::Error {
                        req,
                        class: ErrorClass::Internal,
                        message,
                    },
                }
            }
            Control::RootRequest { req, handle } => {
                let Some(s) = conn.disk(handle) else {
                    return unknown_handle(req, handle);
                };
                match s.root().await {
                    Ok(root) => Control::Root { req, handle, root },
                    Err(message) => Control::Error {
                        req,
                        class: ErrorClass::Internal,
                        message,
                    },
                }
            }
            Control::ReportJob { req, job } => self.record_job(conn, req, job).await,
            Control::QueryCapacity { req, vm, needed } => {
                if let Some(e) = self.refuse_vm(conn, req, &vm) {
                    return e;
                }
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.available_bytes()).await {
                    Ok(Ok(a)) => {
                        let available = a.unwrap_or(u64::MAX);
                        info!(sender = %conn.sender, %vm, needed, available, "capacity check");
                        Control::Capacity { req, available }
                    }
                    Ok(Err(e)) => Control::Error {
                        req,
                        class: class_of(&e),
                        message: e.to_string(),
                    },
                    Err(e) => Control::Error {
                        req,
                        class: ErrorClass::Internal,
                        message: format!("capacity task failed: {e}"),
                    },
                }
            }
            other => Control::Error {
                req: 0,
                class: ErrorClass::Protocol,
                message: format!("unexpected control message from a sender: {other:?}"),
            },
        }
    }

    /// The refusal for a VM this sender is not authorised for, if it is not.
    fn refuse_vm(&self, conn: &ConnState, req: u32, vm: &str) -> Option<Control> {
        if self.allow.allows(&conn.sender, vm) {
            return None;
        }
        self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        warn!(sender = %conn.sender, %vm, "refused: sender is not authorised for this VM");
        Some(Control::Error {
            req,
            class: ErrorClass::Unauthorized,
            message: format!(
                "sender {} is not authorised for VM {vm} on this receiver",
                conn.sender
            ),
        })
    }

    /// Records a sender's job in the store beside the VM's replicas.
    async fn record_job(&self, conn: &ConnState, req: u32, job: wire::JobReport) -> Control {
        if let Some(e) = self.refuse_vm(conn, req, &job.vm) {
            return e;
        }
        // A VM keeps 100 jobs: bounding each keeps its job file small whatever a sender
        // sends (a frame alone may hold 1 MiB).
        let bytes: usize = job.id.len()
            + job.error.as_ref().map_or(0, |e| e.message.len())
            + job
                .steps
                .iter()
                .map(|s| s.name.len() + s.detail.len() + 32)
                .sum::<usize>();
        if bytes > MAX_JOB_BYTES {
            return Control::Error {
                req,
                class: ErrorClass::InvalidState,
                message: format!(
                    "job {} of VM {} holds {bytes} bytes of text, more than the {MAX_JOB_BYTES} a job may",
                    job.id, job.vm
                ),
            };
        }
        let job = crate::jobs::Job::from_report(&job);
        let store = self.store.clone();
        let (id, vm, state) = (job.id.clone(), job.vm.clone(), job.state);
        match tokio::task::spawn_blocking(move || store.record_job(&job)).await {
            Ok(Ok(())) => {
                tracing::debug!(sender = %conn.sender, %vm, job = %id, state = state.as_str(), "job recorded");
                Control::JobRecorded { req }
            }
            Ok(Err(e)) => Control::Error {
                req,
                class: class_of(&e),
                message: e.to_string(),
            },
            Err(e) => Control::Error {
                req,
                class: ErrorClass::Internal,
                message: format!("job task failed: {e}"),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn open(
        &self,
        conn: &ConnState,
        vm: &str,
        disk: &str,
        virtual_size: u64,
        source_id: vdrep_proto::Guid,
        full_copy: bool,
    ) -> Result<(u32, Arc<DiskSession>, bool, u64, bool), (ErrorClass, String)> {
        let key = DiskKey::new(vm, disk).map_err(|e| (ErrorClass::InvalidState, e.to_string()))?;
        conn.check_disk_limit(&key, self.max_disks_per_connection.load(Ordering::Relaxed))?;
        self.take_over_from_own_stale_connection(conn, &key.to_string())
            .await;
        let store = self.store.clone();
        let k2 = key.clone();
        let replica = tokio::task::spawn_blocking(move || {
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
        .map_err(|e| (ErrorClass::Internal, format!("open task failed: {e}")))?
        .map_err(|e| (class_of(&e), e.to_string()))?;
        let (replica, index) = replica;
        let st = replica.state();
        let session = Arc::new(DiskSession::new(
            replica,
            st.generation,
            virtual_size,
            st.progress.clone(),
            index,
        ));
        let handle = {
            let mut h = conn
                .next_handle
                .lock()
                .map_err(|_| (ErrorClass::Internal, "lock poisoned".to_string()))?;
            let v = *h;
            *h += 1;
            v
        };
        if let Ok(mut d) = conn.disks.lock() {
            d.insert(handle, session.clone());
        }
        if let Ok(mut s) = conn.sessions.lock() {
            s.push(session.clone());
        }
        if let Ok(mut h) = self.holders.lock() {
            h.insert(
                key.to_string(),
                super::Holder {
                    sender: conn.sender.clone(),
                    conn: conn.conn.clone(),
                },
            );
        }
        info!(sender = %conn.sender, disk = %key, generation = st.generation,
              resumed_bytes = st.progress.covered_len(), "disk opened");
        // The working image of an in-progress copy starts as an empty sparse file.
        Ok((
            handle,
            session,
            st.initial_committed,
            st.committed_cycle,
            st.initial_in_progress,
        ))
    }
}

impl Receiver {
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
            3u32.into(),
            b"superseded by a newer connection of the same sender",
        );
        // Wait (bounded) until that connection's shutdown released the disk; if it takes
        // longer, the store's lock answers "busy" and the sender simply retries.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline {
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

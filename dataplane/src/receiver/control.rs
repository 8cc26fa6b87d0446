//! The driver of a connection's protocol session: it reads frames off QUIC streams, feeds
//! them to the [`ReceiverSession`] (`vdrep_proto::session`), performs the store work the
//! session asks for ([`super::effects`]) and sends its answers. Every protocol decision —
//! versions, authorisation, handles, generations, refusals and their classes — is the
//! session's; this file only moves bytes and logs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tracing::{info, warn};
use vdrep_proto::session::receiver::{Body, ControlStep, FirstStep, Report};
use vdrep_proto::session::{Authorizations, ReceiverSession, Refusal, StreamId};
use vdrep_proto::wire::{
    Control, ErrorClass, EXTENT_HEADER_LEN, MAX_CONTROL_BODY, MAX_EXTENT_PAYLOAD,
};

use super::disk::DiskSession;
use super::limits::FramePermits;
use super::Receiver;
use crate::sink::SinkError;
use crate::transport::{read_body, read_body_parts, read_frame_header, write_frame, FrameError};

/// Per-connection state: the protocol session and the IO state of its open disks.
pub struct ConnState {
    pub(crate) sender: String,
    pub(crate) conn: quinn::Connection,
    /// The protocol; locked only to feed it (no IO under the lock).
    session: Mutex<ReceiverSession>,
    /// The IO state of each disk the session opened, under the session's handle.
    disks: Mutex<HashMap<u32, Arc<DiskSession>>>,
    sessions: Arc<Mutex<Vec<Arc<DiskSession>>>>,
    stop: Arc<tokio::sync::Notify>,
    checkpointer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This connection's share of the receiver's frame budget.
    pub(crate) frames: Arc<tokio::sync::Semaphore>,
    /// The session's time origin: it is given monotonic time as the duration since this.
    origin: tokio::time::Instant,
    /// The stream credit of the connection's data streams, and its control streams open
    /// now: each gets credit of its own on top, up to the connection's disk limit (a VM
    /// has one control stream and at least one disk), so many VMs cannot spend the data
    /// streams' credit on their control streams (`receiver/windows.rs`, "Streams").
    data_streams: u64,
    control_streams: Mutex<u64>,
    max_control_streams: u64,
}

impl ConnState {
    /// The state of a new connection, its checkpoint timer running.
    pub(crate) fn new(
        sender: String,
        conn: quinn::Connection,
        allow: &Authorizations,
        max_disks: usize,
        frames: Arc<tokio::sync::Semaphore>,
        data_streams: u64,
    ) -> Arc<Self> {
        let state = Arc::new(ConnState {
            session: Mutex::new(ReceiverSession::new(&sender, allow).with_max_disks(max_disks)),
            sender,
            conn,
            disks: Mutex::new(HashMap::new()),
            sessions: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(tokio::sync::Notify::new()),
            checkpointer: Mutex::new(None),
            frames,
            origin: crate::clock::tokio_now(),
            data_streams,
            control_streams: Mutex::new(0),
            max_control_streams: max_disks as u64,
        });
        let h = tokio::spawn(checkpoint_loop(Arc::downgrade(&state), state.stop.clone()));
        if let Ok(mut c) = state.checkpointer.lock() {
            *c = Some(h);
        }
        state
    }

    /// A control stream began (`+1`) or ended (`-1`): the connection's stream credit
    /// follows, so the control streams open never take the data streams' credit.
    fn control_stream(&self, delta: i64) {
        let Ok(mut n) = self.control_streams.lock() else {
            return;
        };
        *n = n.saturating_add_signed(delta);
        let credit = self.data_streams + (*n).min(self.max_control_streams);
        self.conn.set_max_concurrent_bi_streams(
            quinn::VarInt::from_u64(credit).unwrap_or(quinn::VarInt::MAX),
        );
    }

    /// Monotonic time as the session takes it: since this connection's start.
    fn session_now(&self) -> std::time::Duration {
        crate::clock::tokio_now().saturating_duration_since(self.origin)
    }

    pub(crate) fn disk(&self, handle: u32) -> Option<Arc<DiskSession>> {
        self.disks.lock().ok()?.get(&handle).cloned()
    }

    /// Keeps the IO state of a disk the session just opened as `handle`.
    pub(crate) fn register(&self, handle: u32, s: Arc<DiskSession>) {
        if let Ok(mut d) = self.disks.lock() {
            d.insert(handle, s.clone());
        }
        if let Ok(mut l) = self.sessions.lock() {
            l.push(s);
        }
    }

    /// Feeds the session; a poisoned lock (a panic elsewhere) ends the stream.
    pub(crate) fn with_session<T>(
        &self,
        f: impl FnOnce(&mut ReceiverSession) -> T,
    ) -> Result<T, Refusal> {
        self.session
            .lock()
            .map(|mut s| f(&mut s))
            .map_err(|_| Refusal::new(ErrorClass::Internal, "session lock poisoned"))
    }

    fn step(&self, f: impl FnOnce(&mut ReceiverSession) -> ControlStep) -> ControlStep {
        self.with_session(f)
            .unwrap_or_else(|r| ControlStep::Answer {
                answer: Control::Error {
                    req: 0,
                    class: r.class,
                    message: r.message,
                },
                close: true,
                report: None,
            })
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

/// Runs the session's checkpoint timer until `stop` fires: sleeps until the session's
/// next timeout, hands it the time, checkpoints the disks of the round it answers (each
/// records only what is durable already; a clean disk has nothing to do) and reports the
/// round done. When and which disks are the session's decisions (`receiver/timer.rs` in
/// `vdrep-proto`, where they are tested with time as a value); this only sleeps and does IO.
async fn checkpoint_loop(conn: Weak<ConnState>, stop: Arc<tokio::sync::Notify>) {
    loop {
        // Always armed here: this loop is the only caller of `handle_timeout` and reports
        // every round done before it asks again. A connection gone ends the loop.
        let Some((origin, due)) = conn.upgrade().and_then(|c| {
            let due = c.with_session(|s| s.poll_timeout()).ok().flatten()?;
            Some((c.origin, due))
        }) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(origin + due) => {}
            _ = stop.notified() => return,
        }
        let Some(c) = conn.upgrade() else { return };
        let Ok(round) = c.with_session(|s| s.handle_timeout(c.session_now())) else {
            return;
        };
        let Some(round) = round else { continue };
        for h in round.handles {
            let Some(d) = c.disk(h) else { continue };
            if let Err(e) = d.checkpoint(false).await {
                warn!(disk = %d.replica.key(), error = %e, "checkpoint failed");
            }
        }
        let now = c.session_now();
        if c.with_session(|s| s.checkpoints_done(now)).is_err() {
            return;
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
        e if crate::error::Classify::is_transient(e) => ErrorClass::TargetBusy,
        _ => ErrorClass::InvalidState,
    }
}

/// A store failure as the refusal the sender receives.
pub(crate) fn refusal(e: &SinkError) -> Refusal {
    Refusal::new(class_of(e), e.to_string())
}

impl Receiver {
    /// Serves a new stream: the session says from its first frame whether it is a data
    /// stream (a batch) or a control stream.
    pub(crate) async fn handle_stream(
        self: Arc<Self>,
        conn: Arc<ConnState>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let max = (EXTENT_HEADER_LEN as u32 + MAX_EXTENT_PAYLOAD).max(MAX_CONTROL_BODY);
        let (kind, body, permit) = match self.read_charged(&conn, &mut recv, max).await {
            Ok(f) => f,
            Err(FrameError::End) => return,
            Err(e) => {
                self.refused_stream(&conn.sender, &e, "bad first frame on a stream");
                return;
            }
        };
        let id: StreamId = recv.id().index();
        let first = match conn.with_session(|s| s.handle_first_frame(id, kind, &body)) {
            Ok(f) => f,
            Err(r) => {
                warn!(sender = %conn.sender, error = %r.message, "stream refused");
                return;
            }
        };
        drop(permit);
        let step = match first {
            FirstStep::Batch(batch) => return self.handle_batch(conn, batch, send, recv).await,
            FirstStep::BatchRefused(end) => {
                if let Some((class, message)) = &end.result.error {
                    self.refused(&conn.sender, class.as_str(), message);
                }
                return super::batch::send_result(&conn, end, &mut send, Some(&mut recv)).await;
            }
            FirstStep::Control(step) => step,
        };
        conn.control_stream(1);
        let r = self
            .control_loop(&conn, id, step, &mut send, &mut recv)
            .await;
        conn.control_stream(-1);
        let _ = conn.with_session(|s| s.stream_ended(id));
        if let Err(e) = r {
            if e.is_peer_close() {
                tracing::debug!(sender = %conn.sender, "control stream closed by the sender");
            } else {
                self.refused_stream(&conn.sender, &e, "control stream ended");
            }
        }
    }

    /// Answers a control stream's requests one at a time until it closes.
    async fn control_loop(
        &self,
        conn: &ConnState,
        id: StreamId,
        first: ControlStep,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), FrameError> {
        let mut step = first;
        loop {
            let mut opened = None;
            let (answer, close, report) = loop {
                match step {
                    ControlStep::Perform(effect) => {
                        let done = self.perform(conn, effect, &mut opened).await;
                        step = conn.step(|s| s.handle_done(id, done));
                    }
                    ControlStep::Answer {
                        answer,
                        close,
                        report,
                    } => break (answer, close, report),
                }
            };
            if let Some(r) = report {
                self.report(conn, r, opened.take()).await;
            }
            if let Control::Error { class, message, .. } = &answer {
                self.refused(&conn.sender, class.as_str(), message);
            }
            write_frame(send, &answer.encode()).await?;
            if close {
                let _ = send.finish();
                return Ok(());
            }
            let (kind, body, _permits) = self.read_charged(conn, recv, MAX_CONTROL_BODY).await?;
            step = conn.step(|s| s.handle_control(id, kind, &body));
        }
    }

    /// Reads a frame once the frame budgets hold its body (`limits`): until then the bytes
    /// stay in QUIC, whose flow control holds the peer back.
    pub(crate) async fn read_charged(
        &self,
        conn: &ConnState,
        recv: &mut quinn::RecvStream,
        max: u32,
    ) -> Result<(u8, bytes::Bytes, FramePermits), FrameError> {
        let (kind, body, permits) = self.read_charged_as(conn, recv, max, false).await?;
        Ok((kind, body.to_bytes(), permits))
    }

    /// [`Receiver::read_charged`] with the body in one buffer or, with `parts`, as the
    /// chunks QUIC received it in (a data stream's extents: `read_body_parts`).
    pub(crate) async fn read_charged_as(
        &self,
        conn: &ConnState,
        recv: &mut quinn::RecvStream,
        max: u32,
        parts: bool,
    ) -> Result<(u8, Body, FramePermits), FrameError> {
        let (kind, len) = read_frame_header(recv, max).await?;
        let permits = self.limits.frame_permits(&conn.frames, len as usize).await;
        let deadline = super::limits::body_deadline(len);
        let mut due = crate::clock::tokio_now() + deadline;
        let body = async {
            match parts {
                true => read_body_parts(recv, len).await,
                false => read_body(recv, len, &[]).await.map(Body::from),
            }
        };
        tokio::pin!(body);
        loop {
            tokio::select! {
                b = &mut body => return Ok((kind, b?, permits)),
                _ = tokio::time::sleep_until(due) => {}
            }
            if !self.limits.frames_waiting() {
                // Nobody waits behind this frame: a slow link, or a slow peer that holds
                // nothing anyone needs yet.
                due += super::limits::BODY_RECHECK;
                continue;
            }
            // A trickled body holds permits others wait for: the peer is closed, its
            // permits freed, and it may come back at an honest rate.
            let e = FrameError::Slow {
                len,
                secs: deadline.as_secs(),
            };
            let why = format!(
                "{e}: closed so it cannot hold the frame budget (a body must arrive at \
                 {} KiB/s or more after a grace of {} s)",
                super::limits::MIN_BODY_RATE >> 10,
                super::limits::BODY_GRACE.as_secs()
            );
            self.refused(&conn.sender, "slow_frame", &why);
            conn.conn
                .close(crate::transport::close::SLOW_FRAME.into(), why.as_bytes());
            return Err(e);
        }
    }

    /// A stream that broke on the peer's bytes (malformed or oversized frames, a torn
    /// frame) counts as a refusal of its class.
    pub(crate) fn refused_stream(&self, sender: &str, e: &FrameError, what: &str) {
        if matches!(e, FrameError::Slow { .. }) {
            return; // counted when the connection was closed for it
        }
        let class = if crate::error::Classify::is_transient(e) {
            ErrorClass::Internal
        } else {
            ErrorClass::Protocol
        };
        self.refused(sender, class.as_str(), &format!("{what}: {e}"));
    }

    /// Logs and counts what the session reports; a disk it opened gets its IO state kept
    /// under the new handle before the sender learns the handle.
    async fn report(&self, conn: &ConnState, r: Report, opened: Option<Arc<DiskSession>>) {
        match r {
            Report::Hello { software, version } => {
                info!(sender = %conn.sender, %software, version, "hello");
            }
            Report::Unauthorized { vm } => {
                self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
                warn!(sender = %conn.sender, %vm, "refused: sender is not authorised for this VM");
            }
            Report::DiskOpened {
                handle,
                generation,
                resumed_bytes,
                ..
            } => {
                let Some(s) = opened else { return };
                info!(sender = %conn.sender, disk = %s.replica.key(), generation,
                      resumed_bytes, "disk opened");
                conn.register(handle, s.clone());
                s.export_points().await;
            }
            Report::InitialCommitted { handle } => {
                if let Some(s) = conn.disk(handle) {
                    info!(sender = %conn.sender, disk = %s.replica.key(), "initial replication committed");
                    s.export_points().await;
                }
            }
            Report::CycleCommitted {
                handle,
                cycle,
                bytes,
                pruned,
            } => {
                if let Some(s) = conn.disk(handle) {
                    info!(sender = %conn.sender, disk = %s.replica.key(), cycle, bytes,
                          pruned, "cycle committed as a recovery point");
                    s.export_points().await;
                    super::test_hook::after_disk_commit(&s.replica.key().to_string(), cycle).await;
                }
            }
            Report::PointCommitted {
                vm,
                vm_cycle,
                disks,
                pruned,
            } => {
                info!(sender = %conn.sender, %vm, vm_cycle, disks, pruned,
                      "VM recovery point committed");
            }
            Report::CapacityChecked {
                vm,
                needed,
                available,
            } => {
                info!(sender = %conn.sender, %vm, needed, available, "capacity check");
            }
            Report::GroupClaimed { group, vms } => {
                info!(sender = %conn.sender, %group, ?vms, "consistency group claimed by this connection");
            }
            Report::JobRecorded { vm, id } => {
                tracing::debug!(sender = %conn.sender, %vm, job = %id, "job recorded");
            }
        }
    }
}

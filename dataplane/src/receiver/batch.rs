//! The driver of a data stream: frames go to the stream's [`BatchReceiver`]
//! (`vdrep_proto::session`), which checks each extent against its disk; the extents it
//! accepts are verified (BLAKE3, decompression) and written here on blocking threads, and
//! the batch result it composes is sent back.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::warn;
use vdrep_proto::session::receiver::{
    BatchEnd, BatchReport, BatchStep, Body, ExtentWrite, WriteOutcome,
};
use vdrep_proto::session::{BatchReceiver, Refusal};
use vdrep_proto::wire::{
    Codec, ErrorClass, ExtentHashing, ExtentOp, Rejection, EXTENT_HEADER_LEN, MAX_EXTENT_PAYLOAD,
};

use super::control::{refusal, ConnState};
use super::disk::DiskSession;
use super::limits::FramePermits;
use super::Receiver;
use crate::codec::{pieces_hash, zero_extent_hash, zero_runs, zero_runs_parts, zstd_ctx};
use crate::parts::Parts;
use crate::resync::leaves::Pieces;
use crate::sink::SinkError;
use crate::transport::{joined, write_frame, FrameError};

/// Verifies and writes one extent the session accepted, its hash made as `hashing` says
/// (the version of the stream that opened the disk). Runs on a blocking thread:
/// decompression, hashing and the write are CPU and disk work. With page hashes
/// (version 6) the pieces that verified the extent also give the resync index its hashes.
fn apply(
    s: &DiskSession,
    w: ExtentWrite,
    hashing: ExtentHashing,
) -> Result<WriteOutcome, SinkError> {
    let h = w.header;
    let paged = hashing == ExtentHashing::Pages;
    match h.op {
        ExtentOp::Clear => {
            if h.hash != zero_extent_hash(hashing, h.offset, h.length) {
                return Ok(WriteOutcome::Rejected(Rejection::HashMismatch));
            }
            s.apply_write(h.offset, h.length as u64, None)?;
        }
        ExtentOp::Write | ExtentOp::WriteSparse => {
            let write = |data: Option<&[u8]>| -> Result<Option<Rejection>, SinkError> {
                let Some(data) = data else {
                    return Ok(Some(Rejection::BadPayload));
                };
                let pieces = paged.then(|| Pieces::of(h.offset, data));
                let hash = match &pieces {
                    Some(p) => pieces_hash([p]),
                    None => *blake3::hash(data).as_bytes(),
                };
                if hash != h.hash {
                    return Ok(Some(Rejection::HashMismatch));
                }
                if h.op == ExtentOp::Write {
                    let one = [data];
                    let data = Some(Parts::new(&one));
                    s.apply_write_parts(h.offset, h.length as u64, data, pieces.as_ref())?;
                } else {
                    write_sparse(s, h.offset, data, pieces.as_ref())?;
                }
                Ok(None)
            };
            let refused = match (h.codec, w.payload.parts()) {
                (Codec::Raw, [_, _, ..]) => write_parts(s, &w, paged)?,
                (Codec::Raw, _) => write(Some(&joined(&w.payload)[..]))?,
                // Bounded: the frame must yield exactly the declared length. Decompressed
                // only once the sink has room for the bytes (`ReplicaDisk::room`).
                (Codec::Zstd, _) => {
                    let _room = s.replica.room(h.length as usize);
                    let frame = joined(&w.payload);
                    zstd_ctx::with_decompressed(&frame, h.length as usize, write)?
                }
            };
            if let Some(why) = refused {
                return Ok(WriteOutcome::Rejected(why));
            }
        }
        ExtentOp::WritePacked => {
            let Some(map) = w.packed else {
                return Ok(WriteOutcome::Rejected(Rejection::BadPayload));
            };
            let carried = map.carried_len();
            // Bounded: the frame must yield exactly the carried blocks; decompressed once
            // the sink has room for them.
            let _room = s.replica.room(carried as usize);
            let frame = joined(&w.payload);
            return zstd_ctx::with_decompressed(&frame, carried as usize, |data| {
                let Some(data) = data else {
                    return Ok(WriteOutcome::Rejected(Rejection::BadPayload));
                };
                // Each carried run at its disk offset, and its bytes in `data`.
                let mut runs = Vec::new();
                let mut at = 0usize;
                for (a, b) in map.runs() {
                    let n = (b - a) as usize;
                    runs.push((h.offset + a as u64, &data[at..at + n]));
                    at += n;
                }
                let pieces: Vec<Pieces> = match paged {
                    true => runs.iter().map(|&(o, d)| Pieces::of(o, d)).collect(),
                    false => Vec::new(),
                };
                let hash = match paged {
                    true => pieces_hash(&pieces),
                    false => *blake3::hash(data).as_bytes(),
                };
                if hash != h.hash {
                    return Ok(WriteOutcome::Rejected(Rejection::HashMismatch));
                }
                for (i, &(o, d)) in runs.iter().enumerate() {
                    s.apply_write_parts(o, d.len() as u64, Some(Parts::new(&[d])), pieces.get(i))?;
                }
                Ok(WriteOutcome::Written {
                    bytes: carried as u64,
                })
            });
        }
    }
    Ok(WriteOutcome::Written {
        bytes: h.length as u64,
    })
}

/// The raw write or sparse write `w` whose payload came in several chunks: verified and
/// written from them, never joined (each page hashed where it lies unless it straddles two
/// chunks; a vectored write). Whether it was refused, as `apply`'s `write` says.
fn write_parts(
    s: &DiskSession,
    w: &ExtentWrite,
    paged: bool,
) -> Result<Option<Rejection>, SinkError> {
    let h = &w.header;
    let slices: Vec<&[u8]> = w.payload.parts().iter().map(|b| &b[..]).collect();
    let data = Parts::new(&slices);
    if data.len() != h.length as usize {
        return Ok(Some(Rejection::BadPayload));
    }
    let pieces = paged.then(|| Pieces::of_parts(h.offset, data));
    let hash = match &pieces {
        Some(p) => pieces_hash([p]),
        None => {
            let mut b = blake3::Hasher::new();
            slices.iter().for_each(|p| {
                b.update(p);
            });
            *b.finalize().as_bytes()
        }
    };
    if hash != h.hash {
        return Ok(Some(Rejection::HashMismatch));
    }
    if h.op == ExtentOp::Write {
        s.apply_write_parts(h.offset, h.length as u64, Some(data), pieces.as_ref())?;
        return Ok(None);
    }
    // Sparse: the data runs only, on the same grid as a joined payload (`write_sparse`).
    for (a, b, _) in zero_runs_parts(data).into_iter().filter(|r| !r.2) {
        let run = data.sub(a, b).unwrap_or_default();
        let run = Parts::new(&run);
        s.apply_write_parts(
            h.offset + a as u64,
            run.len() as u64,
            Some(run),
            pieces.as_ref(),
        )?;
    }
    s.mark_written(h.offset, h.offset + data.len() as u64);
    Ok(None)
}

/// Writes the data runs of a sparse write and skips its all-zero blocks, which the replica
/// holds already (the sender sends sparse writes only into a known-empty copy); the whole
/// range then counts as written. `pieces`: the page hashes of all of `data`, when known.
fn write_sparse(
    s: &DiskSession,
    offset: u64,
    data: &[u8],
    pieces: Option<&Pieces>,
) -> Result<(), SinkError> {
    for (a, b, zero) in zero_runs(data) {
        if !zero {
            let one = [&data[a..b]];
            s.apply_write_parts(
                offset + a as u64,
                (b - a) as u64,
                Some(Parts::new(&one)),
                pieces,
            )?;
        }
    }
    s.mark_written(offset, offset + data.len() as u64);
    Ok(())
}

/// Sends a batch's result, stopping the stream first when the batch failed (`recv` is
/// `None` when it was dropped, which stopped it already).
pub(super) async fn send_result(
    conn: &ConnState,
    end: BatchEnd,
    send: &mut quinn::SendStream,
    recv: Option<&mut quinn::RecvStream>,
) {
    if let (true, Some(recv)) = (end.stop, recv) {
        let _ = recv.stop(1u32.into());
    }
    if let Err(e) = write_frame(send, &end.result.encode()).await {
        warn!(sender = %conn.sender, error = %e, "cannot answer a batch");
    }
    let _ = send.finish();
}

/// A frame as [`Receiver::read_charged_as`] gives it: kind, body (the chunks as received),
/// and the budget it holds.
type Frame = (u8, Body, FramePermits);
/// A frame being read: the read owns the stream and gives it back with the frame.
type Reading<'a> =
    Pin<Box<dyn Future<Output = (quinn::RecvStream, Result<Frame, FrameError>)> + Send + 'a>>;

/// Where a data stream's next frame is. While an extent is verified and written the next
/// frame is read (at most one ahead): otherwise the stream's bytes pile up in quinn during
/// every write, and quinn copies the pile once more whenever it passes 2,048 chunks
/// (`bench/results/ANALYSIS.md`, session 8: 4.5 % of the receiver).
enum Next<'a> {
    /// Not asked for yet.
    Idle(quinn::RecvStream),
    /// Being read.
    Reading(Reading<'a>),
    /// Read, not handled yet.
    Ready(quinn::RecvStream, Result<Frame, FrameError>),
}

impl<'a> Next<'a> {
    /// The next frame, and the stream.
    async fn frame(
        self,
        rx: &'a Receiver,
        conn: &'a ConnState,
    ) -> (quinn::RecvStream, Result<Frame, FrameError>) {
        match self {
            Next::Idle(r) => rx.read_data_frame(conn, r).await,
            Next::Reading(f) => f.await,
            Next::Ready(r, f) => (r, f),
        }
    }

    /// Starts reading the next frame unless that has begun.
    fn start(self, rx: &'a Receiver, conn: &'a ConnState) -> Next<'a> {
        match self {
            Next::Idle(r) => Next::Reading(rx.read_data_frame(conn, r)),
            other => other,
        }
    }

    /// The stream back when a batch fails mid-stream. A frame being read is abandoned: the
    /// batch result goes out now, not after a frame the sender may be slow to finish, and
    /// dropping the read drops the stream, which stops it (quinn sends STOP_SENDING, code
    /// 0, for a stream dropped unread), so there is no stream left to stop: `None`.
    fn into_stream(self) -> Option<quinn::RecvStream> {
        match self {
            Next::Idle(r) | Next::Ready(r, _) => Some(r),
            Next::Reading(_) => None,
        }
    }
}

impl Receiver {
    pub(crate) async fn handle_batch(
        self: Arc<Self>,
        conn: Arc<ConnState>,
        mut batch: BatchReceiver,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let (end, mut recv, counted) = match conn.disk(batch.handle()) {
            Some(s) => self.batch_loop(&conn, &s, &mut batch, recv).await,
            None => (
                batch.fail_stream(Refusal::new(
                    ErrorClass::Internal,
                    format!("disk handle {} has no open replica", batch.handle()),
                )),
                Some(recv),
                false,
            ),
        };
        // Before the result goes out: the sender may commit as soon as it has read it.
        let _ = conn.with_session(|s| s.batch_ended(batch.handle()));
        if let Some((class, message)) = &end.result.error {
            if !counted {
                self.refused(&conn.sender, class.as_str(), message);
            }
        }
        send_result(&conn, end, &mut send, recv.as_mut()).await;
    }

    /// Reads one frame of a data stream, owning the stream meanwhile (see [`Next`]).
    fn read_data_frame<'a>(
        &'a self,
        conn: &'a ConnState,
        mut recv: quinn::RecvStream,
    ) -> Reading<'a> {
        Box::pin(async move {
            let max = EXTENT_HEADER_LEN as u32 + MAX_EXTENT_PAYLOAD;
            let r = self.read_charged_as(conn, &mut recv, max, true).await;
            (recv, r)
        })
    }

    async fn batch_loop(
        &self,
        conn: &ConnState,
        s: &Arc<DiskSession>,
        batch: &mut BatchReceiver,
        recv: quinn::RecvStream,
    ) -> (BatchEnd, Option<quinn::RecvStream>, bool) {
        let mut next = Next::Idle(recv);
        loop {
            let (recv, frame) = next.frame(self, conn).await;
            // The frame's budget is held until its extent is written (end of this round).
            let (kind, body, _permits) = match frame {
                Ok(f) => f,
                Err(FrameError::End) => return (batch.finish(), Some(recv), false),
                Err(e) => {
                    let class = if crate::error::Classify::is_transient(&e) {
                        ErrorClass::Internal
                    } else {
                        ErrorClass::Protocol
                    };
                    // A slow body was counted when its connection was closed.
                    let counted = matches!(e, FrameError::Slow { .. });
                    return (
                        batch.fail_stream(Refusal::new(class, e.to_string())),
                        Some(recv),
                        counted,
                    );
                }
            };
            let mut step = batch.handle_frame(kind, body);
            let mut ahead = Next::Idle(recv);
            loop {
                match step {
                    BatchStep::Apply(w) => {
                        ahead = ahead.start(self, conn);
                        let s2 = s.clone();
                        let offset = w.header.offset;
                        let hashing = batch.hashing();
                        let work = async {
                            let slot = self.limits.apply_slot().await;
                            tokio::task::spawn_blocking(move || {
                                let r = apply(&s2, w, hashing);
                                drop(slot);
                                r
                            })
                            .await
                        };
                        tokio::pin!(work);
                        // The write's result is taken as soon as it is there: the frame
                        // being read may wait for budget this one still holds.
                        let done = match ahead {
                            Next::Reading(mut rd) => tokio::select! {
                                o = &mut work => {
                                    ahead = Next::Reading(rd);
                                    o
                                }
                                (r, f) = &mut rd => {
                                    ahead = Next::Ready(r, f);
                                    work.await
                                }
                            },
                            other => {
                                ahead = other;
                                work.await
                            }
                        };
                        let out = match done {
                            Ok(Ok(o)) => o,
                            Ok(Err(e)) => {
                                warn!(sender = %conn.sender, disk = %s.replica.key(), offset, error = %e, "write failed");
                                WriteOutcome::Failed(refusal(&e))
                            }
                            Err(e) => WriteOutcome::Failed(Refusal::new(
                                ErrorClass::Internal,
                                format!("write task failed: {e}"),
                            )),
                        };
                        step = batch.handle_write_done(out);
                    }
                    BatchStep::Continue(report) => {
                        if let Some(r) = report {
                            self.batch_report(conn, s, r);
                        }
                        break;
                    }
                    BatchStep::End(end) => return (end, ahead.into_stream(), false),
                }
            }
            next = ahead;
        }
    }

    fn batch_report(&self, conn: &ConnState, s: &DiskSession, r: BatchReport) {
        let k = s.replica.key();
        match r {
            BatchReport::Written { bytes, .. } => {
                self.stats.written.fetch_add(bytes, Ordering::Relaxed);
                crate::metrics::events::written(&k.vm, &k.disk, bytes);
            }
            BatchReport::Rejected {
                offset,
                length,
                why,
            } => {
                if why == Rejection::HashMismatch {
                    self.stats.hash_mismatches.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::events::blake3_mismatch(&k.vm, &k.disk);
                }
                warn!(sender = %conn.sender, disk = %k, offset, length, reason = ?why,
                      "extent refused; the sender will resend it");
            }
        }
    }

    /// Waits for in-flight work to settle at shutdown: a final checkpoint happens as each
    /// connection closes.
    pub(crate) async fn drain(&self) {
        let deadline = crate::clock::tokio_now() + std::time::Duration::from_secs(8);
        while self.active.load(Ordering::Acquire) > 0 {
            if tokio::time::timeout_at(deadline, self.idle.notified())
                .await
                .is_err()
            {
                warn!("connections still busy after 8 s; exiting anyway");
                return;
            }
        }
    }
}

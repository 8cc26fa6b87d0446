//! One QUIC data stream of a disk copy: it takes prepared extents off the shared queue,
//! sends them in batches (paced by the host's throttle), and settles each batch's result —
//! extents the receiver refused go back to the disk's resend list. What a batch carried and
//! what its result means is the [`BatchSender`] session's (`vdrep_proto::session`); this
//! moves its frames and counts its progress.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use vdrep_proto::session::sender::BatchInFlight;
use vdrep_proto::session::BatchSender;
use vdrep_proto::wire::{BatchResult, K_BATCH_RESULT, MAX_CONTROL_BODY};

use super::disk::{DiskProgress, Shared};
use super::pass::Queued;
use super::SendError;
use crate::pipeline::Stats;
use crate::throttle::Throttle;
use crate::transport::{read_frame, write_frame};

/// Batches whose results a stream may await while it already sends the next one: the
/// round trip of a batch result then costs no link time.
const OUTSTANDING_BATCHES: usize = 2;

/// Sends prepared extents in batches on fresh streams until the queue closes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_worker(
    conn: &quinn::Connection,
    handle: u32,
    generation: u64,
    rx: async_channel::Receiver<Queued>,
    refused: &Arc<Mutex<Vec<(u64, u32)>>>,
    progress: &Arc<DiskProgress>,
    sh: &Shared,
    dstats: Arc<Stats>,
) -> Result<(), SendError> {
    let (stats, level, peer) = (&sh.stats, &sh.level, sh.peer.as_str());
    let conn_err = |e| SendError::Connection {
        peer: peer.to_string(),
        source: e,
    };
    let frame_err = |e| SendError::Frame {
        peer: peer.to_string(),
        source: e,
    };
    let mut pending = tokio::task::JoinSet::new();
    let mut filled = false;
    loop {
        let t = crate::clock::std_now();
        let first = match rx.recv().await {
            Ok(p) => p,
            Err(_) => break,
        };
        level.waited_for_extent(t.elapsed(), !filled);
        filled = true;
        let (mut send, mut recv) = sh.credit.open(conn).await.map_err(conn_err)?;
        let mut batch = BatchSender::new(handle, generation);
        write_frame(&mut send, &batch.start_frame())
            .await
            .map_err(frame_err)?;
        let mut next = Some(first);
        while let Some((p, ticket)) = next.take() {
            match p.header {
                None => {
                    batch.skip(p.source_len);
                    progress.count(stats, p.source_len)
                }
                Some(h) => {
                    let f = batch.extent(p.offset, p.source_len, &h, p.payload);
                    dstats.add_wire(f.len() as u64);
                    // Header and payload go out unmodified, in throttle-admitted pieces.
                    let t = crate::clock::std_now();
                    let written = write_paced(&mut send, f.prefix, f.payload, &sh.throttle).await;
                    level.waited_for_link(t.elapsed());
                    if let Err(e) = written {
                        // A receiver that fails a batch (store full, bad state) stops the
                        // stream and says why in its batch result: report that, not the stop.
                        if matches!(e, quinn::WriteError::Stopped(_)) {
                            if let Some(reason) = stopped_reason(&mut recv, peer).await {
                                return Err(reason);
                            }
                        }
                        return Err(frame_err(e.into()));
                    }
                }
            }
            // The payload is QUIC's now (bounded by the send window): its bytes go back to
            // the run's budget before this stream waits for anything else, or streams that
            // wait for their next extent could hold the budget the CPU threads wait for.
            drop(ticket);
            if batch.is_full() {
                break;
            }
            // The batch's next extent, unless other streams wait for credit: then this one
            // ends its batch rather than hold credit while it waits (`sender/credit.rs`).
            let t = crate::clock::std_now();
            next = tokio::select! {
                biased;
                n = rx.recv() => n.ok(),
                _ = sh.credit.wanted() => rx.try_recv().ok(),
            };
            level.waited_for_cpu(t.elapsed());
        }
        let _ = send.finish();
        pending.spawn(settle_batch(
            recv,
            batch.finish(),
            stats.clone(),
            dstats.clone(),
            refused.clone(),
            progress.clone(),
            peer.to_string(),
        ));
        // Waiting for the receiver to acknowledge earlier batches is waiting for the link
        // (or the receiver): with QUIC's large send buffers this, not the write, is where a
        // slow link shows, so it must count, or the controller never climbs on slow links.
        let t = crate::clock::std_now();
        while pending.len() >= OUTSTANDING_BATCHES {
            join_one(&mut pending).await?;
        }
        level.waited_for_link(t.elapsed());
    }
    while !pending.is_empty() {
        join_one(&mut pending).await?;
    }
    Ok(())
}

/// Writes a frame (header and payload, never copied) in pieces the throttle admits one by
/// one, so a large frame does not leave in one burst.
async fn write_paced(
    send: &mut quinn::SendStream,
    prefix: Bytes,
    payload: Bytes,
    throttle: &Throttle,
) -> Result<(), quinn::WriteError> {
    let piece = throttle.piece();
    let first = payload.len().min(piece.saturating_sub(prefix.len()));
    throttle.acquire((prefix.len() + first) as u64).await;
    send.write_all_chunks(&mut [prefix, payload.slice(..first)])
        .await?;
    let mut off = first;
    while off < payload.len() {
        let n = (payload.len() - off).min(throttle.piece());
        throttle.acquire(n as u64).await;
        send.write_all_chunks(&mut [payload.slice(off..off + n)])
            .await?;
        off += n;
    }
    Ok(())
}

async fn join_one(set: &mut tokio::task::JoinSet<Result<(), SendError>>) -> Result<(), SendError> {
    match set.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(SendError::Internal(format!("batch task: {e}"))),
        None => Ok(()),
    }
}

/// Awaits a batch's result: acknowledged extents count as progress, refused ones are
/// queued for the next pass, a batch error ends the attempt.
async fn settle_batch(
    mut recv: quinn::RecvStream,
    batch: BatchInFlight,
    stats: Arc<Stats>,
    dstats: Arc<Stats>,
    refused: Arc<Mutex<Vec<(u64, u32)>>>,
    progress: Arc<DiskProgress>,
    peer: String,
) -> Result<(), SendError> {
    let (kind, body) =
        read_frame(&mut recv, MAX_CONTROL_BODY)
            .await
            .map_err(|e| SendError::Frame {
                peer: peer.clone(),
                source: e,
            })?;
    let settled = batch
        .settle_frame(kind, &body)
        .map_err(|e| super::control::session_error(&peer, e))?;
    progress.count(&stats, settled.acknowledged_bytes);
    dstats.add_extents(settled.acknowledged_extents);
    if !settled.resend.is_empty() {
        if let Ok(mut r) = refused.lock() {
            r.extend(settled.resend);
        }
    }
    Ok(())
}

/// The receiver's error from the batch result of a stream it stopped, if it sent one
/// within a second.
async fn stopped_reason(recv: &mut quinn::RecvStream, peer: &str) -> Option<SendError> {
    let read = read_frame(recv, MAX_CONTROL_BODY);
    let (kind, body) = tokio::time::timeout(std::time::Duration::from_secs(1), read)
        .await
        .ok()?
        .ok()?;
    if kind != K_BATCH_RESULT {
        return None;
    }
    let (class, message) = BatchResult::decode(&body).ok()?.error?;
    Some(SendError::Remote {
        peer: peer.to_string(),
        class,
        message,
    })
}

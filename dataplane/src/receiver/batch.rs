//! Data streams: one batch of extents for one disk, verified and written, then answered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;
use vdrep_proto::wire::{
    BatchResult, BatchStart, Codec, ErrorClass, ExtentHeader, ExtentOp, PackedMap, Rejection,
    EXTENT_HEADER_LEN, K_EXTENT, MAX_EXTENT_PAYLOAD,
};

use super::control::ConnState;
use super::disk::DiskSession;
use super::Receiver;
use crate::codec::{zero_hash, zero_runs, zstd_ctx};
use crate::sink::SinkError;
use crate::transport::{read_frame, write_frame, FrameError};

enum Outcome {
    Written(u64),
    Rejected(Rejection),
}

/// Decodes, verifies and writes one extent. Runs on a blocking thread: decompression,
/// hashing and the write are CPU and disk work.
fn apply(s: &DiskSession, h: ExtentHeader, payload: Bytes) -> Result<Outcome, SinkError> {
    match h.op {
        ExtentOp::Clear => {
            if h.hash != zero_hash(h.length) {
                return Ok(Outcome::Rejected(Rejection::HashMismatch));
            }
            s.apply_write(h.offset, h.length as u64, None)?;
        }
        ExtentOp::Write | ExtentOp::WriteSparse => {
            let write = |data: Option<&[u8]>| -> Result<Option<Rejection>, SinkError> {
                let Some(data) = data else {
                    return Ok(Some(Rejection::BadPayload));
                };
                if blake3::hash(data).as_bytes() != &h.hash {
                    return Ok(Some(Rejection::HashMismatch));
                }
                if h.op == ExtentOp::Write {
                    s.apply_write(h.offset, h.length as u64, Some(data))?;
                } else {
                    write_sparse(s, h.offset, data)?;
                }
                Ok(None)
            };
            let refused = match h.codec {
                Codec::Raw => write(Some(&payload))?,
                // Bounded: the frame must yield exactly the declared length.
                Codec::Zstd => zstd_ctx::with_decompressed(&payload, h.length as usize, write)?,
            };
            if let Some(why) = refused {
                return Ok(Outcome::Rejected(why));
            }
        }
        ExtentOp::WritePacked => return write_packed(s, h, &payload),
    }
    Ok(Outcome::Written(h.length as u64))
}

/// Verifies and writes the blocks a packed write carries; its other blocks are not this
/// extent's (they come as their own extents, or are zero in a known-empty copy).
fn write_packed(s: &DiskSession, h: ExtentHeader, payload: &[u8]) -> Result<Outcome, SinkError> {
    let (map, frame) = match PackedMap::split(h.length, payload) {
        Ok(x) => x,
        Err(e) => {
            warn!(disk = %s.replica.key(), offset = h.offset, error = %e, "packed write refused");
            return Ok(Outcome::Rejected(Rejection::BadPayload));
        }
    };
    let carried = map.carried_len();
    // Bounded: the frame must yield exactly the carried blocks.
    zstd_ctx::with_decompressed(frame, carried as usize, |data| {
        let Some(data) = data else {
            return Ok(Outcome::Rejected(Rejection::BadPayload));
        };
        if blake3::hash(data).as_bytes() != &h.hash {
            return Ok(Outcome::Rejected(Rejection::HashMismatch));
        }
        let mut at = 0usize;
        for (a, b) in map.runs() {
            let n = (b - a) as usize;
            s.apply_write(h.offset + a as u64, n as u64, Some(&data[at..at + n]))?;
            at += n;
        }
        Ok(Outcome::Written(carried as u64))
    })
}

/// Writes the data runs of a sparse write and skips its all-zero blocks, which the replica
/// holds already (the sender sends sparse writes only into a known-empty copy); the whole
/// range then counts as written.
fn write_sparse(s: &DiskSession, offset: u64, data: &[u8]) -> Result<(), SinkError> {
    for (a, b, zero) in zero_runs(data) {
        if !zero {
            s.apply_write(offset + a as u64, (b - a) as u64, Some(&data[a..b]))?;
        }
    }
    s.mark_written(offset, offset + data.len() as u64);
    Ok(())
}

impl Receiver {
    pub(crate) async fn handle_batch(
        self: Arc<Self>,
        conn: Arc<ConnState>,
        start: BatchStart,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let mut result = BatchResult {
            written: 0,
            rejected: Vec::new(),
            error: None,
        };
        let session = match conn.disk(start.handle) {
            Some(s) if s.generation == start.generation => Some(s),
            Some(s) => {
                result.error = Some((
                    ErrorClass::InvalidState,
                    format!(
                        "batch for copy generation {}, but generation {} is open",
                        start.generation, s.generation
                    ),
                ));
                None
            }
            None => {
                result.error = Some((
                    ErrorClass::Protocol,
                    format!("unknown disk handle {}", start.handle),
                ));
                None
            }
        };
        if let Some(s) = session {
            if let Err(e) = self.batch_loop(&conn, &s, &mut recv, &mut result).await {
                if result.error.is_none() {
                    result.error = Some((
                        if crate::error::Classify::is_transient(&e) {
                            ErrorClass::Internal
                        } else {
                            ErrorClass::Protocol
                        },
                        e.to_string(),
                    ));
                }
            }
        }
        if result.error.is_some() {
            let _ = recv.stop(1u32.into());
        }
        if let Err(e) = write_frame(&mut send, &result.encode()).await {
            warn!(sender = %conn.sender, error = %e, "cannot answer a batch");
        }
        let _ = send.finish();
    }

    async fn batch_loop(
        &self,
        conn: &ConnState,
        s: &Arc<DiskSession>,
        recv: &mut quinn::RecvStream,
        result: &mut BatchResult,
    ) -> Result<(), FrameError> {
        loop {
            let (kind, body) =
                match read_frame(recv, EXTENT_HEADER_LEN as u32 + MAX_EXTENT_PAYLOAD).await {
                    Ok(f) => f,
                    Err(FrameError::End) => return Ok(()),
                    Err(e) => return Err(e),
                };
            if kind != K_EXTENT {
                result.error = Some((
                    ErrorClass::Protocol,
                    format!("frame type {kind} inside a batch"),
                ));
                return Ok(());
            }
            let h = ExtentHeader::decode(
                body.get(..EXTENT_HEADER_LEN).unwrap_or(&body),
                body.len() as u32,
            )?;
            let end = h.offset + h.length as u64;
            if end > s.virtual_size.div_ceil(512) * 512 {
                result.error = Some((
                    ErrorClass::Protocol,
                    format!(
                        "extent [{}, {end}) lies outside the disk of {} bytes",
                        h.offset, s.virtual_size
                    ),
                ));
                return Ok(());
            }
            let payload = body.slice(EXTENT_HEADER_LEN..);
            let s2 = s.clone();
            let out = tokio::task::spawn_blocking(move || apply(&s2, h, payload)).await;
            match out {
                Ok(Ok(Outcome::Written(n))) => {
                    result.written += 1;
                    self.stats.written.fetch_add(n, Ordering::Relaxed);
                    let k = s.replica.key();
                    crate::metrics::events::written(&k.vm, &k.disk, n);
                }
                Ok(Ok(Outcome::Rejected(why))) => {
                    if why == Rejection::HashMismatch {
                        self.stats.hash_mismatches.fetch_add(1, Ordering::Relaxed);
                        let k = s.replica.key();
                        crate::metrics::events::blake3_mismatch(&k.vm, &k.disk);
                    }
                    warn!(sender = %conn.sender, disk = %s.replica.key(), offset = h.offset,
                          length = h.length, reason = ?why, "extent refused; the sender will resend it");
                    result.rejected.push((h.offset, h.length, why));
                }
                Ok(Err(e)) => {
                    warn!(sender = %conn.sender, disk = %s.replica.key(), offset = h.offset, error = %e, "write failed");
                    result.error = Some((super::control::class_of(&e), e.to_string()));
                    return Ok(());
                }
                Err(e) => {
                    result.error = Some((ErrorClass::Internal, format!("write task failed: {e}")));
                    return Ok(());
                }
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

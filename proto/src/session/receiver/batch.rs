//! One data stream at the receiver: a batch of extents for one disk, each checked against
//! the disk before any hashing, decompression or allocation, then handed to the driver to
//! verify and write; the batch result sums up what was written and what must be resent.
//!
//! States: `Receiving` (the next frame is due) → `Writing` (the driver verifies and writes
//! one extent; its outcome is due) → `Receiving` … → `Ended` (the result is sent). A
//! failure — a frame that is not an extent, an extent outside the disk, a store error —
//! ends the batch at once: extents after it are not written, and the driver stops the
//! stream so the sender learns of it without sending the rest.

use super::super::Refusal;
use super::Body;
use crate::wire::{
    BatchResult, ErrorClass, ExtentHashing, ExtentHeader, ExtentOp, PackedMap, Rejection,
    EXTENT_HEADER_LEN, K_EXTENT,
};

/// An extent ready for verification and writing: its header checked against the disk, its
/// payload a slice of the received frame (never copied): its chunks as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentWrite {
    /// The validated header.
    pub header: ExtentHeader,
    /// The payload: raw bytes, one zstd frame, or — for a packed write — the zstd frame
    /// after the map.
    pub payload: Body,
    /// A packed write's map (which blocks the payload carries).
    pub packed: Option<PackedMap>,
}

/// The driver's verdict on one [`ExtentWrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Verified and written: `bytes` of the disk changed.
    Written {
        /// Bytes written (a packed write counts its carried blocks).
        bytes: u64,
    },
    /// The payload did not decode or verify: the sender resends the extent.
    Rejected(Rejection),
    /// The store failed: the batch ends with this error.
    Failed(Refusal),
}

/// Something a batch did worth a metric or a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchReport {
    /// An extent was written.
    Written {
        /// Its offset.
        offset: u64,
        /// Bytes written.
        bytes: u64,
    },
    /// An extent was refused; the sender will resend it.
    Rejected {
        /// Its offset.
        offset: u64,
        /// Its length.
        length: u32,
        /// Why.
        why: Rejection,
    },
}

/// The end of a batch: the result frame to send, and whether to stop the stream (the batch
/// failed, so the sender's remaining extents are unwanted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEnd {
    /// The answer.
    pub result: BatchResult,
    /// Stop reading the stream before answering.
    pub stop: bool,
}

impl BatchEnd {
    pub(super) fn failed(r: Refusal) -> Self {
        BatchEnd {
            result: BatchResult {
                written: 0,
                rejected: Vec::new(),
                error: Some((r.class, r.message)),
            },
            stop: true,
        }
    }
}

/// What the driver does next on a data stream.
#[must_use = "a batch step carries a write to perform or the batch's answer"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchStep {
    /// Verify and write this extent, then pass the outcome to
    /// [`BatchReceiver::handle_write_done`].
    Apply(ExtentWrite),
    /// Read the next frame (after counting or logging the report, if any).
    Continue(Option<BatchReport>),
    /// The batch is over: send the result.
    End(BatchEnd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Receiving,
    Writing { offset: u64, length: u32 },
    Ended,
}

/// The receiver's state for one data stream (see the module documentation).
#[derive(Debug)]
pub struct BatchReceiver {
    handle: u32,
    generation: u64,
    virtual_size: u64,
    hashing: ExtentHashing,
    result: BatchResult,
    state: State,
}

impl BatchReceiver {
    /// A batch for disk `handle` of `virtual_size` bytes in copy `generation`, whose extent
    /// hashes are made as `hashing` says; built by
    /// [`ReceiverSession::start_batch`](super::ReceiverSession::start_batch).
    pub fn new(handle: u32, generation: u64, virtual_size: u64, hashing: ExtentHashing) -> Self {
        BatchReceiver {
            handle,
            generation,
            virtual_size,
            hashing,
            result: BatchResult {
                written: 0,
                rejected: Vec::new(),
                error: None,
            },
            state: State::Receiving,
        }
    }

    /// The disk handle of the batch.
    pub fn handle(&self) -> u32 {
        self.handle
    }

    /// The copy generation of the batch.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the extents' hashes are hashes of: the driver verifies each extent so.
    pub fn hashing(&self) -> ExtentHashing {
        self.hashing
    }

    /// Feeds one frame of the stream (`kind`, `body`; the body is sliced, not copied).
    pub fn handle_frame(&mut self, kind: u8, body: impl Into<Body>) -> BatchStep {
        let body: Body = body.into();
        match self.state {
            State::Receiving => {}
            State::Writing { offset, .. } => {
                return self.fail(Refusal::new(
                    ErrorClass::Internal,
                    format!("a frame arrived while the extent at {offset} was being written"),
                ))
            }
            State::Ended => return self.end(),
        }
        if kind != K_EXTENT {
            return self.fail(Refusal::new(
                ErrorClass::Protocol,
                format!("frame type {kind} inside a batch"),
            ));
        }
        let h = match ExtentHeader::decode(&body.head(EXTENT_HEADER_LEN), body.len() as u32) {
            Ok(h) => h,
            Err(e) => {
                return self.fail(Refusal::new(
                    ErrorClass::Protocol,
                    format!("malformed frame from peer: {e}"),
                ))
            }
        };
        // The header decoder bounded the length and excluded overflow; the disk's end is
        // checked here, before anything is hashed (a clear's zero hash included).
        let end = h.offset.saturating_add(h.length as u64);
        if end > self.virtual_size.div_ceil(512) * 512 {
            return self.fail(Refusal::new(
                ErrorClass::Protocol,
                format!(
                    "extent [{}, {end}) lies outside the disk of {} bytes",
                    h.offset, self.virtual_size
                ),
            ));
        }
        let payload = body.slice_from(EXTENT_HEADER_LEN);
        let (payload, packed) = if h.op == ExtentOp::WritePacked {
            // The map is read from one buffer (a packed payload is compressed: joined anyway).
            let flat = payload.to_bytes();
            match PackedMap::split(h.length, &flat) {
                Ok((map, _)) => {
                    let at = PackedMap::encoded_len(h.length);
                    (Body::from(flat.slice(at..)), Some(map))
                }
                Err(_) => return self.reject(h.offset, h.length, Rejection::BadPayload),
            }
        } else {
            (payload, None)
        };
        self.state = State::Writing {
            offset: h.offset,
            length: h.length,
        };
        BatchStep::Apply(ExtentWrite {
            header: h,
            payload,
            packed,
        })
    }

    /// Feeds the outcome of the last [`BatchStep::Apply`].
    pub fn handle_write_done(&mut self, outcome: WriteOutcome) -> BatchStep {
        let State::Writing { offset, length } = self.state else {
            return self.fail(Refusal::new(
                ErrorClass::Internal,
                "a write finished that was never asked for",
            ));
        };
        self.state = State::Receiving;
        match outcome {
            WriteOutcome::Written { bytes } => {
                self.result.written = self.result.written.saturating_add(1);
                BatchStep::Continue(Some(BatchReport::Written { offset, bytes }))
            }
            WriteOutcome::Rejected(why) => self.reject(offset, length, why),
            WriteOutcome::Failed(r) => self.fail(r),
        }
    }

    /// The stream ended cleanly after the last extent: the batch's answer.
    pub fn finish(&mut self) -> BatchEnd {
        match self.state {
            State::Writing { offset, .. } => {
                return match self.fail(Refusal::new(
                    ErrorClass::Internal,
                    format!("the batch ended while the extent at {offset} was being written"),
                )) {
                    BatchStep::End(e) => e,
                    _ => self.end_now(),
                }
            }
            State::Receiving | State::Ended => {}
        }
        self.end_now()
    }

    /// The stream broke (a torn or oversized frame, a lost connection): the batch ends with
    /// `r`. A frame over the size limit is the peer's fault (`Protocol`); a lost stream
    /// may pass (`Internal`).
    pub fn fail_stream(&mut self, r: Refusal) -> BatchEnd {
        match self.fail(r) {
            BatchStep::End(e) => e,
            _ => self.end_now(),
        }
    }

    fn reject(&mut self, offset: u64, length: u32, why: Rejection) -> BatchStep {
        self.result.rejected.push((offset, length, why));
        BatchStep::Continue(Some(BatchReport::Rejected {
            offset,
            length,
            why,
        }))
    }

    /// Ends the batch with `r` unless it already failed (the first error is the one told).
    fn fail(&mut self, r: Refusal) -> BatchStep {
        if self.result.error.is_none() {
            self.result.error = Some((r.class, r.message));
        }
        self.end()
    }

    fn end(&mut self) -> BatchStep {
        BatchStep::End(self.end_now())
    }

    fn end_now(&mut self) -> BatchEnd {
        self.state = State::Ended;
        BatchEnd {
            stop: self.result.error.is_some(),
            result: self.result.clone(),
        }
    }
}

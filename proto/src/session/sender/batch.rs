//! One data stream at the sender: a batch of extents for one disk, and what its result
//! means. Extents the receiver acknowledged count as progress; refused ones are resent —
//! for a packed write only the blocks it carried, since its other blocks travelled as their
//! own extents and must be neither sent nor counted twice.

use bytes::Bytes;

use super::SessionError;
use crate::wire::{BatchResult, BatchStart, ExtentHeader, ExtentOp, PackedMap, K_BATCH_RESULT};

/// Source bytes per data stream before it is finished and answered: big enough to amortise
/// the round trip, small enough that a refused batch costs little.
pub const BATCH_SOURCE_BYTES: u64 = 16 << 20;

/// An extent on its way: what it counts for, and what to resend if it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    offset: u64,
    source_len: u64,
    /// A packed write's carried blocks.
    carried: Option<Vec<(u64, u32)>>,
}

/// One extent frame to transmit, in two buffers so the payload is never copied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an extent frame must be sent"]
pub struct ExtentFrame {
    /// Frame header and extent header.
    pub prefix: Bytes,
    /// The payload, as the pipeline prepared it.
    pub payload: Bytes,
}

impl ExtentFrame {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.prefix.len() + self.payload.len()
    }

    /// Never true: a frame has at least its headers.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A batch being sent.
#[derive(Debug)]
pub struct BatchSender {
    start: BatchStart,
    sent: Vec<Sent>,
    source_bytes: u64,
}

/// A batch whose result is due.
#[derive(Debug)]
#[must_use = "a batch in flight must be settled with its result"]
pub struct BatchInFlight {
    sent: Vec<Sent>,
}

/// What a batch result settles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Source bytes of the acknowledged extents (progress).
    pub acknowledged_bytes: u64,
    /// Acknowledged extents.
    pub acknowledged_extents: u64,
    /// Ranges to send again, `(offset, length)`.
    pub resend: Vec<(u64, u32)>,
}

impl BatchSender {
    /// A batch for disk `handle` in copy `generation`.
    pub fn new(handle: u32, generation: u64) -> Self {
        BatchSender {
            start: BatchStart { handle, generation },
            sent: Vec::new(),
            source_bytes: 0,
        }
    }

    /// The stream's first frame.
    pub fn start_frame(&self) -> Vec<u8> {
        self.start.encode()
    }

    /// Accounts for source bytes that need no frame (a zero run of a known-empty copy):
    /// they count towards the batch's size and are done at once.
    pub fn skip(&mut self, source_len: u64) {
        self.source_bytes = self.source_bytes.saturating_add(source_len);
    }

    /// Records an extent accounting for `source_len` source bytes from `offset`, about to be
    /// sent; returns the frame to send: its prefix (frame and extent headers) and the
    /// payload, unmodified and uncopied, as separate buffers.
    pub fn extent(
        &mut self,
        offset: u64,
        source_len: u64,
        header: &ExtentHeader,
        payload: Bytes,
    ) -> ExtentFrame {
        self.source_bytes = self.source_bytes.saturating_add(source_len);
        self.sent.push(Sent {
            offset,
            source_len,
            carried: carried_runs(header, &payload),
        });
        ExtentFrame {
            prefix: Bytes::from(header.encode_frame_prefix()),
            payload,
        }
    }

    /// The batch holds enough source bytes to be finished.
    pub fn is_full(&self) -> bool {
        self.source_bytes >= BATCH_SOURCE_BYTES
    }

    /// Ends the batch (the driver finishes the stream); its result is due.
    pub fn finish(self) -> BatchInFlight {
        BatchInFlight { sent: self.sent }
    }
}

impl BatchInFlight {
    /// Extents in the batch.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// True when the batch carried no frame.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Settles the batch with the frame that answered it.
    pub fn settle_frame(self, kind: u8, body: &[u8]) -> Result<Settled, SessionError> {
        if kind != K_BATCH_RESULT {
            return Err(SessionError::Protocol(format!(
                "frame type {kind} where a batch result was due"
            )));
        }
        let res = BatchResult::decode(body).map_err(|e| SessionError::Protocol(e.to_string()))?;
        self.settle(res)
    }

    /// Settles the batch with its result: a batch error refuses the whole attempt;
    /// otherwise every extent not refused is acknowledged and the refused ones are resent.
    pub fn settle(self, res: BatchResult) -> Result<Settled, SessionError> {
        if let Some((class, message)) = res.error {
            return Err(SessionError::Refused { class, message });
        }
        let bad: std::collections::HashSet<u64> = res.rejected.iter().map(|r| r.0).collect();
        let mut out = Settled::default();
        for sent in &self.sent {
            if !bad.contains(&sent.offset) {
                out.acknowledged_bytes += sent.source_len;
                out.acknowledged_extents += 1;
            } else if let Some(runs) = &sent.carried {
                out.resend.extend_from_slice(runs);
            }
        }
        let packed: std::collections::HashSet<u64> = self
            .sent
            .iter()
            .filter(|s| s.carried.is_some())
            .map(|s| s.offset)
            .collect();
        out.resend.extend(
            res.rejected
                .iter()
                .filter(|r| !packed.contains(&r.0))
                .map(|&(o, l, _)| (o, l)),
        );
        Ok(out)
    }
}

/// The ranges a packed write carries, for a resend; `None` for other extents.
fn carried_runs(h: &ExtentHeader, payload: &[u8]) -> Option<Vec<(u64, u32)>> {
    if h.op != ExtentOp::WritePacked {
        return None;
    }
    let (map, _) = PackedMap::split(h.length, payload).ok()?;
    Some(
        map.runs()
            .into_iter()
            .map(|(a, b)| (h.offset + a as u64, b - a))
            .collect(),
    )
}

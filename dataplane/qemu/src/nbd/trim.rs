//! Trims (`NBD_CMD_TRIM`): the hint that a range of the export is no longer needed.
//!
//! Why a reader trims: on a fleecing view's `snapshot-access` node (opened with
//! `discard=unmap`, exported writable), qemu's copy-before-write filter stops guarding a
//! trimmed range (`cbw_co_pdiscard_snapshot`: the range, rounded inward to its copy
//! cluster, leaves the filter's access bitmap and block-copy's to-do set), so the guest's
//! next write there no longer waits for the old block to be copied into the scratch image
//! (measured 50 µs against 159 µs, `bench/results/ANALYSIS.md`, session 11, Q18L). Reads and
//! `base:allocation` block status of a trimmed range then fail: a trimmed range is gone for
//! the reader.
//!
//! The protocol (`doc/proto.md`): a client sends a trim only when the server set
//! `NBD_FLAG_SEND_TRIM` (and the export is not read-only); offset and length are multiples
//! of the minimum block size and inside the export; the server MAY round the range inward,
//! and answers with a simple reply or, structured replies negotiated, with chunks that carry
//! no data (`NBD_REPLY_TYPE_NONE`, or errors) ending with `NBD_REPLY_FLAG_DONE`. Anything
//! else for a trim's cookie is a protocol violation.

use std::io::{Read, Write};

use super::client::{ChunkHeader, NbdClient, Reply};
use super::error::NbdError;
use super::wire;

/// The largest single trim request sent: the length field is 32 bits; qemu takes any
/// length, and a gigabyte per request keeps each one's work in qemu bounded.
pub const MAX_TRIM_REQUEST: u64 = 1 << 30;

/// What the reply to one trim has given so far.
#[derive(Debug)]
pub(super) struct TrimReply {
    pub(super) cookie: u64,
    offset: u64,
    len: u64,
    failure: Option<(u32, String)>,
    chunks: u32,
    /// The reply is complete.
    pub(super) done: bool,
}

/// A trim reply's chunks are a few (a NONE, or errors): more is a server gone wrong.
const MAX_TRIM_CHUNKS: u32 = 64;

impl TrimReply {
    pub(super) fn new(cookie: u64, offset: u64, len: u64) -> TrimReply {
        TrimReply {
            cookie,
            offset,
            len,
            failure: None,
            chunks: 0,
            done: false,
        }
    }

    /// The server's verdict once the reply is complete.
    pub(super) fn finish<S: Read + Write>(self, c: &NbdClient<S>) -> Result<(), NbdError> {
        match self.failure {
            Some((errno, message)) => {
                Err(c.command_error("trim", self.offset, self.len, errno, message))
            }
            None => Ok(()),
        }
    }
}

impl<S: Read + Write> NbdClient<S> {
    /// True when the server takes trims on this export (`NBD_FLAG_SEND_TRIM`, writable).
    pub fn can_trim(&self) -> bool {
        self.transmission_flags & wire::TFLAG_SEND_TRIM != 0 && !self.read_only()
    }

    /// Refuses a trim the protocol does not allow here.
    pub(super) fn check_trim(&self, offset: u64, length: u64) -> Result<(), NbdError> {
        if !self.can_trim() {
            return Err(NbdError::InvalidRequest {
                export: self.export.clone(),
                detail: format!(
                    "trim {offset}+{length}: the export does not take trims (read-only, or no NBD_FLAG_SEND_TRIM)"
                ),
            });
        }
        self.check_range("trim", offset, length)
    }

    /// Trims `[offset, offset + length)`, one request at a time (a range longer than
    /// [`MAX_TRIM_REQUEST`] takes several). `NBD_CMD_TRIM` is a hint: the server may have
    /// discarded less (rounded inward), never more.
    pub fn trim(&mut self, offset: u64, length: u64) -> Result<(), NbdError> {
        self.usable()?;
        self.check_trim(offset, length)?;
        let mut at = offset;
        let end = offset + length;
        while at < end {
            let n = trim_step(end - at, self.min_block);
            let r = self.trim_once(at, n);
            self.guard(r)?;
            at += n;
        }
        Ok(())
    }

    fn trim_once(&mut self, offset: u64, len: u64) -> Result<(), NbdError> {
        let cookie = self.cookie();
        self.write_all(&wire::request(
            0,
            wire::CMD_TRIM,
            cookie,
            offset,
            len as u32,
        ))?;
        let mut r = TrimReply::new(cookie, offset, len);
        while !r.done {
            let reply = self.next_reply()?;
            let c = match reply {
                Reply::Simple { cookie, .. } => cookie,
                Reply::Chunk(h) => h.cookie,
            };
            if c != cookie {
                return Err(self.protocol(format!("reply for cookie {c}, {cookie} expected")));
            }
            match reply {
                Reply::Simple { errno, .. } => self.trim_simple(&mut r, errno)?,
                Reply::Chunk(h) => self.trim_chunk(h, &mut r)?,
            }
        }
        r.finish(self)
    }

    /// A simple reply to a trim: the whole reply, so never after chunks of it.
    pub(super) fn trim_simple(&self, r: &mut TrimReply, errno: u32) -> Result<(), NbdError> {
        if r.chunks > 0 {
            return Err(self.protocol(format!(
                "simple reply after structured chunks for trim cookie {}",
                r.cookie
            )));
        }
        if errno != 0 {
            r.failure = Some((errno, String::new()));
        }
        r.done = true;
        Ok(())
    }

    /// A chunk of a trim's structured reply: no data may come, only NONE or errors.
    pub(super) fn trim_chunk(&mut self, h: ChunkHeader, r: &mut TrimReply) -> Result<(), NbdError> {
        r.chunks += 1;
        if r.chunks > MAX_TRIM_CHUNKS {
            return Err(self.protocol("too many chunks in a trim reply".into()));
        }
        if !self.none_or_error_chunk(h, &mut r.failure)? {
            return Err(self.protocol(format!("chunk type {} in a trim reply", h.kind)));
        }
        if h.flags & wire::REPLY_FLAG_DONE != 0 {
            r.done = true;
        }
        Ok(())
    }
}

/// The next request's length for `left` bytes: at most [`MAX_TRIM_REQUEST`], a multiple
/// of the minimum block size (`left` is one).
pub(super) fn trim_step(left: u64, min_block: u32) -> u64 {
    let max = MAX_TRIM_REQUEST - MAX_TRIM_REQUEST % u64::from(min_block.max(1));
    left.min(max)
}

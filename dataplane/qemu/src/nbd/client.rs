//! A small blocking NBD client: fixed newstyle handshake, structured replies, metadata
//! contexts (`base:allocation`, `qemu:dirty-bitmap:NAME`), `NBD_OPT_GO`, and the
//! commands a change source needs: read, block status, and trim (`super::trim`: a fleecing
//! view's reader gives back what it no longer needs). One request at a time here;
//! [`super::ReadQueue`] keeps several reads and trims in flight on a connection.
//!
//! Invariant: nothing the server sends can make this code panic, index out of bounds or
//! allocate more than [`wire::MAX_CHUNK_PAYLOAD`] / the request's length; every offset and
//! length is checked against the request and the export's size, with checked arithmetic.
//! After a protocol violation or an IO error the client refuses further commands
//! ([`NbdError::Broken`]): its position in the stream is unknown.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::error::NbdError;
use super::reads::ReadReply;
use super::wire::{self, Payload};

/// An extent of block status: `length` bytes from `offset` share `flags` (the context's
/// flags: [`wire::STATE_DIRTY`] for a dirty bitmap, [`wire::STATE_HOLE`] /
/// [`wire::STATE_ZERO`] for `base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Start, in bytes.
    pub offset: u64,
    /// Length, in bytes (> 0).
    pub length: u64,
    /// The context's status flags.
    pub flags: u32,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// The largest single read request sent (the export's maximum may be larger): bounds the
/// memory one request can pin.
pub const MAX_READ_REQUEST: u32 = 4 << 20;
/// The largest block status request sent (servers clamp it further).
const MAX_STATUS_REQUEST: u64 = 1 << 31;

/// A connected NBD client in transmission phase.
#[derive(Debug)]
pub struct NbdClient<S: Read + Write> {
    pub(super) stream: S,
    pub(super) export: String,
    pub(super) size: u64,
    pub(super) transmission_flags: u16,
    pub(super) min_block: u32,
    pub(super) max_block: u32,
    /// The negotiated metadata contexts: the server's id and the name.
    pub(super) contexts: Vec<(u32, String)>,
    pub(super) next_cookie: u64,
    pub(super) broken: bool,
}

impl NbdClient<UnixStream> {
    /// Connects to an NBD server's unix socket, selects `contexts` (each must be offered, else
    /// [`NbdError::Unsupported`]) and opens `export`. `timeout` bounds every read and write.
    pub fn connect_unix(
        path: impl AsRef<Path>,
        export: &str,
        contexts: &[&str],
        timeout: Duration,
    ) -> Result<NbdClient<UnixStream>, NbdError> {
        let path = path.as_ref();
        let connect = |source| NbdError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let s = UnixStream::connect(path).map_err(connect)?;
        s.set_read_timeout(Some(timeout)).map_err(connect)?;
        s.set_write_timeout(Some(timeout)).map_err(connect)?;
        NbdClient::handshake(s, export, contexts)
    }
}

impl<S: Read + Write> NbdClient<S> {
    /// Runs the fixed newstyle handshake on `stream`: structured replies, metadata contexts,
    /// then `NBD_OPT_GO` for `export`.
    pub fn handshake(stream: S, export: &str, contexts: &[&str]) -> Result<Self, NbdError> {
        let mut c = NbdClient {
            stream,
            export: export.to_string(),
            size: 0,
            transmission_flags: 0,
            min_block: 1,
            max_block: wire::DEFAULT_MAX_BLOCK,
            contexts: Vec::new(),
            next_cookie: 1,
            broken: false,
        };
        let r = c.negotiate(contexts);
        c.guard(r)?;
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the server exports read-only.
    pub fn read_only(&self) -> bool {
        self.transmission_flags & wire::TFLAG_READ_ONLY != 0
    }

    /// The names of the negotiated metadata contexts.
    pub fn contexts(&self) -> impl Iterator<Item = &str> {
        self.contexts.iter().map(|(_, n)| n.as_str())
    }

    /// Reads `buf.len()` bytes from `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.usable()?;
        self.check_range("read", offset, buf.len() as u64)?;
        let step = MAX_READ_REQUEST.min(self.max_block).max(1) as usize;
        let mut done = 0usize;
        while done < buf.len() {
            let n = step.min(buf.len() - done);
            let at = offset + done as u64;
            let r = self.read_once(at, &mut buf[done..done + n]);
            self.guard(r)?;
            done += n;
        }
        Ok(())
    }

    /// Block status of `context` over `[offset, offset + length)`: extents that cover the
    /// range exactly, adjacent extents with equal flags merged.
    pub fn block_status(
        &mut self,
        context: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<Extent>, NbdError> {
        self.usable()?;
        let Some(id) = self
            .contexts
            .iter()
            .find(|(_, n)| n == context)
            .map(|(id, _)| *id)
        else {
            return Err(NbdError::InvalidRequest {
                export: self.export.clone(),
                detail: format!("metadata context {context} was not negotiated"),
            });
        };
        self.check_range("block status", offset, length)?;
        let end = offset + length;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let ask = (end - pos).min(MAX_STATUS_REQUEST) as u32;
            let r = self.status_once(id, pos, ask);
            let descriptors = self.guard(r)?;
            let mut cur = pos;
            for (len, flags) in descriptors {
                if cur >= end {
                    break;
                }
                let take = u64::from(len).min(end - cur);
                push_merged(
                    &mut out,
                    Extent {
                        offset: cur,
                        length: take,
                        flags,
                    },
                );
                cur += take;
            }
            // Descriptors are non-empty (checked), so every round advances.
            pos = cur;
        }
        Ok(out)
    }

    /// The dirty extents of qemu's dirty bitmap `bitmap` over the whole export (its context
    /// `qemu:dirty-bitmap:NAME` must have been negotiated).
    pub fn dirty_extents(&mut self, bitmap: &str) -> Result<Vec<Extent>, NbdError> {
        let context = format!("{}{bitmap}", wire::DIRTY_BITMAP_PREFIX);
        let size = self.size;
        Ok(self
            .block_status(&context, 0, size)?
            .into_iter()
            .filter(|e| e.flags & wire::STATE_DIRTY != 0)
            .collect())
    }

    /// Tells the server we are done (`NBD_CMD_DISC`) and closes the connection.
    pub fn disconnect(mut self) {
        if !self.broken {
            let cookie = self.cookie();
            let _ = self
                .stream
                .write_all(&wire::request(0, wire::CMD_DISC, cookie, 0, 0));
            let _ = self.stream.flush();
        }
    }

    /// One read request of at most the maximum block size.
    fn read_once(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let len = buf.len() as u64;
        let cookie = self.cookie();
        self.write_all(&wire::request(
            0,
            wire::CMD_READ,
            cookie,
            offset,
            len as u32,
        ))?;
        let mut reply = ReadReply::new(offset, len);
        while !reply.done {
            let Some(h) = self.reply_header(cookie)? else {
                // A simple reply: allowed only as an error.
                return Err(self.protocol("simple reply without error to a read".into()));
            };
            self.read_chunk(h, &mut reply, buf)?;
        }
        reply.finish(self)
    }

    /// One block status request; returns the descriptors of context `id`.
    fn status_once(&mut self, id: u32, offset: u64, len: u32) -> Result<Vec<(u32, u32)>, NbdError> {
        let cookie = self.cookie();
        self.write_all(&wire::request(
            0,
            wire::CMD_BLOCK_STATUS,
            cookie,
            offset,
            len,
        ))?;
        let limit = self.size - offset;
        let mut seen: Vec<u32> = Vec::new();
        let mut mine: Option<Vec<(u32, u32)>> = None;
        let mut failure: Option<(u32, String)> = None;
        for _ in 0..(self.contexts.len() + 16) {
            let Some(h) = self.reply_header(cookie)? else {
                return Err(self.protocol("simple reply without error to block status".into()));
            };
            match h.kind {
                wire::CHUNK_BLOCK_STATUS => {
                    if h.length < 12
                        || (h.length - 4) % 8 != 0
                        || h.length > wire::MAX_CHUNK_PAYLOAD
                    {
                        return Err(
                            self.protocol(format!("block status chunk of {} bytes", h.length))
                        );
                    }
                    let mut payload = vec![0u8; h.length as usize];
                    self.read_exact(&mut payload)?;
                    let mut p = Payload::new(&payload);
                    let ctx = p.u32().unwrap_or(u32::MAX);
                    if !self.contexts.iter().any(|(i, _)| *i == ctx) || seen.contains(&ctx) {
                        return Err(self.protocol(format!(
                            "block status for unknown or repeated context id {ctx}"
                        )));
                    }
                    seen.push(ctx);
                    let mut descriptors = Vec::with_capacity(p.remaining() / 8);
                    let mut total = 0u64;
                    while let (Some(l), Some(f)) = (p.u32(), p.u32()) {
                        if l == 0 {
                            return Err(self.protocol("block status descriptor of length 0".into()));
                        }
                        total += u64::from(l);
                        descriptors.push((l, f));
                    }
                    if total > limit {
                        return Err(self.protocol(format!(
                            "block status from {offset} describes {total} bytes, past the export's end"
                        )));
                    }
                    if ctx == id {
                        mine = Some(descriptors);
                    }
                }
                wire::CHUNK_NONE => {
                    if h.length != 0 || h.flags & wire::REPLY_FLAG_DONE == 0 {
                        return Err(self.protocol("NONE chunk with payload or not final".into()));
                    }
                }
                k if k & 0x8000 != 0 => {
                    let e = self.error_chunk(h.length)?;
                    failure.get_or_insert(e);
                }
                k => return Err(self.protocol(format!("chunk type {k} in a block status reply"))),
            }
            if h.flags & wire::REPLY_FLAG_DONE != 0 {
                if let Some((errno, message)) = failure {
                    return Err(self.command_error(
                        "block status",
                        offset,
                        u64::from(len),
                        errno,
                        message,
                    ));
                }
                return mine.ok_or_else(|| {
                    self.protocol("block status reply without the asked context".into())
                });
            }
        }
        Err(self.protocol("too many chunks in a block status reply".into()))
    }

    /// Reads a reply header for `cookie`. `None` is never returned for an error simple
    /// reply: that becomes [`NbdError::Command`].
    fn reply_header(&mut self, cookie: u64) -> Result<Option<ChunkHeader>, NbdError> {
        let (c, h) = match self.next_reply()? {
            Reply::Simple { errno, cookie: c } => {
                if c == cookie && errno != 0 {
                    return Err(self.command_error("request", 0, 0, errno, String::new()));
                }
                (c, None)
            }
            Reply::Chunk(h) => (h.cookie, Some(h)),
        };
        if c != cookie {
            return Err(self.protocol(format!("reply for cookie {c}, {cookie} expected")));
        }
        Ok(h)
    }

    /// Reads the next reply header, whatever request it answers.
    pub(super) fn next_reply(&mut self) -> Result<Reply, NbdError> {
        let mut m = [0u8; 4];
        self.read_exact(&mut m)?;
        match u32::from_be_bytes(m) {
            wire::SIMPLE_REPLY_MAGIC => {
                let mut b = [0u8; 12];
                self.read_exact(&mut b)?;
                let mut p = Payload::new(&b);
                let (errno, cookie) = (p.u32().unwrap_or(0), p.u64().unwrap_or(0));
                Ok(Reply::Simple { errno, cookie })
            }
            wire::STRUCTURED_REPLY_MAGIC => {
                let mut b = [0u8; 16];
                self.read_exact(&mut b)?;
                let mut p = Payload::new(&b);
                Ok(Reply::Chunk(ChunkHeader {
                    flags: p.u16().unwrap_or(0),
                    kind: p.u16().unwrap_or(0),
                    cookie: p.u64().unwrap_or(0),
                    length: p.u32().unwrap_or(0),
                }))
            }
            other => Err(self.protocol(format!("bad reply magic {other:#x}"))),
        }
    }

    /// The chunks any structured reply may carry besides its own kinds: NONE (no payload,
    /// final) and errors (the first one kept in `failure`). `Ok(false)`: another kind, which
    /// the reply's own rules judge.
    pub(super) fn none_or_error_chunk(
        &mut self,
        h: ChunkHeader,
        failure: &mut Option<(u32, String)>,
    ) -> Result<bool, NbdError> {
        match h.kind {
            wire::CHUNK_NONE => {
                if h.length != 0 || h.flags & wire::REPLY_FLAG_DONE == 0 {
                    return Err(self.protocol("NONE chunk with payload or not final".into()));
                }
            }
            k if k & 0x8000 != 0 => {
                let e = self.error_chunk(h.length)?;
                failure.get_or_insert(e);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Reads an error chunk's payload: the errno and the message.
    pub(super) fn error_chunk(&mut self, length: u32) -> Result<(u32, String), NbdError> {
        if !(6..=wire::MAX_OPTION_REPLY).contains(&length) {
            return Err(self.protocol(format!("error chunk of {length} bytes")));
        }
        let mut payload = vec![0u8; length as usize];
        self.read_exact(&mut payload)?;
        let mut p = Payload::new(&payload);
        let errno = p.u32().unwrap_or(0);
        let msg_len = p.u16().unwrap_or(0) as usize;
        let Some(msg) = p.bytes(msg_len) else {
            return Err(self.protocol("error message longer than its chunk".into()));
        };
        if errno == 0 {
            return Err(self.protocol("error chunk with errno 0".into()));
        }
        Ok((errno, String::from_utf8_lossy(msg).into_owned()))
    }

    /// Checks that `[at, at + len)` lies inside the request `[start, end)`; returns its
    /// position relative to `start`.
    pub(super) fn within(
        &self,
        at: u64,
        len: u64,
        start: u64,
        end: u64,
        what: &str,
    ) -> Result<usize, NbdError> {
        match at.checked_add(len) {
            Some(e) if at >= start && e <= end => Ok((at - start) as usize),
            _ => Err(self.protocol(format!(
                "{what} chunk {at}+{len} outside the request {start}..{end}"
            ))),
        }
    }

    pub(super) fn check_range(&self, what: &str, offset: u64, length: u64) -> Result<(), NbdError> {
        let ok = offset.checked_add(length).is_some_and(|e| e <= self.size)
            && length > 0
            && offset.is_multiple_of(u64::from(self.min_block))
            && length.is_multiple_of(u64::from(self.min_block));
        if ok {
            Ok(())
        } else {
            Err(NbdError::InvalidRequest {
                export: self.export.clone(),
                detail: format!(
                    "{what} {offset}+{length}: outside the export of {} bytes, empty, or not aligned to {}",
                    self.size, self.min_block
                ),
            })
        }
    }

    pub(super) fn cookie(&mut self) -> u64 {
        let c = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        c
    }

    pub(super) fn usable(&self) -> Result<(), NbdError> {
        if self.broken {
            Err(NbdError::Broken {
                export: self.export.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// Marks the connection broken after an error that leaves the stream position unknown.
    pub(super) fn guard<T>(&mut self, r: Result<T, NbdError>) -> Result<T, NbdError> {
        if let Err(NbdError::Io { .. } | NbdError::Protocol { .. }) = &r {
            self.broken = true;
        }
        r
    }

    pub(super) fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NbdError> {
        self.stream.read_exact(buf).map_err(|source| NbdError::Io {
            export: self.export.clone(),
            source,
        })
    }

    pub(super) fn write_all(&mut self, buf: &[u8]) -> Result<(), NbdError> {
        self.stream
            .write_all(buf)
            .and_then(|()| self.stream.flush())
            .map_err(|source| NbdError::Io {
                export: self.export.clone(),
                source,
            })
    }

    pub(super) fn protocol(&self, detail: String) -> NbdError {
        NbdError::Protocol {
            export: self.export.clone(),
            detail,
        }
    }

    pub(super) fn unsupported(&self, what: &str) -> NbdError {
        NbdError::Unsupported {
            export: self.export.clone(),
            what: what.to_string(),
        }
    }

    pub(super) fn command_error(
        &self,
        command: &'static str,
        offset: u64,
        length: u64,
        errno: u32,
        message: String,
    ) -> NbdError {
        NbdError::Command {
            export: self.export.clone(),
            command,
            offset,
            length,
            errno,
            name: wire::errno_name(errno),
            message,
        }
    }
}

/// A structured reply chunk's header (after the magic).
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkHeader {
    pub(super) flags: u16,
    pub(super) kind: u16,
    pub(super) cookie: u64,
    pub(super) length: u32,
}

/// A reply header: a simple reply (its error) or a structured reply's chunk.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reply {
    /// A simple reply: `errno` 0 is success.
    Simple { errno: u32, cookie: u64 },
    /// A chunk of a structured reply.
    Chunk(ChunkHeader),
}

/// Appends `e`, merging it into the last extent when they touch and share flags.
fn push_merged(out: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = out.last_mut() {
        if last.flags == e.flags && last.end() == e.offset {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

/// True for an IO error that a timeout caused.
pub fn is_timeout(e: &NbdError) -> bool {
    matches!(e, NbdError::Io { source, .. } if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

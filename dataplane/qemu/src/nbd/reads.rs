//! Read replies, and reads kept in flight on one connection ([`ReadQueue`]).
//!
//! The NBD protocol lets a client send requests without waiting for their replies: the
//! server answers them in any order, each structured reply's chunks naming the request's
//! cookie, chunks of different replies possibly interleaved. A fleecing view read one
//! request at a time waits qemu's whole round trip (its coroutine, its read of the image,
//! the socket both ways) per request; a cycle of 16,384 scattered 64 KiB dirty blocks paid
//! it 16,384 times. With several reads in flight the round trips overlap, and the reader
//! thread spends its time copying bytes instead of waiting (bench/results/ANALYSIS.md,
//! session 11).
//!
//! One parser serves both paths ([`NbdClient::read_chunk`]): a single read is a queue of
//! one. Its checks are those of the whole client: every chunk must lie inside its own
//! request, the chunks must tile the request exactly, and a chunk for a cookie no read in
//! flight holds is a protocol violation.
//!
//! Trims ride on the same connection ([`ReadQueue::start_trim`]): a cycle's reader gives a
//! range back to qemu as soon as its bytes are in hand, without waiting for the reply;
//! their replies are taken as they come, in between the reads'.

use std::io::{Read, Write};

use super::client::{ChunkHeader, NbdClient, Reply, MAX_READ_REQUEST};
use super::error::NbdError;
use super::trim::{trim_step, TrimReply};
use super::wire::{self, Payload};

/// What the chunks of one read's reply have delivered so far.
#[derive(Debug)]
pub(super) struct ReadReply {
    offset: u64,
    end: u64,
    /// The chunks as the server sent them, not a set of ranges: they must tile the request
    /// exactly, and two chunks claiming one byte is a protocol violation that merging into
    /// a set would hide. Sorting them once at the end finds overlaps and gaps in
    /// O(n log n) whatever order a server sends them in.
    covered: Vec<(u64, u64)>,
    /// The first error chunk's errno and message.
    failure: Option<(u32, String)>,
    chunks: u64,
    /// The final chunk arrived.
    pub(super) done: bool,
}

impl ReadReply {
    pub(super) fn new(offset: u64, len: u64) -> ReadReply {
        ReadReply {
            offset,
            end: offset + len,
            covered: Vec::new(),
            failure: None,
            chunks: 0,
            done: false,
        }
    }

    /// After the final chunk: the server's error, or a check that the chunks tiled the
    /// request.
    pub(super) fn finish<S: Read + Write>(self, c: &NbdClient<S>) -> Result<(), NbdError> {
        let len = self.end - self.offset;
        if let Some((errno, message)) = self.failure {
            return Err(c.command_error("read", self.offset, len, errno, message));
        }
        let mut covered = self.covered;
        covered.sort_unstable();
        let mut next = self.offset;
        for (s, e) in covered {
            if s != next {
                return Err(c.protocol(format!(
                    "read reply chunks overlap or leave a gap at {}",
                    s.min(next)
                )));
            }
            next = e;
        }
        if next != self.end {
            return Err(c.protocol(format!("read reply ends at {next}, not {}", self.end)));
        }
        Ok(())
    }
}

impl<S: Read + Write> NbdClient<S> {
    /// Reads chunk `h`'s payload into the reply `r` of a read into `buf` (the request's
    /// bytes, from its offset).
    pub(super) fn read_chunk(
        &mut self,
        h: ChunkHeader,
        r: &mut ReadReply,
        buf: &mut [u8],
    ) -> Result<(), NbdError> {
        // Every data or hole chunk covers at least one byte; errors and NONE are few.
        r.chunks += 1;
        if r.chunks > (r.end - r.offset).saturating_add(64) {
            return Err(self.protocol("more reply chunks than bytes requested".into()));
        }
        match h.kind {
            wire::CHUNK_OFFSET_DATA => {
                let Some(data_len) = u64::from(h.length).checked_sub(8).filter(|n| *n > 0) else {
                    return Err(self.protocol(format!("data chunk of {} bytes", h.length)));
                };
                let mut o = [0u8; 8];
                self.read_exact(&mut o)?;
                let at = u64::from_be_bytes(o);
                let rel = self.within(at, data_len, r.offset, r.end, "data")?;
                self.read_exact(&mut buf[rel..rel + data_len as usize])?;
                r.covered.push((at, at + data_len));
            }
            wire::CHUNK_OFFSET_HOLE => {
                if h.length != 12 {
                    return Err(self.protocol(format!("hole chunk of {} bytes", h.length)));
                }
                let mut b = [0u8; 12];
                self.read_exact(&mut b)?;
                let mut p = Payload::new(&b);
                let (at, hole) = (p.u64().unwrap_or(0), u64::from(p.u32().unwrap_or(0)));
                if hole == 0 {
                    return Err(self.protocol("empty hole chunk".into()));
                }
                let rel = self.within(at, hole, r.offset, r.end, "hole")?;
                buf[rel..rel + hole as usize].fill(0);
                r.covered.push((at, at + hole));
            }
            k => {
                if !self.none_or_error_chunk(h, &mut r.failure)? {
                    return Err(self.protocol(format!("chunk type {k} in a read reply")));
                }
            }
        }
        if h.flags & wire::REPLY_FLAG_DONE != 0 {
            r.done = true;
        }
        Ok(())
    }
}

/// A read in flight: its reply so far, and the buffer its bytes go to.
#[derive(Debug)]
struct InFlight<B> {
    cookie: u64,
    reply: ReadReply,
    buf: B,
}

/// Reads kept in flight on one connection, collected in any order by their ticket (the
/// request's cookie). Whoever collects a read also reads the chunks of the others that
/// arrive first, into their own buffers, so a queue needs one thread and no locks.
///
/// Bounds: at most [`ReadQueue::depth`] reads in flight, each of at most the export's
/// maximum block and [`MAX_READ_REQUEST`], into buffers the caller gives; a server's
/// bytes never grow anything else beyond what one request allows (as [`NbdClient`]).
/// Requests are 28 bytes: the socket's buffers hold a queue's requests whatever the server
/// does with its replies, so sending never waits for collecting.
///
/// Trims in flight are bounded by the same depth, apart from the reads: starting one more
/// first waits for the oldest. A trim's failure does not fail the reads; it is kept for
/// [`ReadQueue::take_trim_failures`].
#[derive(Debug)]
pub struct ReadQueue<S: Read + Write, B> {
    client: NbdClient<S>,
    reads: Vec<InFlight<B>>,
    trims: Vec<TrimReply>,
    trim_failures: Vec<NbdError>,
    depth: usize,
}

impl<S: Read + Write, B: AsMut<[u8]>> ReadQueue<S, B> {
    /// A queue of up to `depth` reads (at least one) on `client`'s connection.
    pub fn new(client: NbdClient<S>, depth: usize) -> Self {
        ReadQueue {
            client,
            reads: Vec::new(),
            trims: Vec::new(),
            trim_failures: Vec::new(),
            depth: depth.max(1),
        }
    }

    /// Most reads in flight at once.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Reads in flight (started, not collected).
    pub fn len(&self) -> usize {
        self.reads.len()
    }

    /// True when no read is in flight.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// The largest read one request may ask.
    pub fn max_read(&self) -> usize {
        MAX_READ_REQUEST.min(self.client.max_block).max(1) as usize
    }

    /// Sends a request to read `buf.len()` bytes at `offset` into `buf`; returns its ticket
    /// for [`ReadQueue::finish`]. Refused ([`NbdError::InvalidRequest`]) when the queue is
    /// full, or the read is outside the export, misaligned, empty or larger than
    /// [`ReadQueue::max_read`].
    pub fn start(&mut self, offset: u64, mut buf: B) -> Result<u64, NbdError> {
        self.client.usable()?;
        let len = buf.as_mut().len();
        if self.reads.len() >= self.depth || len > self.max_read() {
            return Err(NbdError::InvalidRequest {
                export: self.client.export.clone(),
                detail: format!(
                    "read of {len} bytes with {} in flight: the queue takes {} of at most {}",
                    self.reads.len(),
                    self.depth,
                    self.max_read()
                ),
            });
        }
        self.client.check_range("read", offset, len as u64)?;
        let cookie = self.client.cookie();
        let req = wire::request(0, wire::CMD_READ, cookie, offset, len as u32);
        let r = self.client.write_all(&req);
        self.fail_all_on_error(r)?;
        self.reads.push(InFlight {
            cookie,
            reply: ReadReply::new(offset, len as u64),
            buf,
        });
        Ok(cookie)
    }

    /// Waits for the read of `ticket` and gives its buffer back, filled. A read the server
    /// failed is [`NbdError::Command`] and the others go on; after a protocol violation or
    /// an IO error the connection is broken and every read in flight is lost.
    pub fn finish(&mut self, ticket: u64) -> Result<B, NbdError> {
        loop {
            let Some(i) = self.reads.iter().position(|r| r.cookie == ticket) else {
                self.client.usable()?;
                return Err(NbdError::InvalidRequest {
                    export: self.client.export.clone(),
                    detail: format!("no read in flight with ticket {ticket}"),
                });
            };
            if self.reads[i].reply.done {
                let r = self.reads.swap_remove(i);
                return r.reply.finish(&self.client).map(|()| r.buf);
            }
            let r = self.next_chunk();
            self.fail_all_on_error(r)?;
        }
    }

    /// True when the export takes trims ([`NbdClient::can_trim`]).
    pub fn can_trim(&self) -> bool {
        self.client.can_trim()
    }

    /// Sends a request to trim `[offset, offset + length)` (several for a range longer than
    /// [`super::MAX_TRIM_REQUEST`]) and returns without waiting for the reply. Once this
    /// returns `Ok`, or fails after a request went out, the server may have discarded the
    /// range. Refused ([`NbdError::InvalidRequest`]) when the export does not take trims or
    /// the range is outside it, misaligned or empty. With [`ReadQueue::depth`] trims in
    /// flight, first waits for the oldest.
    pub fn start_trim(&mut self, offset: u64, length: u64) -> Result<(), NbdError> {
        self.client.usable()?;
        self.client.check_trim(offset, length)?;
        let end = offset + length;
        let mut at = offset;
        while at < end {
            while self.trims.len() >= self.depth {
                let r = self.next_chunk();
                self.fail_all_on_error(r)?;
            }
            let n = trim_step(end - at, self.client.min_block);
            let cookie = self.client.cookie();
            let req = wire::request(0, wire::CMD_TRIM, cookie, at, n as u32);
            let r = self.client.write_all(&req);
            self.fail_all_on_error(r)?;
            self.trims.push(TrimReply::new(cookie, at, n));
            at += n;
        }
        Ok(())
    }

    /// Trims in flight (sent, reply not complete).
    pub fn trims_in_flight(&self) -> usize {
        self.trims.len()
    }

    /// Waits for every trim in flight (reads' replies that come first are kept for them).
    pub fn settle_trims(&mut self) -> Result<(), NbdError> {
        while !self.trims.is_empty() {
            let r = self.next_chunk();
            self.fail_all_on_error(r)?;
        }
        Ok(())
    }

    /// The trims the server failed since the last call (their ranges were not, or not
    /// all, discarded).
    pub fn take_trim_failures(&mut self) -> Vec<NbdError> {
        std::mem::take(&mut self.trim_failures)
    }

    /// Collects every read and trim in flight and gives the connection back, unless it
    /// broke.
    pub fn into_client(mut self) -> Option<NbdClient<S>> {
        while let Some(t) = self.reads.first().map(|r| r.cookie) {
            if let Err(NbdError::Io { .. } | NbdError::Protocol { .. } | NbdError::Broken { .. }) =
                self.finish(t)
            {
                return None;
            }
        }
        if self.settle_trims().is_err() {
            return None;
        }
        (!self.client.broken).then_some(self.client)
    }

    /// Reads one reply header and what follows it, for whichever read or trim it names.
    fn next_chunk(&mut self) -> Result<(), NbdError> {
        let reply = self.client.next_reply()?;
        let cookie = match reply {
            Reply::Simple { cookie, .. } => cookie,
            Reply::Chunk(h) => h.cookie,
        };
        if let Some(i) = self.trims.iter().position(|t| t.cookie == cookie) {
            let t = &mut self.trims[i];
            match reply {
                Reply::Simple { errno, .. } => self.client.trim_simple(t, errno)?,
                Reply::Chunk(h) => self.client.trim_chunk(h, t)?,
            }
            if t.done {
                let t = self.trims.swap_remove(i);
                if let Err(e) = t.finish(&self.client) {
                    self.trim_failures.push(e);
                }
            }
            return Ok(());
        }
        let Some(r) = self
            .reads
            .iter_mut()
            .find(|r| r.cookie == cookie && !r.reply.done)
        else {
            return Err(self.client.protocol(format!(
                "reply for cookie {cookie}, which no read or trim in flight has"
            )));
        };
        match reply {
            Reply::Simple { errno: 0, .. } => Err(self
                .client
                .protocol("simple reply without error to a read".into())),
            Reply::Simple { errno, .. } => {
                r.reply.failure_simple(errno);
                Ok(())
            }
            Reply::Chunk(h) => self.client.read_chunk(h, &mut r.reply, r.buf.as_mut()),
        }
    }

    /// Marks the connection broken after an IO error or a protocol violation, and drops
    /// every read in flight (their replies can no longer be found in the stream).
    fn fail_all_on_error<T>(&mut self, r: Result<T, NbdError>) -> Result<T, NbdError> {
        let r = self.client.guard(r);
        if self.client.broken {
            self.reads.clear();
            self.trims.clear();
        }
        r
    }
}

impl ReadReply {
    /// A simple error reply: the read failed, and nothing more comes for it.
    fn failure_simple(&mut self, errno: u32) {
        self.failure.get_or_insert((errno, String::new()));
        self.done = true;
    }
}

//! Reading and writing whole frames on quinn streams, with limits checked before buffering.

use bytes::Bytes;
use vdrep_proto::session::receiver::Body;
use vdrep_proto::wire::{FrameHeader, FRAME_HEADER_LEN};
use vdrep_proto::FormatError;

/// Failure to read or write a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before a frame started.
    #[error("stream ended")]
    End,
    /// The stream ended or broke inside a frame.
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Writing failed.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer sent something malformed.
    #[error("malformed frame from peer: {0}")]
    Malformed(#[from] FormatError),
    /// A frame's body did not arrive within its deadline (the receiver's slowloris bound).
    #[error("frame body of {len} bytes not received within {secs} s")]
    Slow {
        /// The body's length.
        len: u32,
        /// The deadline, in seconds.
        secs: u64,
    },
}

impl FrameError {
    /// The peer closed the connection on purpose (or the stream ended cleanly): not a fault.
    pub fn is_peer_close(&self) -> bool {
        use quinn::{ConnectionError, ReadError, ReadExactError};
        matches!(
            self,
            FrameError::End
                | FrameError::Read(ReadExactError::ReadError(ReadError::ConnectionLost(
                    ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed
                )))
        )
    }
}

impl crate::error::Classify for FrameError {
    /// Connection-level faults are worth a reconnect; malformed frames are not.
    fn recovery(&self) -> crate::error::Recovery {
        crate::error::Recovery::transient_if(!matches!(self, FrameError::Malformed(_)))
    }
}

/// Reads one frame: `(kind, body)`. A clean end of stream before the header is
/// [`FrameError::End`]. Bodies longer than `max_body` are refused before any allocation.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    max_body: u32,
) -> Result<(u8, Bytes), FrameError> {
    let (kind, len) = read_frame_header(recv, max_body).await?;
    Ok((kind, read_body(recv, len, &[]).await?))
}

/// Reads a frame's header: `(kind, body length)`, the length checked against `max_body`
/// before anything else is read, so a caller can reserve memory for the body first
/// ([`read_body`]).
pub async fn read_frame_header(
    recv: &mut quinn::RecvStream,
    max_body: u32,
) -> Result<(u8, u32), FrameError> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    // Distinguish a clean end (no byte of a new frame) from a torn frame.
    match recv.read(&mut h[..1]).await {
        Ok(Some(1)) => {}
        Ok(None) => return Err(FrameError::End),
        Ok(Some(_)) => return Err(FrameError::End),
        Err(e) => return Err(FrameError::Read(quinn::ReadExactError::ReadError(e))),
    }
    recv.read_exact(&mut h[1..]).await?;
    let hdr = FrameHeader::decode(&h);
    if hdr.len > max_body {
        return Err(FrameError::Malformed(FormatError::new(
            "frame header",
            1,
            format!(
                "frame type {} with a body of {} bytes exceeds the limit of {max_body}",
                hdr.kind, hdr.len
            ),
        )));
    }
    Ok((hdr.kind, hdr.len))
}

/// Reads the rest of a body of `len` bytes whose first bytes, `head`, were read already.
pub async fn read_body(
    recv: &mut quinn::RecvStream,
    len: u32,
    head: &[u8],
) -> Result<Bytes, FrameError> {
    // Receive side: the one copy of a payload, from QUIC's packet buffers into one
    // contiguous buffer that the decompressor and hasher read. Chunks are appended to
    // uninitialised capacity: zero-filling the buffer first (`vec![0; len]` for
    // `read_exact`) cost the receiver 5.6 % of its instructions (bench/results/ANALYSIS.md,
    // session 7).
    // A body of 1 MiB or more (a raw 1 MiB extent) reuses an earlier frame's pages
    // (`crate::memory::pool`). Each read copies every chunk QUIC holds for the stream, up
    // to the body's end, under one lock of the connection (`poll_read_buf`): `read_chunk`
    // took the lock, polled and dropped one ~1.4 KB chunk per call (session 10).
    let len = len as usize;
    let mut body = crate::memory::PooledBuf::with_capacity(len);
    body.extend_from_slice(&head[..head.len().min(len)]);
    while body.len() < len {
        let want = len - body.len();
        let n = std::future::poll_fn(|cx| {
            let mut rb = tokio::io::ReadBuf::uninit(&mut body.spare_capacity_mut()[..want]);
            recv.poll_read_buf(cx, &mut rb)
                .map_ok(|()| rb.filled().len())
        })
        .await
        .map_err(quinn::ReadExactError::ReadError)?;
        if n == 0 {
            return Err(quinn::ReadExactError::FinishedEarly(body.len()).into());
        }
        // SAFETY: poll_read_buf initialised the first `n` bytes of the spare capacity.
        let filled = body.len() + n;
        unsafe { body.set_len(filled) };
    }
    Ok(body.freeze())
}

/// Reads a body of `len` bytes as the chunks QUIC holds it in, without joining them: a raw
/// extent is then hashed and written from them (`vdrep_store::parts`). The chunks are
/// slices of the receive arenas (`vendor/quinn`'s `recv_pool`), kept until the body is
/// dropped. Each read takes every chunk QUIC holds for the stream, up to the body's end,
/// under one lock of the connection.
pub async fn read_body_parts(recv: &mut quinn::RecvStream, len: u32) -> Result<Body, FrameError> {
    let len = len as usize;
    let mut parts = Vec::new();
    let mut got = 0usize;
    while got < len {
        let n = std::future::poll_fn(|cx| recv.poll_read_chunks_upto(cx, len - got, &mut parts))
            .await
            .map_err(quinn::ReadExactError::ReadError)?;
        if n == 0 {
            return Err(quinn::ReadExactError::FinishedEarly(got).into());
        }
        got += n;
    }
    Ok(Body::from_parts(parts))
}

/// A body's bytes in one buffer: its chunk when it has one, else joined into pooled pages
/// as [`read_body`] would have read them (a compressed extent's frame, a packed write).
pub fn joined(body: &Body) -> Bytes {
    if let [one] = body.parts() {
        return one.clone();
    }
    let mut b = crate::memory::PooledBuf::with_capacity(body.len());
    for p in body.parts() {
        b.extend_from_slice(p);
    }
    b.freeze()
}

/// Writes an encoded frame.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), FrameError> {
    send.write_all(frame).await?;
    Ok(())
}
